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

FOLLOW_POLL_S = 0.25
LOG_TAIL_LINES = 30
NEWER_CHECK_S = 1.0


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log, with the first traceback of the latest start kept in view.

    The inference server prints the model folder's listing after a failed init(), which can push
    the error itself out of a plain tail.
    """
    if not path.exists():
        return ""
    all_lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    tail = all_lines[-lines:]
    starts = [i for i, line in enumerate(all_lines) if line.startswith("--- ") and " starting" in line]
    latest = all_lines[starts[-1]:] if starts else all_lines
    error = _first_traceback(latest)
    if not error or all(line in tail for line in error):
        return "\n".join(tail)
    keep = max(0, lines - len(error) - 1)
    return "\n".join([*error, "...", *(all_lines[-keep:] if keep else [])])


def _first_traceback(lines: list[str], most: int = 40) -> list[str]:
    """The first traceback in `lines` with its chained causes, up to the last exception line."""
    start = next((i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line), None)
    if start is None:
        return []
    end, i = start, start + 1
    while i < len(lines):
        if not lines[i].strip() or lines[i].startswith((" ", "\t", "Traceback (most recent call last)")):
            i += 1
            continue
        end = i  # the exception line
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j < len(lines) and lines[j].startswith(("The above exception", "During handling")):
            i = j + 1
            continue
        break
    error = lines[start:end + 1]
    return error if len(error) <= most else [*error[:most // 2], "...", *error[-most // 2:]]


class NoLogs(LookupError):
    pass


def generations(root: Path, endpoint: str, deployment: str) -> list[Path]:
    """The deployment's generation folders, oldest first (their names start with the start time, to the
    millisecond; a folder's mtime is no guide: an old generation still writes logs while it drains)."""
    folder = paths.deployment_log_dir(root, endpoint, deployment)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)


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
