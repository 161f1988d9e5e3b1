"""Worker logs as files: logs/<endpoint>/<deployment>/<generation>/instance-<n>.log in the state directory.

Each set of instances a deployment starts (a generation: the first start, a replacement after a change)
writes its own folder, kept after the runtime stops, so `mlcanary logs` reads them with or without a
running runtime and can follow them as they grow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mlcanary.local_runtime import paths
from mlcanary.local_runtime.workers import log_tail

FOLLOW_POLL_S = 0.25
NEWER_CHECK_S = 1.0


class NoLogs(LookupError):
    pass


def generations(root: Path, endpoint: str, deployment: str) -> list[Path]:
    """The deployment's generation folders, oldest first (their names start with the start time)."""
    folder = paths.deployment_log_dir(root, endpoint, deployment)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: (p.name[:15], p.stat().st_mtime))


def choose(root: Path, endpoint: str, deployment: str, generation: str | None, running: Path | None) -> Path:
    """The generation asked for, else the one the runtime serves, else the newest; NoLogs says what exists."""
    known = generations(root, endpoint, deployment)
    if not known:
        logged = sorted(p.name for p in (root / "logs" / endpoint).iterdir() if p.is_dir()) if (
            root / "logs" / endpoint).is_dir() else []
        raise NoLogs(f"no worker logs of {endpoint}/{deployment} in {root / 'logs'}; deployments with logs on "
                     f"{endpoint}: {', '.join(logged) or 'none'}")
    if generation:
        for folder in known:
            if folder.name == generation:
                return folder
        raise NoLogs(f"no generation {generation!r} of {endpoint}/{deployment}; generations, oldest first: "
                     + ", ".join(p.name for p in known))
    if running is not None and running in known:
        return running
    return known[-1]


def instance_logs(folder: Path) -> list[Path]:
    def index(path: Path) -> tuple[int, str]:
        number = path.stem.rpartition("-")[2]
        return (int(number) if number.isdigit() else 1 << 30, path.name)

    return sorted(folder.glob("instance-*.log"), key=index)


def tail(folder: Path, lines: int) -> str:
    parts = [f"==> {path.name} <==\n{log_tail(path, lines)}" for path in instance_logs(folder)]
    return "\n".join(parts) + "\n" if parts else ""


def follow(folder: Path, emit: Callable[[str], None], start_at_end: bool = True,
           keep_going: Callable[[], bool] = lambda: True, newer: Callable[[], Path | None] = lambda: None) -> None:
    """Emit each new line of every instance log in `folder` (instances that appear later too), prefixed
    with the instance, until `keep_going` says stop (or the user interrupts). When `newer` names another
    folder (the deployment was replaced), follow that one from its start."""
    offsets: dict[Path, int] = {}
    pending: dict[Path, bytes] = {}
    first = True
    checked = time.monotonic()
    while keep_going():
        for path in instance_logs(folder):
            if path not in offsets:
                offsets[path] = path.stat().st_size if (first and start_at_end) else 0
                pending[path] = b""
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < offsets[path]:  # truncated or replaced: read it again from the start
                offsets[path] = 0
            if size == offsets[path]:
                continue
            with open(path, "rb") as file:
                file.seek(offsets[path])
                chunk = file.read(size - offsets[path])
            offsets[path] += len(chunk)
            *complete, pending[path] = (pending[path] + chunk).split(b"\n")
            for line in complete:
                emit(f"[{path.stem}] {line.decode('utf-8', errors='replace')}")
        first = False
        if time.monotonic() - checked >= NEWER_CHECK_S:
            checked = time.monotonic()
            replacement = newer()
            if replacement is not None and replacement != folder:
                folder = replacement
                emit(f"(the deployment was replaced: now generation {folder.name})")
        time.sleep(FOLLOW_POLL_S)
