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
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from mlcanary.local_runtime import paths
from mlcanary.local_runtime.workers import WSGI_APP, Deployment, Worker

log = logging.getLogger("mlcanary.local")

TICK_S = 0.25
OUT_OF_ROTATION_PROBE_S = 0.5
MAX_RESTART_BACKOFF_S = 30.0


class WorkerRegistry:
    """The process groups of every worker alive or starting, written to workers.json on each change."""

    def __init__(self, root: Path, workers: Callable[[], Iterable[Worker]]):
        self.root = root
        self.workers = workers
        self.extra: set[Worker] = set()  # spawned but not (yet, or no longer) in a deployment's list

    def spawned(self, worker: Worker) -> None:
        self.extra.add(worker)
        self.write()

    def write(self) -> None:
        self.extra = {w for w in self.extra if w.alive()}
        pgids = sorted({w.pid for w in [*self.workers(), *self.extra] if w.pid and w.alive()})
        descriptor = os.open(paths.workers_file(self.root), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump({"pgids": pgids}, file)


def kill_orphans(root: Path, socket_dir: Path | None = None) -> None:
    """Workers left by a runtime that crashed: stop them (only our own worker processes).

    Found through workers.json and, in case the runtime died between spawning a worker and
    recording it, by the socket path in their command line.
    """
    try:
        pgids = set(json.loads(paths.workers_file(root).read_text())["pgids"])
    except (OSError, ValueError, KeyError, TypeError):
        pgids = set()
    for pgid in pgids:
        try:
            cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if WSGI_APP.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    if socket_dir is None:
        return
    marker = f"unix:{socket_dir}/".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
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
                with open(worker.log_path, "ab") as log_file:
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
