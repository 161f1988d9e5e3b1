"""The local runtime process: owns the state, the endpoints and the workers; starts and stops them.

Run by the CLI on demand (`python -m mlcanary.local_runtime.server --state-dir DIR`), found again
through DIR/runtime.json. Its parts, one module each: the control plane (control_plane.py, the
changes), one data plane per endpoint (data_plane.py), worker supervision (supervision.py).

State is the truth: a change counts once state.json is durably written; a write that fails undoes
the change. On start the state is restored completely (deployments healthy, traffic set) before any
endpoint accepts a request; a state file that cannot be read stops the start at once, and is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import logging.handlers
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from mlcanary.local_runtime import metrics_address, owner, paths, records, snapshots, store
from mlcanary.local_runtime.store import StateWriteFailed
from mlcanary.local_runtime.bodies import BodyBudget, budget_from_environment
from mlcanary.local_runtime.data_plane import Endpoint, free_port
from mlcanary.local_runtime.metrics import Metrics
from mlcanary.local_runtime.routing import Routing
from mlcanary.local_runtime.os_errors import describe_os_error
from mlcanary.local_runtime.records import UnusableRecord
from mlcanary.local_runtime.supervision import Supervisor, WorkerRegistry, kill_orphans, recorded_workers
from mlcanary.local_runtime.workers import Deployment, Worker

log = logging.getLogger("mlcanary.local")

LOG_MAX_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 3
EXIT_UNUSABLE_STATE = 2


def write_private(path: Path, document: dict[str, Any]) -> None:
    """Write a JSON file only its owner can read, created that way (no window with wider rights)."""
    import json

    descriptor = paths.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(descriptor, "w") as file:
        json.dump(document, file)


def kept_metrics(root: Path) -> Metrics:
    """The counts the last clean stop kept; none after a crash or with an unreadable file (a counter
    reset, as Prometheus sees it)."""
    path = paths.metrics_file(root)
    if not path.exists():
        return Metrics()
    try:  # bounded, a regular file only: it lives where state.json does
        return Metrics.from_json(records.read_json_record(path, "metrics file", records.STATE_FILE_LIMIT))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        log.warning("%s cannot be used (%s): request counts start from 0", path, err)
        return Metrics()
    finally:
        path.unlink(missing_ok=True)  # a crash later must not bring back counts this run goes past


class Runtime:
    def __init__(self, root: Path, state: dict[str, Any]):
        self.root = root
        self.initial_state = state
        self.endpoints: dict[str, Endpoint] = {}
        self.metrics = kept_metrics(root)
        self.body_budget = BodyBudget(budget_from_environment())  # one for every endpoint: the router's memory
        self.lock = asyncio.Lock()  # one control change at a time
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.draining: set[Deployment] = set()  # replaced deployments still finishing their requests
        self.changing: dict[tuple[str, str], asyncio.Task] = {}  # (endpoint, deployment) -> the change, to cancel
        self.cancel_requested: set[asyncio.Task] = set()
        self.socket_dir = paths.socket_dir(root)
        paths.private_subdir(root / "logs")  # worker logs may quote request data
        self.registry = WorkerRegistry(root, self.all_workers, self.socket_dir)
        self.control_token = secrets.token_urlsafe(32)

    # --- plumbing ---------------------------------------------------------------------------

    def background(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def all_deployments(self) -> list[Deployment]:
        return [d for e in self.endpoints.values() for d in e.deployments.values()]

    def all_workers(self) -> list[Worker]:
        return [w for d in [*self.all_deployments(), *self.draining] for w in d.workers]

    def new_endpoint(self, name: str, record: dict[str, Any]) -> Endpoint:
        return Endpoint(name, record, self.metrics, self.background, self.body_budget)

    def new_deployment(self, endpoint: str, name: str, spec: dict[str, Any]) -> Deployment:
        return Deployment(endpoint, name, spec, paths.deployment_log_dir(self.root, endpoint, name),
                          self.socket_dir, self.registry.spawned, state_root=self.root)

    def collect_snapshots(self, at_start: bool = False) -> None:
        """Remove pinned code and model copies that no deployment, running or draining, uses any more.
        Run under the control lock (a change in progress may be pinning a new copy), or at start."""
        in_use = snapshots.digests_of(d.spec for d in [*self.all_deployments(), *self.draining])
        removed = snapshots.collect(self.root, in_use, unfinished_too=at_start)
        if removed:
            log.info("removed %d pinned version(s) no deployment uses: %s", len(removed),
                     ", ".join(digest[:12] for digest in removed))

    def persist(self) -> None:
        """Write the desired state durably; StateWriteFailed (with the cause) if it cannot be."""
        path = paths.state_file(self.root)
        try:
            store.save(path, {"endpoints": {n: e.record() for n, e in self.endpoints.items()}})
        except OSError as err:
            raise StateWriteFailed(describe_os_error(err, path)) from None
        with contextlib.suppress(OSError):  # best effort: orphans are also found by their socket path
            self.registry.write()

    async def retire(self, deployment: Deployment) -> None:
        """Drain a replaced deployment; its workers stay in workers.json until they have stopped."""
        self.draining.add(deployment)
        try:
            await deployment.drain_and_stop()
        finally:
            self.draining.discard(deployment)
            with contextlib.suppress(OSError):
                self.registry.write()
        async with self.lock:
            self.collect_snapshots()

    async def give_back_memory(self) -> None:
        """Once no request body is held, hand freed heap back to the OS (glibc keeps it otherwise, and a
        burst of large bodies would leave the router hundreds of MB larger than it needs to be)."""
        trim = _malloc_trim()
        while trim is not None and not self.stopping.is_set():
            await asyncio.sleep(TRIM_EVERY_S)
            if self.body_budget.used == 0:
                trim(0)

    # --- start, restore, stop ------------------------------------------------------------------

    async def serve_metrics(self, address: tuple[str, int] | None):
        """/metrics on its fixed loopback address, no token: a static scrape config outlives restarts.

        A taken address never stops the runtime (on a shared machine the first runtime has it): the
        metrics go to a free port of the same host instead, and the runtime says where (runtime.log,
        runtime.json -> `local status`, `local start`, `local metrics`). Returns the runner, the
        address served and, after such a fallback, the address that was taken."""
        from aiohttp import web

        if address is None:
            return None, None, None
        app = web.Application()
        app.router.add_get("/metrics", lambda _: web.Response(text=self.metrics.prometheus(), content_type="text/plain"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        taken = None
        try:
            await web.TCPSite(runner, address[0], address[1]).start()
        except OSError as err:
            if address[1] == 0:
                await runner.cleanup()
                raise
            reason = (os.strerror(err.errno) if err.errno else str(err)).lower()  # aiohttp rewords strerror
            taken = f"{metrics_address.show(address)} ({reason})"
            await web.TCPSite(runner, address[0], 0).start()
        served = metrics_address.show(runner.addresses[0][:2])
        if taken:
            log.warning("the metrics address %s cannot be used, another program or the runtime of another state "
                        "directory holds it: metrics are served at %s instead (choose a fixed one with %s or "
                        "`mlcanary local start --metrics-address`)", taken, served, metrics_address.ENV_VAR)
        return runner, served, taken

    async def run(self, control_port: int, metrics_at: tuple[str, int] | None = None) -> None:
        from aiohttp import web

        from mlcanary.local_runtime.control_plane import control_app

        metrics_runner, metrics_shown, metrics_taken = await self.serve_metrics(metrics_at)
        kill_orphans(self.root, self.socket_dir)
        runner = web.AppRunner(control_app(self), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", control_port)
        await site.start()
        port = runner.addresses[0][1]
        await self.restore()
        write_private(paths.runtime_file(self.root), {"pid": os.getpid(), "controlPort": port, "token": self.control_token,
                                                      "metricsAddress": metrics_shown,
                                                      "metricsAddressTaken": metrics_taken})
        log.info("runtime ready: control plane on 127.0.0.1:%s, metrics on %s, worker sockets in %s", port,
                 metrics_shown or "the control plane only", self.socket_dir)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        owner.watch(loop, owner.configured(), self._owner_gone)
        self.background(self.give_back_memory())
        await Supervisor(self.all_deployments, self.registry).run(self.stopping)
        for endpoint in self.endpoints.values():
            await asyncio.gather(*(d.drain_and_stop(5) for d in endpoint.deployments.values()))
            await endpoint.close()
        try:
            store.save(paths.metrics_file(self.root), self.metrics.as_json())
        except OSError as err:
            log.warning("could not keep the request counts, the next start counts from 0: %s", describe_os_error(err))
        paths.runtime_file(self.root).unlink(missing_ok=True)
        paths.workers_file(self.root).unlink(missing_ok=True)
        if not self.socket_dir.is_relative_to(self.root):
            with contextlib.suppress(OSError):
                self.socket_dir.rmdir()  # the temp-dir fallback, once its sockets are gone
        await runner.cleanup()
        if metrics_runner:
            await metrics_runner.cleanup()
        log.info("runtime stopped")

    def _owner_gone(self) -> None:
        log.info("stopping: the process this runtime belongs to ($%s) has exited", owner.ENV_VAR)
        self.stopping.set()

    async def restore(self) -> None:
        """Bring back what the state file says, and only then open the scoring ports: no request
        meets an endpoint without its deployments or traffic."""
        for name, record in self.initial_state["endpoints"].items():
            endpoint = self.new_endpoint(name, record)
            self.endpoints[name] = endpoint
            for dep_name, spec in record["deployments"].items():
                endpoint.deployments[dep_name] = self.new_deployment(name, dep_name, spec)
            results = await asyncio.gather(*(d.start() for d in endpoint.deployments.values()), return_exceptions=True)
            for dep_name, result in zip(endpoint.deployments, results):
                if isinstance(result, BaseException):
                    log.error("restoring %s/%s: %s", name, dep_name, result)
            endpoint.routing = Routing(record.get("traffic", {}), record.get("mirrorTraffic", {}))
        for endpoint in self.endpoints.values():
            await endpoint.serve(free_port)
        self.collect_snapshots(at_start=True)
        try:
            self.persist()  # a port that had to change is remembered
        except StateWriteFailed as err:
            log.warning("could not record the restored state: %s", err)


TRIM_EVERY_S = 2.0


def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Each log file, the rotated ones too, is created readable by its owner only, never through a link."""

    def _open(self):
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,  # noqa: SIM115
                    opener=lambda path, flags: paths.open_private(Path(path), flags))


