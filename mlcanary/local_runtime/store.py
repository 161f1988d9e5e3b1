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


# Tests only: while the file this names exists, state writes fail as on a full disk (where a test
# cannot mount a small tmpfs to fill for real).
FAULT_DISK_FULL_ENV = "MLCANARY_FAULT_DISK_FULL_WHILE"


class StateWriteFailed(RuntimeError):
    """The state could not be written; the message is the cause, e.g. 'no space left on device: <path>'."""


class StateCorrupt(ValueError):
    """The state file exists but cannot be used; the message names the file and the problem."""


def load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"endpoints": {}}
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise StateCorrupt(f"state file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise StateCorrupt(f"state file {path} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except OSError as err:
        raise StateCorrupt(f"state file {path} cannot be read: {err.strerror}") from None
    problem = _shape_problem(state)
    if problem:
        raise StateCorrupt(f"state file {path} is not a runtime state: {problem}")
    return state


def _shape_problem(state: Any) -> str | None:
    if not isinstance(state, dict) or not isinstance(state.get("endpoints"), dict):
        return "expected an object with an `endpoints` object"
    for name, record in state["endpoints"].items():
        if not isinstance(record, dict):
            return f"endpoints.{name} is not an object"
        for key, kind in (("authMode", str), ("keys", dict), ("port", int), ("deployments", dict),
                          ("traffic", dict), ("mirrorTraffic", dict)):
            if not isinstance(record.get(key), kind):
                return f"endpoints.{name}.{key} is missing or not a{'n' if kind is int else ''} {kind.__name__}"
        if not {"primary", "secondary"} <= set(record["keys"]):
            return f"endpoints.{name}.keys needs `primary` and `secondary`"
        for dep, spec in record["deployments"].items():
            if not isinstance(spec, dict) or not {"code", "scoringScript", "instanceCount"} <= set(spec):
                return f"endpoints.{name}.deployments.{dep} needs code, scoringScript and instanceCount"
    return None


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fault = os.environ.get(FAULT_DISK_FULL_ENV)
    if fault and os.path.exists(fault):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
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
