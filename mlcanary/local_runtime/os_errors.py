"""An OS error in a user's words, shared by the modules that copy, write and start things."""

from __future__ import annotations

from pathlib import Path


def describe_os_error(err: OSError, path: Path | str | None = None) -> str:
    """'no space left on device: /path' - the cause in the words of the OS, and where."""
    reason = (err.strerror or str(err)).lower()
    where = err.filename or path
    return f"{reason}: {where}" if where else reason
