"""A rehearsal touches only what it creates: a private runtime by default, cleaned up however it ends.

`private_runtime()` gives a runtime in a temporary state directory of its own and, when the block
ends (success, failure, Ctrl-C or SIGTERM), stops that runtime and removes the directory.
Whatever still holds a file in that directory afterwards (a worker whose start was
interrupted) is killed too. `interrupts.sigterm_interrupts()` turns SIGTERM into KeyboardInterrupt for the block, so both signals unwind through
the same `finally`. Pointed at a runtime of the user's, a rehearsal first checks that none of its
endpoints already exists there (`existing_endpoints`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mlcanary.local_runtime import paths
from mlcanary.local_runtime.client import RuntimeClient
from mlcanary.local_runtime.interrupts import interrupts_ignored
from mlcanary.local_runtime.running import current_endpoints

STOP_TIMEOUT_S = 60.0


@contextlib.contextmanager
def private_runtime() -> Iterator[RuntimeClient]:
    """A runtime in a fresh temporary state directory; stopped and removed when the block ends."""
    root = Path(tempfile.mkdtemp(prefix="mlcanary-rehearse-"))
    client = RuntimeClient(root, metrics_address="off")  # never the user's scrape address (a fixed port)
    try:
        yield client
    finally:
        with interrupts_ignored():
            stop(client)
            stop_holders(root)
            shutil.rmtree(root, ignore_errors=True)


def stop(client: RuntimeClient) -> None:
    """Stop the runtime of `client` and the workers it recorded, whatever state it is in."""
    pid = _recorded_pid(client.root)
    try:
        client.shutdown(timeout_s=STOP_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - not answering or not stopping: fall back to its PID
        if pid is not None:
            _kill(pid)
    from mlcanary.local_runtime.server import kill_orphans

    kill_orphans(client.root)  # workers of a runtime that had to be killed


def stop_holders(root: Path) -> list[int]:
    """Kill every process that holds a file open under `root`, a private directory: only what the
    rehearsal's runtime started can (workers log there). This catches a worker whose start was
    interrupted before the runtime recorded it. Linux (/proc); elsewhere nothing is found."""
    holders = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid():
            continue
        try:
            if any(os.readlink(fd).startswith(f"{root}/") for fd in (proc / "fd").iterdir()):
                holders.append(pid)
        except OSError:
            continue  # gone meanwhile, or not ours to read
    for pid in holders:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return holders


def existing_endpoints(client: RuntimeClient) -> set[str]:
    """Endpoints the runtime of this state directory has, running or restored on its next start."""
    return set(current_endpoints(client))


def _recorded_pid(root: Path) -> int | None:
    try:
        return int(json.loads(paths.runtime_file(root).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _kill(pid: int) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
