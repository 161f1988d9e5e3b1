"""A runtime that lives only as long as another process: $MLCANARY_RUNTIME_OWNER_PID.

For a test suite or a CI job whose runtimes must not outlive it, even when it is killed with
SIGKILL and has no chance to stop them: the runtime watches that process and, once it is gone,
stops as `mlcanary local stop` does (workers stopped, state kept). Unset: the runtime runs until
it is stopped, as a user's runtime should.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

ENV_VAR = "MLCANARY_RUNTIME_OWNER_PID"
POLL_S = 1.0  # where pidfd_open is missing (not Linux)


class BadOwner(ValueError):
    pass


def configured(environ: dict[str, str] | None = None) -> int | None:
    """The owner's PID from the environment, or None; BadOwner names what is wrong."""
    text = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise BadOwner(f"{ENV_VAR}: {text[:40]!r} is not a process id (a whole number of at least 1)")
    return int(text)


def watch(loop: asyncio.AbstractEventLoop, pid: int | None, gone: Callable[[], None]) -> None:
    """Call `gone` (once) when process `pid` has exited; at once if it is not there."""
    if pid is None:
        return
    try:
        fd = os.pidfd_open(pid)  # readable once the process exits, whoever its parent is
    except ProcessLookupError:
        loop.call_soon(gone)
        return
    except (AttributeError, OSError):
        loop.create_task(_poll(pid, gone))
        return

    def exited() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        gone()

    loop.add_reader(fd, exited)


async def _poll(pid: int, gone: Callable[[], None]) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            gone()
            return
        except PermissionError:
            pass  # there, and not ours
        await asyncio.sleep(POLL_S)
