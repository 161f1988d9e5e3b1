"""Where the local runtime keeps its state: a flag, else $MLCANARY_STATE_DIR, else ~/.mlcanary/local."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MLCANARY_STATE_DIR"


def state_dir(explicit: Path | str | None = None) -> Path:
    chosen = explicit or os.environ.get(ENV_VAR) or Path.home() / ".mlcanary" / "local"
    return Path(chosen).expanduser().resolve()


def state_file(root: Path) -> Path:
    return root / "state.json"


def runtime_file(root: Path) -> Path:
    """pid and control port of the running runtime."""
    return root / "runtime.json"


def workers_file(root: Path) -> Path:
    """Process groups of the workers the runtime started (to clean up after a crash)."""
    return root / "workers.json"


def runtime_log(root: Path) -> Path:
    return root / "runtime.log"


def lock_file(root: Path) -> Path:
    return root / "runtime.lock"


def deployment_log_dir(root: Path, endpoint: str, deployment: str) -> Path:
    return root / "logs" / endpoint / deployment