def setup_logging(root: Path) -> None:
    """runtime.log: bounded (rotated), an audit line per change, no line per request."""
    handler = PrivateRotatingFileHandler(paths.runtime_log(root), maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # aiohttp logs a request it cannot parse with its text (headers, a key among them) and a traceback,
    # once per request; the data plane counts those instead (quiet_http.py), and the control plane's
    # are not worth a line either: only audit lines, state changes and supervision reach runtime.log.
    for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.internal"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="mlcanary local runtime (started by the mlcanary CLI)")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=0, help="control plane port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--metrics-address", default=None,
                        help=f"HOST:PORT on loopback for GET /metrics, or off (default: ${metrics_address.ENV_VAR}, "
                        f"else {metrics_address.DEFAULT})")
    args = parser.parse_args(argv)
    try:
        metrics_at = metrics_address.parse(metrics_address.configured(args.metrics_address))
        owner.configured()
    except owner.BadOwner as err:
        print(err, file=sys.stderr)
        sys.exit(EXIT_UNUSABLE_STATE)
    except metrics_address.BadMetricsAddress as err:
        print(f"{metrics_address.ENV_VAR}: {err}", file=sys.stderr)
        sys.exit(EXIT_UNUSABLE_STATE)
    _raise_open_file_limit()
    root = paths.state_dir(args.state_dir)
    try:
        warning = paths.ensure_private_dir(root)  # keys, the control token, sockets and logs live here
        setup_logging(root)
        lock = os.fdopen(paths.open_private(paths.lock_file(root), os.O_RDWR | os.O_CREAT), "w")  # held for life
    except paths.UnsafeStateDir as err:  # nothing is written into a folder others control
        print(err, file=sys.stderr)
        sys.exit(EXIT_UNUSABLE_STATE)
    except OSError as err:
        print(f"{err.filename}: {err.strerror}" if err.filename else describe_os_error(err), file=sys.stderr)
        sys.exit(EXIT_UNUSABLE_STATE)
    if warning:
        log.warning(warning)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another mlcanary runtime already owns {root}")
    try:
        state = store.load(paths.state_file(root))
    except store.StateCorrupt as err:
        _refuse(f"{err}; the file was kept as it is: repair it, or move it away to start with no endpoints")
    try:
        recorded_workers(root)
    except UnusableRecord as err:
        _refuse(f"{err}; the file was kept as it is: stop the workers it lists yourself if any still run, "
                "then move it away")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(Runtime(root, state).run(args.port, metrics_at))


def _refuse(message: str) -> None:
    log.error("refusing to start: %s", message)
    print(message, file=sys.stderr)
    sys.exit(EXIT_UNUSABLE_STATE)


def _raise_open_file_limit() -> None:
    """Each client connection and each upstream request is a descriptor: a burst of thousands of
    connections must not meet a soft limit of 1,024 while the hard limit allows more."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536, hard))


def event_loop_factory():
    """uvloop where it is installed (the `local` extra): the router's per-request cost is mostly the loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
