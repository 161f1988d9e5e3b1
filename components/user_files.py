"""Reading a file a user points at (a stage file, a deployment YAML, a policy config, a request body).

Only a regular file of bounded size is read, and never past its limit: a directory, a FIFO (which
would block), a device (`file: /dev/zero` would fill memory), anything under /dev and a symlink loop
are refused before a byte is read, each with one message that names the file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mlcanary.components.rules import shown_text

KIB = 1024
MIB = 1024 * KIB
CONFIG_FILE_LIMIT = 1 * MIB  # stage files, deployment YAMLs and policy configs are a few KB


PATH_SHOWN_CHARACTERS = 256  # real paths fit; a 100 KB "path" from a config is cut


class UnusableFile(ValueError):
    """The file cannot be used; the message starts with its path and says why."""


def shown_path(path: Path | str) -> str:
    """A path as messages show it: in full, unless it is far longer than any real path."""
    return shown_text(str(path), str, PATH_SHOWN_CHARACTERS)


def _refused(path: Path, reason: str) -> UnusableFile:
    return UnusableFile(f"{shown_path(path)}: {reason}")


def read_text(path: Path, what: str, limit: int = CONFIG_FILE_LIMIT, typical: str = "") -> str:
    """The UTF-8 text of `path`, a `what` ("stage file") of at most `limit` bytes.

    `typical` says what size to expect ("a stage file is a few KB") in the too-large message.
    """
    data = read_bytes(path, what, limit, typical)
    if b"\0" in data:
        raise _refused(path, f"is binary data, not a text {what} (a NUL byte at offset {data.index(0)})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _refused(
            path, f"is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); save the {what} as UTF-8"
        ) from None


def read_conda_file(path: Path) -> str:
    """An inline environment's conda file (its text goes to Azure as is)."""
    return read_text(path, "conda file", CONFIG_FILE_LIMIT, "a conda file is a few KB")


def read_request_body(path: Path) -> bytes:
    """A request file (`invoke`, `rehearse`, `rollout --load`): what the data plane accepts, at most 100 MiB."""
    return read_bytes(path, "request file", 100 * MIB, "a request body is at most 100 MiB")


def read_bytes(path: Path, what: str, limit: int, typical: str = "") -> bytes:
    """The bytes of the regular file `path`, refused when it is anything else or over `limit` bytes."""
    if "\0" in str(path):
        raise _refused(path, "is not a path: it holds a NUL character")
    _refuse_unless_regular(os.stat, path, what)  # before opening: opening a device can have effects
    if Path(os.path.realpath(path)).is_relative_to("/dev"):
        raise _refused(path, f"is under /dev; a {what} is a regular file")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise _unusable(path, what, err) from None
    try:
        # The path may have been swapped since the check above: judge what was actually opened.
        size = _refuse_unless_regular(os.fstat, descriptor, what, path)
        if size > limit:
            raise _too_large(path, size, limit, typical)
        chunks, total = [], 0
        while chunk := os.read(descriptor, min(64 * KIB, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _too_large(path, None, limit, typical)
        return b"".join(chunks)
    except OSError as err:
        raise _unusable(path, what, err) from None
    finally:
        os.close(descriptor)


def _refuse_unless_regular(stat_of, target, what: str, path: Path | None = None) -> int:
    """The size of the regular file `target`; anything else is refused."""
    path = target if path is None else path
    try:
        mode_and_size = stat_of(target)
    except OSError as err:
        raise _unusable(path, what, err) from None
    mode = mode_and_size.st_mode
    if stat.S_ISREG(mode):
        return mode_and_size.st_size
    if stat.S_ISDIR(mode):
        raise _refused(path, f"is a directory, not a {what}")
    if stat.S_ISFIFO(mode):
        raise _refused(path, f"is a named pipe (FIFO), not a regular file; a {what} is a regular file")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise _refused(path, f"is a device, not a regular file; a {what} is a regular file")
    raise _refused(path, f"is not a regular file; a {what} is a regular file")


def _unusable(path: Path, what: str, err: OSError) -> UnusableFile:
    if err.errno == errno.ENOENT:
        return _refused(path, f"{what} not found")
    if err.errno == errno.ELOOP:
        return _refused(path, "is a symlink loop (too many levels of symbolic links)")
    return _refused(path, f"cannot read the {what}: {err.strerror}")


def _too_large(path: Path, size: int | None, limit: int, typical: str) -> UnusableFile:
    """`size` None: a file whose size only shows by reading it (it went on past the limit)."""
    why = f": {typical}" if typical else ""
    size_text = f"more than {_size_text(limit)}" if size is None else _size_text(size)
    return _refused(path, f"{size_text} is too large{why} (the limit is {_size_text(limit)})")


def _size_text(size: int) -> str:
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if size >= unit:
            return f"{size // unit} {name}" if size % unit == 0 else f"{size / unit:.1f} {name}"
    return f"{size} bytes"
