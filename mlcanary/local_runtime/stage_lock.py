"""One stage change at a time per state directory.

`mlcanary local up` (and rehearse) hold an exclusive flock on stage.lock for a whole stage, not
per call, so two concurrent applies cannot interleave: the final state is the stage that last
reported success. The holder writes who it is into the file, so a waiting apply can say what it
waits for. The lock is released by the OS if the holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mlcanary.local_runtime import paths, store


class StageLocked(RuntimeError):
    """Another apply holds the lock and the caller chose not to wait."""


class StageLockUnusable(StageLocked):
    """The lock file cannot be made or written (a full disk): the message says why and where."""


_held: dict[Path, int] = {}  # state dirs this process holds the lock of, and how deeply


def _reason(err: OSError) -> str:
    return (err.strerror or str(err)).lower()


def _holder(handle) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
        return f"pid {info['pid']} applying {info['stage']} since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "another apply"


@contextlib.contextmanager
def stage_lock(root: Path, stage: str, wait: bool = True,
               progress: Callable[[str], None] = lambda _: None) -> Iterator[None]:
    """Re-entrant within a process: `local up` holds it from the gate's judgement to the end of the
    apply, and apply_stage, which takes it too, then runs inside that hold."""
    if _held.get(root):
        _held[root] += 1
        try:
            yield
        finally:
            _held[root] -= 1
        return
    paths.ensure_private_dir(root)
    lock_path = paths.stage_lock_file(root)
    try:
        descriptor = paths.open_private(lock_path, os.O_RDWR | os.O_CREAT)
    except OSError as err:
        raise StageLockUnusable(f"cannot take the stage lock {lock_path}: {_reason(err)}") from None
    with os.fdopen(descriptor, "r+b", buffering=0) as handle:  # unbuffered: a failed write is not retried at close
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            if not wait:
                raise StageLocked(f"another `mlcanary local up` is changing {root} ({holder}); "
                                  "not waiting (--no-wait)") from None
            progress(f"waiting for the other stage change to finish ({holder})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            store.raise_if_disk_full_fault(lock_path)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "stage": stage, "since": time.strftime("%H:%M:%S")}).encode())
        except OSError as err:  # refused before anything changed: no change could be recorded on this disk either
            fcntl.flock(handle, fcntl.LOCK_UN)
            raise StageLockUnusable(f"cannot write the stage lock {lock_path}: {_reason(err)}; nothing was "
                                    "changed: free some space and apply the stage again") from None
        _held[root] = 1
        try:
            yield
        finally:
            _held.pop(root, None)
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
