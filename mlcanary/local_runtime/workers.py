"""Deployments and their worker processes.

Each instance is one `azureml-inference-server-http` worker under gunicorn, bound to a Unix socket
in the runtime's private state directory (no TCP port: only the router, which checks the endpoint
key, can reach a worker), with the Azure ML scoring contract: AML_APP_ROOT is the code folder,
AZUREML_ENTRY_SCRIPT the scoring script, AZUREML_MODEL_DIR the folder the model sits in (Azure
mounts a model at $AZUREML_MODEL_DIR/<model folder or file name>). A deployment is ready only when
every instance answers its health route. Health afterwards is supervision's job (supervision.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcanary.local_runtime import paths
from mlcanary.local_runtime.os_errors import describe_os_error
from mlcanary.local_runtime.snapshots import served_path
from mlcanary.local_runtime.worker_logs import log_tail

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that makes the kernel send SIGTERM to a worker when the runtime that started it
    dies, even by SIGKILL: gunicorn then stops its own child, and a crashed runtime leaves no worker
    behind serving nobody (Linux; elsewhere the next start's orphan sweep is the only cleanup)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    runtime_pid = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != runtime_pid:  # it died between fork and prctl
            os._exit(1)

    return hook
from mlcanary.local_runtime.upstream import Upstream

WSGI_APP = "azureml_inference_server_http.server.entry:app"
# `python -m gunicorn`, without process titles: where setproctitle is installed (mutmut brings it, so
# can any other package), gunicorn rewrites its command line to "gunicorn: master [...]", and the
# runtime could no longer tell its own workers (app and socket in the command line) from others'.
GUNICORN_KEEPING_ITS_COMMAND_LINE = ("import sys; sys.modules['setproctitle'] = None; "
                                     "from gunicorn.app.wsgiapp import run; run(prog='gunicorn')")
DEFAULT_REQUEST_TIMEOUT_MS = 5000  # Azure's default request_timeout_ms
DEFAULT_MAX_CONCURRENT_REQUESTS = 1  # Azure's default max_concurrent_requests_per_instance
SLOT_RECHECK_S = 0.1  # a request waiting for a slot looks again at least this often
KEEPALIVE_ENV = "MLCANARY_WORKER_KEEPALIVE_S"  # gunicorn's keep-alive; tests make it short


def worker_keepalive_s() -> float:
    return float(os.environ.get(KEEPALIVE_ENV) or 30)


@dataclass(frozen=True)
class ProbeSettings:
    """Readiness probing of a ready instance (Azure's readiness_probe, in seconds)."""

    period_s: float = 5.0
    failure_threshold: int = 3
    timeout_s: float = 2.0

    @classmethod
    def of(cls, spec: dict[str, Any]) -> ProbeSettings:
        probe = spec.get("readinessProbe") or {}
        defaults = cls()
        return cls(
            period_s=float(probe.get("period") or defaults.period_s),
            failure_threshold=int(probe.get("failureThreshold") or defaults.failure_threshold),
            timeout_s=float(probe.get("timeout") or defaults.timeout_s),
        )


# azure-ai-ml's ProbeSettings defaults (initial_delay 10 s, period 10 s, failure_threshold 30).
AZURE_PROBE_DEFAULTS = {"initialDelay": 10, "period": 10, "failureThreshold": 30}


@dataclass(frozen=True)
class StartLimit:
    """How long an instance may take to answer its health route after it starts, as Azure computes it
    from the readiness probe: initial delay + failure threshold x period."""

    initial_delay_s: int
    failure_threshold: int
    period_s: int

    @classmethod
    def of(cls, spec: dict[str, Any]) -> StartLimit:
        probe = {**AZURE_PROBE_DEFAULTS, **{k: v for k, v in (spec.get("readinessProbe") or {}).items() if v is not None}}
        return cls(int(probe["initialDelay"]), int(probe["failureThreshold"]), int(probe["period"]))

    @property
    def seconds(self) -> int:
        return self.initial_delay_s + self.failure_threshold * self.period_s

    def explained(self) -> str:
        return (f"readinessProbe: initialDelay {self.initial_delay_s} + failureThreshold {self.failure_threshold} "
                f"x period {self.period_s} s")

    def exceeded(self) -> str:
        return (f"worker did not answer its health route within {self.seconds} s ({self.explained()}); if init() "
                "needs longer, raise readinessProbe.failureThreshold or readinessProbe.initialDelay")


class Worker:
    def __init__(self, spec: dict[str, Any], log_path: Path, socket_path: Path,
                 on_spawn: Callable[[Worker], None] = lambda _: None, state_root: Path | None = None):
        self.spec = spec
        self.code = served_path(state_root, spec, "code") if state_root else Path(spec["code"])
        model = served_path(state_root, spec, "model") if state_root else spec.get("model")
        self.model = Path(model) if model else None
        self.log_path = log_path
        self.socket_path = socket_path
        self.on_spawn = on_spawn  # records the process group before anything can go wrong
        self.process: asyncio.subprocess.Process | None = None
        self.upstream = Upstream(str(socket_path), worker_keepalive_s())
        self.capacity = int(spec.get("maxConcurrentRequestsPerInstance", DEFAULT_MAX_CONCURRENT_REQUESTS))
        self.busy = 0  # requests the router has sent and not yet given up on or been answered
        self.healthy = False
        self.failed_probes = 0
        self.next_probe = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def in_rotation(self) -> bool:
        return self.healthy and self.alive()

    def take_out(self) -> None:
        """A request found this instance broken: no requests until a probe finds it answering."""
        self.healthy = False
        self.next_probe = 0.0

    async def start(self) -> None:
        self.healthy = False
        self.failed_probes = 0
        self.upstream.close()
        code, model = self.code, self.model
        if not code.is_dir():
            raise DeploymentFailed(f"code folder {str(code)!r} does not exist (any more)", "")
        env = {
            **os.environ,
            **self.spec.get("environmentVariables", {}),
            "AML_APP_ROOT": str(code),
            "AZUREML_ENTRY_SCRIPT": self.spec["scoringScript"],
            "AZUREML_MODEL_DIR": str(Path(model).parent) if model else str(code),
            "GUNICORN_CMD_ARGS": "--no-control-socket",
            "PYTHONUNBUFFERED": "1",
        }
        timeout_s = max(30, int(self.spec.get("requestTimeoutMs", DEFAULT_REQUEST_TIMEOUT_MS) / 1000) * 2)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            log_fd = paths.open_private(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            with os.fdopen(log_fd, "ab") as log:
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting on unix:{self.socket_path}\n".encode())
                log.flush()
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", GUNICORN_KEEPING_ITS_COMMAND_LINE,
                    "--bind", f"unix:{self.socket_path}", "--umask", "0o077",
                    # One thread per request slot, and one more so a health probe is not queued behind them.
                    "--workers", "1", "--worker-class", "gthread", "--threads", str(self.capacity + 1),
                    "--keep-alive", f"{worker_keepalive_s():g}",
                    "--timeout", str(timeout_s), "--graceful-timeout", "5", WSGI_APP,
                    cwd=str(code), env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL, start_new_session=True, preexec_fn=_parent_death_signal(),
                )
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise DeploymentFailed(describe_os_error(err, self.log_path), "") from None
            raise DeploymentFailed(f"could not start a worker: {describe_os_error(err)}", "") from None
        try:
            self.on_spawn(self)
        except OSError as err:  # not recorded: it must not run
            await self.stop(0)
            raise DeploymentFailed(f"could not record the worker: {describe_os_error(err)}", "") from None

    async def probe(self, timeout_s: float) -> bool:
        """True if the health route answers 200 within `timeout_s`."""
        try:
            return await self.upstream.get("/", timeout_s) == 200
        except OSError:  # ConnectionError (UpstreamClosed among them) and TimeoutError are OSErrors
            return False

    async def wait_healthy(self, timeout_s: float | None = None) -> bool:
        """True once `GET /` answers 200 (init() has run); False if the worker exits or the start limit
        (StartLimit, from the readiness probe) passes."""
        timeout_s = StartLimit.of(self.spec).seconds if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            if self.socket_path.exists() and await self.probe(2):
                self.healthy = True
                self.failed_probes = 0
                return True
            await asyncio.sleep(0.1)
        return False

    async def stop(self, grace_s: float = 5.0) -> None:
        self.healthy = False
        self.upstream.close()
        if not self.alive():
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(self.process.wait(), grace_s)
        except asyncio.TimeoutError:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self.process.wait()


class DeploymentFailed(RuntimeError):
    """A deployment did not become ready; `log_tail` holds the failing worker's last log lines."""

    def __init__(self, message: str, log_tail: str):
        super().__init__(message)
        self.log_tail = log_tail


class Deployment:
    """One deployment's instances. Each Deployment object is one generation: its own log folder,
    so a replacement never writes into the logs of the set it replaces."""

    def __init__(self, endpoint: str, name: str, spec: dict[str, Any], log_dir: Path, socket_dir: Path,
                 on_spawn: Callable[[Worker], None] = lambda _: None, state_root: Path | None = None):
        self.state_root = state_root  # pinned code and model live under it (snapshots.py)
        self.endpoint = endpoint
        self.name = name
        self.spec = spec
        now = time.time()  # milliseconds in the name: two generations of one second still sort by age
        self.generation = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{int(now * 1000) % 1000:03d}{secrets.token_hex(1)}"
        self.log_dir = log_dir / self.generation
        self.socket_dir = socket_dir
        self.on_spawn = on_spawn
        self.workers: list[Worker] = []
        self.state = "starting"  # starting | ready | failed | draining | stopped
        self.error = ""
        self.inflight = 0
        self.restarts = 0
        self.probes = ProbeSettings.of(spec)
        self._next = 0
        self._slot_waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def request_timeout_s(self) -> float:
        return self.spec.get("requestTimeoutMs", DEFAULT_REQUEST_TIMEOUT_MS) / 1000

    @property
    def max_concurrent(self) -> int:
        return int(self.spec.get("maxConcurrentRequestsPerInstance", DEFAULT_MAX_CONCURRENT_REQUESTS))

    @property
    def queue_wait_s(self) -> float | None:
        """How long a request may wait for a free slot; None: within its request timeout. Azure deprecated
        max_queue_wait_ms for managed endpoints ("increase request_timeout_ms to account for any
        networking/queue delays"), so without it the queue wait is part of the request timeout."""
        wait_ms = self.spec.get("maxQueueWaitMs")
        return None if wait_ms is None else wait_ms / 1000

    def _new_workers(self, count: int) -> list[Worker]:
        start = len(self.workers)
        return [
            Worker(self.spec, self.log_dir / f"instance-{start + i}.log",
                   self.socket_dir / f"{secrets.token_hex(6)}.sock", self.on_spawn, self.state_root)
            for i in range(count)
        ]

    async def _start_workers(self, workers: list[Worker]) -> None:
        try:
            await self._start_and_wait(workers)
        except asyncio.CancelledError:  # the change was cancelled: nothing it started keeps running
            await asyncio.gather(*(w.stop(1) for w in workers))
            raise

    async def _start_and_wait(self, workers: list[Worker]) -> None:
        try:
            for worker in workers:
                await worker.start()
        except DeploymentFailed as err:
            await asyncio.gather(*(w.stop() for w in workers))
            raise DeploymentFailed(
                f"deployment {self.name!r} of endpoint {self.endpoint!r} failed to start: {err}", err.log_tail
            ) from None
        results = await asyncio.gather(*(w.wait_healthy() for w in workers))
        if not all(results):
            failed = next(w for w, ok in zip(workers, results) if not ok)
            code = failed.process.returncode if failed.process else None
            await asyncio.gather(*(w.stop() for w in workers))
            reason = "init() failed (worker exit code 3)" if code == 3 else (
                f"worker exited with code {code}" if code is not None else StartLimit.of(self.spec).exceeded()
            )
            raise DeploymentFailed(
                f"deployment {self.name!r} of endpoint {self.endpoint!r} failed to start: {reason}",
                log_tail(failed.log_path),
            )

    async def start(self) -> None:
        workers = self._new_workers(int(self.spec["instanceCount"]))
        self.workers = workers  # visible (and recorded) while they start
        try:
            await self._start_workers(workers)
        except DeploymentFailed as err:
            self.state, self.error = "failed", f"{err}\n{err.log_tail}".rstrip()
            raise
        except asyncio.CancelledError:
            self.state = "stopped"
            raise
        self.state, self.error = "ready", ""

    async def scale(self, count: int) -> None:
        """Change the instance count in place: new instances join once healthy, extra ones drain."""
        if count > len(self.workers):
            added = self._new_workers(count - len(self.workers))
            await self._start_workers(added)
            self.workers = self.workers + added
        elif count < len(self.workers):
            kept, removed = self.workers[:count], self.workers[count:]
            self.workers = kept
            await asyncio.gather(*(w.stop() for w in removed))
        self.spec = {**self.spec, "instanceCount": count}

    def in_rotation(self) -> bool:
        return any(w.in_rotation() for w in self.workers)

    def take_slot(self) -> Worker | None:
        """An instance in rotation with a free request slot (round robin), its slot taken; None if none."""
        free = [w for w in self.workers if w.in_rotation() and w.busy < w.capacity]
        if not free:
            return None
        self._next = (self._next + 1) % len(free)
        worker = free[self._next]
        worker.busy += 1
        return worker

    def release(self, worker: Worker) -> None:
        worker.busy -= 1
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def slot_freed(self, timeout_s: float) -> None:
        """Wait until a slot is released (or a moment has passed: instances also return to rotation)."""
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(min(timeout_s, SLOT_RECHECK_S)):
                await waiter
        except asyncio.TimeoutError:
            pass
        finally:
            if not waiter.done():
                waiter.cancel()

    async def drain_and_stop(self, timeout_s: float = 30.0) -> None:
        """No new requests reach a draining deployment; in-flight ones finish before it stops."""
        self.state = "draining"
        deadline = time.monotonic() + timeout_s
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.gather(*(w.stop() for w in self.workers))
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "instances": len(self.workers),
            "healthy": sum(w.in_rotation() for w in self.workers),
            "restarts": self.restarts,
            "pids": [w.pid for w in self.workers],
            "sockets": [str(w.socket_path) for w in self.workers],
            "logDir": str(self.log_dir),
            "error": self.error,
            "spec": self.spec,
        }
