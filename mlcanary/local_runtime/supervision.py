"""Worker supervision: which processes exist, which instances are in rotation, restarts.

- Every worker process is recorded in workers.json the moment it is spawned (before its init()
  runs), so a runtime killed at any point leaves nothing a restart cannot find and stop.
- Instances in rotation are probed on their health route every `period` seconds and leave the
  rotation after `failureThreshold` failed probes in a row (the deployment's readiness probe).
- Instances out of rotation (a request found them broken, or probes failed) are probed every
  OUT_OF_ROTATION_PROBE_S and return at the first answer: a worker child that gunicorn restarted
  is back within seconds.
- A worker whose gunicorn master died is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError

from mlcanary.local_runtime import paths, records
from mlcanary.local_runtime.workers import WSGI_APP, Deployment, Worker

log = logging.getLogger("mlcanary.local")

TICK_S = 0.25
OUT_OF_ROTATION_PROBE_S = 0.5
MAX_RESTART_BACKOFF_S = 30.0


class WorkerRegistry:
    """Every worker alive or starting, written to workers.json on each change: its pid (= its process
    group), its process start time and its socket, so a later start can tell it from a process that
    reused the pid; and the socket folder (a fallback one in the temp dir has a random name)."""

    def __init__(self, root: Path, workers: Callable[[], Iterable[Worker]], socket_dir: Path | None = None):
        self.root = root
        self.workers = workers
        self.socket_dir = socket_dir if socket_dir is not None else root / "sock"
        self.extra: set[Worker] = set()  # spawned but not (yet, or no longer) in a deployment's list

    def spawned(self, worker: Worker) -> None:
        self.extra.add(worker)
        self.write()

    def write(self) -> None:
        self.extra = {w for w in self.extra if w.alive()}
        entries = {}
        for worker in [*self.workers(), *self.extra]:
            started = worker.alive() and worker.pid and process_start_time(worker.pid)
            if started:
                entries[worker.pid] = {"pid": worker.pid, "started": started, "socket": str(worker.socket_path)}
        record = {"socketDir": str(self.socket_dir), "workers": [entries[pid] for pid in sorted(entries)]}
        descriptor = paths.open_private(paths.workers_file(self.root), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(descriptor, "w") as file:
            json.dump(record, file)


def process_start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks after boot (/proc/<pid>/stat field 22): with the pid, it names
    one process, even after the pid is reused."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat_line.rsplit(")", 1)[1].split()[19])


def recorded_workers(root: Path) -> records.WorkersRecord | None:
    """workers.json, checked (records.py); None when there is none. UnusableRecord names what is wrong."""
    path = paths.workers_file(root)
    try:
        document = records.read_json_record(path, "workers file", records.WORKERS_FILE_LIMIT)
    except FileNotFoundError:
        return None
    try:
        record = records.WorkersRecord.model_validate(document)
    except ValidationError as err:
        raise records.UnusableRecord(records.refusal("workers file", path, records._pydantic_problems(err))) from None
    socket_dir = Path(record.socketDir)
    if socket_dir != root / "sock" and not paths.is_fallback_socket_dir(socket_dir) and socket_dir.exists():
        raise records.UnusableRecord(f"workers file {path} is not a runtime state: socketDir: {record.socketDir!r} is "
                                     "neither the state directory's sock folder nor a private folder of yours in the temp dir")
    for i, entry in enumerate(record.workers):
        if Path(entry.socket).parent != socket_dir:
            raise records.UnusableRecord(f"workers file {path} is not a runtime state: workers.{i}.socket: not in "
                                         f"socketDir {record.socketDir!r}")
    return record


def is_our_worker(pid: int, started: int, socket: str) -> bool:
    """The process `pid` is the worker this runtime recorded: same start time, this user's, and its
    command line serves the inference server on the recorded socket."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid() or os.getpgid(pid) != pid:
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (process_start_time(pid) == started and WSGI_APP.encode() in cmdline
            and f"unix:{socket}".encode() in cmdline)


