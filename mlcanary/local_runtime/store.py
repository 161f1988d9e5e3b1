"""Desired state, persisted atomically: a crash mid-write leaves the previous file intact.

The file holds endpoint keys, so it is private to the user (mode 0600). A change counts only once
`save` returned: the file and its folder are flushed to disk.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mlcanary.local_runtime import records


# Tests only: while the file this names exists, state writes fail as on a full disk (where a test
# cannot mount a small tmpfs to fill for real).
FAULT_DISK_FULL_ENV = "MLCANARY_FAULT_DISK_FULL_WHILE"


def raise_if_disk_full_fault(path: Path) -> None:
    """Tests only: ENOSPC for a write of `path` while the FAULT_DISK_FULL_ENV file exists."""
    fault = os.environ.get(FAULT_DISK_FULL_ENV)
    if fault and os.path.exists(fault):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class StateWriteFailed(RuntimeError):
    """The state could not be written; the message is the cause, e.g. 'no space left on device: <path>'."""


class StateCorrupt(ValueError):
    """The state file exists but cannot be used; the message names the file and the problem."""


def load(path: Path) -> dict[str, Any]:
    """The state in `path` (none: no endpoints), checked by the rules a stage file keeps (records.py);
    StateCorrupt names the file and the fields that are wrong."""
    try:
        state = records.read_json_record(path, "state file", records.STATE_FILE_LIMIT)
    except FileNotFoundError:
        return {"endpoints": {}}
    except records.UnusableRecord as err:
        raise StateCorrupt(str(err)) from None
    problems = records.state_problems(state)
    if problems:
        raise StateCorrupt(records.refusal("state file", path, problems))
    return state


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raise_if_disk_full_fault(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(state, file, indent=2, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself is durable too
        finally:
            os.close(directory)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
