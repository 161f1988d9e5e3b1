"""Where the local runtime keeps its state: a flag, else $MLCANARY_STATE_DIR, else ~/.mlcanary/local."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

ENV_VAR = "MLCANARY_STATE_DIR"
SOCKET_PATH_MAX = 107  # AF_UNIX sun_path is 108 bytes with its terminating NUL
SOCKET_NAME_LENGTH = len("0123456789ab.sock")


def state_dir(explicit: Path | str | None = None) -> Path:
    chosen = explicit or os.environ.get(ENV_VAR) or Path.home() / ".mlcanary" / "local"
    return Path(chosen).expanduser().resolve()


def ensure_private_dir(path: Path) -> str | None:
    """Create `path` as 0700 if it does not exist. An existing folder is never chmod-ed (it may be
    the user's own, shared on purpose); a warning is returned if others can read or enter it."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        path.chmod(0o700)
        return None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return (f"state directory {path} is readable by other users (mode {mode:o}); the runtime keeps keys and "
                "worker sockets in private files and folders inside it, but consider `chmod 700` on it")
    return None


def state_file(root: Path) -> Path:
    return root / "state.json"


def runtime_file(root: Path) -> Path:
    """pid and control port of the running runtime."""
    return root / "runtime.json"


def workers_file(root: Path) -> Path:
    """Process groups of the workers the runtime started (to clean up after a crash)."""
    return root / "workers.json"


def metrics_file(root: Path) -> Path:
    """The request counts a stopped runtime kept (written when it stops)."""
    return root / "metrics.json"


def runtime_log(root: Path) -> Path:
    return root / "runtime.log"


def runtime_stderr(root: Path) -> Path:
    """What the runtime process printed itself (why it refused to start, a crash)."""
    return root / "runtime.stderr"


def lock_file(root: Path) -> Path:
    return root / "runtime.lock"


def stage_lock_file(root: Path) -> Path:
    """Held by `mlcanary local up` for a whole stage: one stage change at a time."""
    return root / "stage.lock"


def deployment_log_dir(root: Path, endpoint: str, deployment: str) -> Path:
    return root / "logs" / endpoint / deployment


def socket_dir(root: Path) -> Path:
    """The private folder of the workers' Unix sockets: inside the state directory, or, when that
    path is too long for a socket, a per-state-directory folder in the temp dir (created 0700 and
    checked to be ours: not a symlink, owned by us, private)."""
    inside = root / "sock"
    if len(str(inside).encode()) + 1 + SOCKET_NAME_LENGTH <= SOCKET_PATH_MAX:
        private_subdir(inside)
        return inside
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    # $TMPDIR first; /tmp when $TMPDIR is itself too deep (a test's or a sandbox's temp dir).
    candidates = [Path(tempfile.gettempdir()) / f"mlcanary-{os.getuid()}-{digest}",
                  Path("/tmp") / f"mlcanary-{os.getuid()}-{digest}"]
    for outside in candidates:
        if len(str(outside).encode()) + 1 + SOCKET_NAME_LENGTH <= SOCKET_PATH_MAX and outside.parent.is_dir():
            private_subdir(outside)
            return outside
    raise OSError(f"no usable folder for worker sockets: {inside} and {candidates[0]} exceed {SOCKET_PATH_MAX} bytes; "
                  "use a shorter --state-dir")


def private_subdir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{path} exists and is not a folder of this user; remove it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours, made by the runtime: keep it private
