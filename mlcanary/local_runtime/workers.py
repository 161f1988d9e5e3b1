"""Deployments and their worker processes.

Each instance is one `azureml-inference-server-http` worker under gunicorn, bound to 127.0.0.1
(`azmlinfsrv` itself binds 0.0.0.0, so gunicorn serves its WSGI app directly), with the Azure ML
scoring contract: AML_APP_ROOT is the code folder, AZUREML_ENTRY_SCRIPT the scoring script,
AZUREML_MODEL_DIR the folder the model sits in (Azure mounts a model at
$AZUREML_MODEL_DIR/<model folder or file name>). A deployment is ready only when every instance
answers its health route; a worker that dies later is restarted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from mlcanary.local_runtime.upstream import Upstream

WSGI_APP = "azureml_inference_server_http.server.entry:app"
DEFAULT_REQUEST_TIMEOUT_MS = 5000  # Azure's default request_timeout_ms
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


class Worker:
    def __init__(self, spec: dict[str, Any], log_path: Path):
        self.spec = spec
        self.log_path = log_path
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self.upstream: Upstream | None = None
        self.healthy = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.port = free_port()
        self.healthy = False
        self.upstream = Upstream(self.port)
        code = Path(self.spec["code"])
        model = self.spec.get("model")
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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting on 127.0.0.1:{self.port}\n".encode())
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
                "--worker-class", "gthread", "--threads", "1", "--keep-alive", "30",
                "--timeout", str(timeout_s), "--graceful-timeout", "5", WSGI_APP,
                cwd=str(code), env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
            )

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout_s: float = START_TIMEOUT_S) -> bool:
        """True once `GET /` answers 200 (init() has run); False if the worker exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        self.healthy = True
                        return True
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
        return False

    async def stop(self, grace_s: float = 5.0) -> None:
        self.healthy = False
        if self.upstream:
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
    def __init__(self, endpoint: str, name: str, spec: dict[str, Any], log_dir: Path):
        self.endpoint = endpoint
        self.name = name
        self.spec = spec
        self.log_dir = log_dir
        self.workers: list[Worker] = []
        self.state = "starting"  # starting | ready | failed | draining | stopped
        self.error = ""
        self.inflight = 0
        self.restarts = 0
        self._next = 0

    @property
    def request_timeout_s(self) -> float:
        return self.spec.get("requestTimeoutMs", DEFAULT_REQUEST_TIMEOUT_MS) / 1000

    def _new_workers(self, count: int) -> list[Worker]:
        start = len(self.workers)
        return [
            Worker(self.spec, self.log_dir / f"instance-{start + i}.log")
            for i in range(count)
        ]

    async def _start_workers(self, workers: list[Worker], session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(w.start() for w in workers))
        results = await asyncio.gather(*(w.wait_healthy(session) for w in workers))
        if not all(results):
            failed = next(w for w, ok in zip(workers, results) if not ok)
            code = failed.process.returncode if failed.process else None
            await asyncio.gather(*(w.stop() for w in workers))
            reason = "init() failed (worker exit code 3)" if code == 3 else (
                f"worker exited with code {code}" if code is not None else "worker did not answer its health route in time"
            )
            raise DeploymentFailed(
                f"deployment {self.name!r} of endpoint {self.endpoint!r} failed to start: {reason}",
                log_tail(failed.log_path),
            )

    async def start(self, session: aiohttp.ClientSession) -> None:
        workers = self._new_workers(int(self.spec["instanceCount"]))
        try:
            await self._start_workers(workers, session)
        except DeploymentFailed as err:
            self.state, self.error = "failed", f"{err}\n{err.log_tail}"
            raise
        self.workers = workers
        self.state, self.error = "ready", ""

    async def scale(self, count: int, session: aiohttp.ClientSession) -> None:
        """Change the instance count in place: new instances join once healthy, extra ones drain."""
        if count > len(self.workers):
            added = self._new_workers(count - len(self.workers))
            await self._start_workers(added, session)
            self.workers = self.workers + added
        elif count < len(self.workers):
            kept, removed = self.workers[:count], self.workers[count:]
            self.workers = kept
            await asyncio.gather(*(w.stop() for w in removed))
        self.spec = {**self.spec, "instanceCount": count}

    def pick(self) -> Worker | None:
        """Round robin over healthy instances."""
        healthy = [w for w in self.workers if w.healthy and w.alive()]
        if not healthy:
            return None
        self._next = (self._next + 1) % len(healthy)
        return healthy[self._next]

    async def supervise(self, session: aiohttp.ClientSession) -> None:
        """Restart instances that died after the deployment became ready."""
        if self.state != "ready":
            return
        for worker in self.workers:
            if not worker.alive():
                worker.healthy = False
                self.restarts += 1
                with open(worker.log_path, "ab") as log:
                    log.write(f"--- worker exited ({worker.process.returncode}); restarting\n".encode())
                await worker.start()
                await worker.wait_healthy(session)

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
            "healthy": sum(w.healthy and w.alive() for w in self.workers),
            "restarts": self.restarts,
            "ports": [w.port for w in self.workers],
            "pids": [w.pid for w in self.workers],
            "error": self.error,
            "spec": self.spec,
        }