def kill_orphans(root: Path, socket_dir: Path | None = None) -> None:
    """Workers left by a runtime that crashed: stop them, and only them.

    Found through workers.json (each checked to be the very process recorded: start time, command
    line, socket) and, in case the runtime died between spawning a worker and recording it, by a
    socket path in the runtime's private socket folder in their command line. A workers.json that is
    not one is left alone here: the runtime checks it at start (recorded_workers) and refuses it.
    """
    try:
        record = recorded_workers(root)
    except records.UnusableRecord:  # checked at start (the runtime refuses it); here: the folder sweep only
        record = None
    folders = {socket_dir} if socket_dir is not None else set()
    if record is not None:
        folders.add(Path(record.socketDir))
        for entry in record.workers:
            if is_our_worker(entry.pid, entry.started, entry.socket):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(entry.pid, signal.SIGKILL)
    for folder in folders:
        _kill_serving_in(folder)
    if record is not None and Path(record.socketDir) != socket_dir and paths.is_fallback_socket_dir(Path(record.socketDir)):
        shutil.rmtree(record.socketDir, ignore_errors=True)  # an earlier run's folder in the temp dir


def _kill_serving_in(folder: Path) -> None:
    marker = f"unix:{folder}/".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if WSGI_APP.encode() in cmdline and marker in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)


class Supervisor:
    def __init__(self, deployments: Callable[[], Iterable[Deployment]], registry: WorkerRegistry):
        self.deployments = deployments
        self.registry = registry
        self._restarting: set[Worker] = set()
        self._tasks: set[asyncio.Task] = set()
        self._retry_after: dict[Worker, tuple[float, float]] = {}  # worker -> (when, backoff s)

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - supervision must go on whatever one round hit
                log.exception("supervision round failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), TICK_S)
        for task in list(self._tasks):
            task.cancel()

    async def tick(self) -> None:
        now = time.monotonic()
        probes = []
        for deployment in list(self.deployments()):
            if deployment.state != "ready":
                continue
            for worker in list(deployment.workers):
                worker.upstream.drop_stale()
                if worker in self._restarting:
                    continue
                if not worker.alive():
                    if now >= self._retry_after.get(worker, (0.0, 0.0))[0]:
                        self._restart(deployment, worker)
                elif now >= worker.next_probe:
                    probes.append(self._probe(deployment, worker, now))
        if probes:
            await asyncio.gather(*probes)

    async def _probe(self, deployment: Deployment, worker: Worker, now: float) -> None:
        settings = deployment.probes
        answered = await worker.probe(settings.timeout_s)
        if answered:
            if not worker.healthy:
                log.info("%s/%s: %s answers its health route again", deployment.endpoint, deployment.name,
                         worker.log_path.name)
            worker.healthy, worker.failed_probes = True, 0
        else:
            worker.failed_probes += 1
            if worker.healthy and worker.failed_probes >= settings.failure_threshold:
                worker.healthy = False
                log.warning("%s/%s: %s out of rotation after %d failed health probes", deployment.endpoint,
                            deployment.name, worker.log_path.name, worker.failed_probes)
        worker.next_probe = time.monotonic() + (settings.period_s if worker.healthy else OUT_OF_ROTATION_PROBE_S)

    def _restart(self, deployment: Deployment, worker: Worker) -> None:
        self._restarting.add(worker)

        async def restart() -> None:
            try:
                worker.healthy = False
                deployment.restarts += 1
                with os.fdopen(paths.open_private(worker.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as log_file:
                    log_file.write(f"--- worker exited ({worker.process.returncode}); restarting\n".encode())
                await worker.start()
                if deployment.state != "ready":  # drained or deleted meanwhile
                    await worker.stop()
                elif await worker.wait_healthy():
                    worker.next_probe = time.monotonic() + deployment.probes.period_s
                    self._retry_after.pop(worker, None)
            except Exception as err:  # noqa: BLE001 - retried later, less often each time
                _, backoff = self._retry_after.get(worker, (0.0, 0.5))
                backoff = min(MAX_RESTART_BACKOFF_S, backoff * 2)
                self._retry_after[worker] = (time.monotonic() + backoff, backoff)
                log.error("restarting a worker of %s/%s failed (next try in %.0f s): %s", deployment.endpoint,
                          deployment.name, backoff, err)
            finally:
                self._restarting.discard(worker)
                self.registry.write()

        task = asyncio.create_task(restart())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
