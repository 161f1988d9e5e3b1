"""The local runtime process: control plane, one data plane per endpoint, worker supervision.

Run by the CLI on demand (`python -m mlcanary.local_runtime.server --state-dir DIR`), found again through
DIR/runtime.json. Everything it starts listens on 127.0.0.1 only. Desired state is written
atomically after every accepted change and restored on start, so a crash or restart brings back the
same endpoints, deployments and traffic. Rules are the project's one copy (mlcanary.components.rules):
a change Azure would refuse is refused here too, and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from mlcanary.components import rules
from mlcanary.local_runtime import paths, store
from mlcanary.local_runtime.metrics import Metrics
from mlcanary.local_runtime.protocol import CONTROL_TOKEN_HEADER, PIN_HEADER
from mlcanary.local_runtime.routing import Routing
from mlcanary.local_runtime.workers import WSGI_APP, Deployment, DeploymentFailed, free_port, log_tail

log = logging.getLogger("mlcanary.local")


def write_private(path: Path, document: dict[str, Any]) -> None:
    """Write a JSON file only its owner can read, created that way (no window with wider rights)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(document, file)


def problem_response(status: int, message: str, problems: list[rules.Problem] | None = None, **extra) -> web.Response:
    body = {"message": message, "problems": [str(p) for p in problems or []], **extra}
    return web.json_response(body, status=status)


def deployment_problems(name: str, spec: dict[str, Any]) -> list[rules.Problem]:
    problems = rules.name_problems("name", name, "deployment name")
    problems += rules.instance_count_problems("instanceCount", spec.get("instanceCount"))
    if "requestTimeoutMs" in spec:
        problems += rules.request_timeout_problems("requestTimeoutMs", spec["requestTimeoutMs"])
    code, script = spec.get("code"), spec.get("scoringScript")
    if not code or not Path(code).is_dir():
        problems.append(rules.Problem("code", f"must be an existing folder, got {code!r}"))
    elif not script or not (Path(code) / script).is_file():
        problems.append(rules.Problem("scoringScript", f"{script!r} not found in {code}"))
    model = spec.get("model")
    if model and not Path(model).exists():
        problems.append(rules.Problem("model", f"{model!r} does not exist"))
    return problems


class Endpoint:
    def __init__(self, runtime: Runtime, name: str, record: dict[str, Any]):
        self.runtime = runtime
        self.name = name
        self.auth_mode = record["authMode"]
        self.keys = record["keys"]
        self.port = record["port"]
        self.deployments: dict[str, Deployment] = {}
        self.routing = Routing({}, {})
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None

    @property
    def scoring_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/score"

    async def serve(self) -> None:
        # aiohttp's low-level server: the scoring URI is one route, and the application layers
        # (router, middlewares) are measurable cost per request. No access log: requests carry keys.
        self._server = web.Server(self.handle, access_log=None, client_max_size=100 * 1024 * 1024)
        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(self._server, "127.0.0.1", self.port)
        except OSError:  # the remembered port was taken meanwhile
            self.port = free_port()
            self._listener = await loop.create_server(self._server, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._listener:
            self._listener.close()
            await self._server.shutdown(5)

    async def handle(self, request: web.BaseRequest) -> web.Response:
        if request.path != "/score":
            return problem_response(404, f"no such path {request.path!r}; the scoring URI is {self.scoring_uri}")
        if request.method != "POST":
            return problem_response(405, "use POST to score")
        return await self.score(request)

    def record(self) -> dict[str, Any]:
        return {
            "authMode": self.auth_mode,
            "keys": self.keys,
            "port": self.port,
            "deployments": {n: d.spec for n, d in self.deployments.items()},
            "traffic": self.routing.traffic,
            "mirrorTraffic": self.routing.mirror_traffic,
        }

    def authorized(self, request: web.BaseRequest) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return any(secrets.compare_digest(token, key) for key in self.keys.values())

    async def score(self, request: web.BaseRequest) -> web.Response:
        started = time.perf_counter()
        if not self.authorized(request):
            return problem_response(401, "Unauthorized: send `Authorization: Bearer <key>` (see `mlcanary local keys`)")
        # Read the body before routing: from choosing a deployment to `forward` counting the request
        # as in flight there must be no await, or a drain could stop that deployment in between.
        body = await request.read()
        content_type = request.headers.get("Content-Type", "application/json")
        pinned = request.headers.get(PIN_HEADER)
        routing = self.routing  # one consistent map for this request, whatever changes meanwhile
        mirror_to = None
        if pinned:
            deployment = self.deployments.get(pinned)
            if deployment is None or deployment.state != "ready":
                return problem_response(404, f"deployment {pinned!r} not found on endpoint {self.name!r}")
        else:
            chosen = routing.live.pick()
            deployment = self.deployments.get(chosen) if chosen else None
            if deployment is None:
                return problem_response(
                    404,
                    "No valid deployments to route to: no deployment of this endpoint has live traffic. "
                    f"Set traffic, or pin a deployment with the {PIN_HEADER} header.",
                )
            mirror_to = routing.mirror.take()
        if mirror_to and mirror_to in self.deployments:
            self.runtime.background(self.mirror(self.deployments[mirror_to], body, content_type))
        status, payload, headers = await self.runtime.forward(deployment, body, content_type)
        self.runtime.metrics.of(self.name, deployment.name).observe(status, time.perf_counter() - started)
        return web.Response(status=status, body=payload, headers={**headers, PIN_HEADER: deployment.name})

    async def mirror(self, deployment: Deployment, body: bytes, content_type: str) -> None:
        started = time.perf_counter()
        status, _, _ = await self.runtime.forward(deployment, body, content_type)
        self.runtime.metrics.of(self.name, deployment.name).observe(status, time.perf_counter() - started, mirrored=True)

    def status(self) -> dict[str, Any]:
        return {
            "scoringUri": self.scoring_uri,
            "authMode": self.auth_mode,
            "traffic": self.routing.traffic,
            "mirrorTraffic": self.routing.mirror_traffic,
            "deployments": {
                n: {**d.status(), "metrics": self.runtime.metrics.of(self.name, n).summary()}
                for n, d in self.deployments.items()
            },
        }


class Runtime:
    def __init__(self, root: Path):
        self.root = root
        self.endpoints: dict[str, Endpoint] = {}
        self.metrics = Metrics()
        self.session: aiohttp.ClientSession | None = None
        self.lock = asyncio.Lock()  # one control change at a time
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.draining: set[Deployment] = set()  # replaced deployments still finishing their requests

    # --- plumbing ---------------------------------------------------------------------------

    def background(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def persist(self) -> None:
        store.save(paths.state_file(self.root), {"endpoints": {n: e.record() for n, e in self.endpoints.items()}})
        live = [d for e in self.endpoints.values() for d in e.deployments.values()]
        pgids = [w.pid for d in [*live, *self.draining] for w in d.workers if w.pid]
        paths.workers_file(self.root).write_text(json.dumps({"pgids": pgids}))

    async def forward(self, deployment: Deployment, body: bytes, content_type: str) -> tuple[int, bytes, dict]:
        """Send one request to a healthy instance; Azure's statuses for what goes wrong."""
        deployment.inflight += 1
        try:
            for _ in range(max(1, len(deployment.workers))):
                worker = deployment.pick()
                if worker is None:
                    break
                try:
                    async with asyncio.timeout(deployment.request_timeout_s):  # no extra task, unlike wait_for
                        status, answer_headers, payload = await worker.upstream.post(body, content_type)
                except asyncio.TimeoutError:  # before OSError: TimeoutError is one
                    ms = int(deployment.request_timeout_s * 1000)
                    return 408, json.dumps({"message": f"request timed out after {ms} ms (requestTimeoutMs)"}).encode(), {
                        "Content-Type": "application/json"}
                except (ConnectionError, OSError):
                    # The instance died: refused, or reset before any answer. Scoring is stateless,
                    # so another instance takes the request; the supervisor restarts this one.
                    worker.healthy = False
                    continue
                headers = {"Content-Type": answer_headers.get("content-type", "application/json")}
                if status == 200:
                    return 200, payload, headers
                # Azure: the model container answered with an error -> 424, with its status.
                headers["ms-azureml-model-error-statuscode"] = str(status)
                headers["ms-azureml-model-error-reason"] = "model_error"
                return 424, payload, headers
            return 503, json.dumps({"message": f"deployment {deployment.name!r} has no healthy instance"}).encode(), {
                "Content-Type": "application/json"}
        finally:
            deployment.inflight -= 1

    async def retire(self, deployment: Deployment) -> None:
        """Drain a replaced deployment; its workers stay in workers.json until they have stopped."""
        self.draining.add(deployment)
        try:
            await deployment.drain_and_stop()
        finally:
            self.draining.discard(deployment)
            self.persist()

    async def supervise(self) -> None:
        while not self.stopping.is_set():
            for endpoint in list(self.endpoints.values()):
                for deployment in list(endpoint.deployments.values()):
                    try:
                        await deployment.supervise(self.session)
                    except Exception:  # noqa: BLE001 - a restart failing must not stop supervision
                        log.exception("restarting a worker of %s/%s failed", endpoint.name, deployment.name)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.5)

    # --- start, restore, stop ------------------------------------------------------------------

    async def run(self, control_port: int) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        kill_orphans(self.root)
        self.control_token = secrets.token_urlsafe(32)
        app = self.control_app()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", control_port)
        await site.start()
        port = runner.addresses[0][1]
        await self.restore()
        write_private(paths.runtime_file(self.root), {"pid": os.getpid(), "controlPort": port, "token": self.control_token})
        log.info("runtime ready: control plane on 127.0.0.1:%s", port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        supervisor = asyncio.create_task(self.supervise())
        await self.stopping.wait()
        await supervisor
        for endpoint in self.endpoints.values():
            await asyncio.gather(*(d.drain_and_stop(5) for d in endpoint.deployments.values()))
            await endpoint.close()
        paths.runtime_file(self.root).unlink(missing_ok=True)
        paths.workers_file(self.root).unlink(missing_ok=True)
        await runner.cleanup()
        await self.session.close()

    async def restore(self) -> None:
        """Bring back what the state file says: endpoints, their deployments, then their traffic."""
        for name, record in store.load(paths.state_file(self.root))["endpoints"].items():
            endpoint = Endpoint(self, name, record)
            await endpoint.serve()
            self.endpoints[name] = endpoint
            starts = []
            for dep_name, spec in record["deployments"].items():
                deployment = Deployment(name, dep_name, spec, paths.deployment_log_dir(self.root, name, dep_name))
                endpoint.deployments[dep_name] = deployment
                starts.append(deployment.start(self.session))
            results = await asyncio.gather(*starts, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("restoring %s: %s", name, result)
            endpoint.routing = Routing(record.get("traffic", {}), record.get("mirrorTraffic", {}))
        self.persist()

    # --- control plane -------------------------------------------------------------------------

    def control_app(self) -> web.Application:
        @web.middleware
        async def only_the_owner(request: web.Request, handler):
            """The control plane hands out keys: only callers who can read runtime.json (0600) may use it."""
            if request.path != "/health" and not secrets.compare_digest(
                request.headers.get(CONTROL_TOKEN_HEADER, ""), self.control_token
            ):
                return problem_response(401, f"the control plane needs the {CONTROL_TOKEN_HEADER} header from runtime.json")
            return await handler(request)

        app = web.Application(middlewares=[only_the_owner])
        r = app.router
        r.add_get("/health", lambda _: web.json_response({"ok": True, "pid": os.getpid()}))
        r.add_get("/status", self.get_status)
        r.add_get("/metrics", lambda _: web.Response(text=self.metrics.prometheus(), content_type="text/plain"))
        r.add_post("/shutdown", self.shutdown)
        r.add_put("/endpoints/{endpoint}", self.put_endpoint)
        r.add_delete("/endpoints/{endpoint}", self.delete_endpoint)
        r.add_get("/endpoints/{endpoint}/keys", self.get_keys)
        r.add_put("/endpoints/{endpoint}/traffic", self.put_traffic)
        r.add_put("/endpoints/{endpoint}/deployments/{deployment}", self.put_deployment)
        r.add_delete("/endpoints/{endpoint}/deployments/{deployment}", self.delete_deployment)
        r.add_get("/endpoints/{endpoint}/deployments/{deployment}/logs", self.get_logs)
        return app

    def endpoint_or_404(self, request: web.Request) -> Endpoint:
        name = request.match_info["endpoint"]
        if name not in self.endpoints:
            raise web.HTTPNotFound(
                text=json.dumps({"message": f"endpoint {name!r} not found", "problems": []}), content_type="application/json")
        return self.endpoints[name]

    async def get_status(self, _: web.Request) -> web.Response:
        return web.json_response({"endpoints": {n: e.status() for n, e in self.endpoints.items()}})

    async def shutdown(self, _: web.Request) -> web.Response:
        self.stopping.set()
        return web.json_response({"ok": True})

    async def put_endpoint(self, request: web.Request) -> web.Response:
        name = request.match_info["endpoint"]
        body = await request.json()
        problems = rules.name_problems("name", name, "endpoint name")
        problems += rules.auth_mode_problems("authMode", body.get("authMode", "key"))
        if problems:
            return problem_response(400, f"endpoint {name!r} refused", problems)
        async with self.lock:
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                record = {"authMode": body.get("authMode", "key"), "port": free_port(),
                          "keys": {"primary": secrets.token_urlsafe(32), "secondary": secrets.token_urlsafe(32)}}
                endpoint = Endpoint(self, name, record)
                await endpoint.serve()
                self.endpoints[name] = endpoint
            else:
                endpoint.auth_mode = body.get("authMode", endpoint.auth_mode)
            self.persist()
        return web.json_response(endpoint.status())

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        endpoint = self.endpoint_or_404(request)
        async with self.lock:
            endpoint.routing = Routing({}, {})
            await asyncio.gather(*(d.drain_and_stop() for d in endpoint.deployments.values()))
            await endpoint.close()
            del self.endpoints[endpoint.name]
            self.persist()
        return web.json_response({"deleted": endpoint.name})

    async def get_keys(self, request: web.Request) -> web.Response:
        endpoint = self.endpoint_or_404(request)
        return web.json_response({"primaryKey": endpoint.keys["primary"], "secondaryKey": endpoint.keys["secondary"]})

    async def put_deployment(self, request: web.Request) -> web.Response:
        endpoint = self.endpoint_or_404(request)
        name = request.match_info["deployment"]
        spec = await request.json()
        problems = deployment_problems(name, spec)
        if problems:
            return problem_response(400, f"deployment {name!r} refused", problems)
        async with self.lock:
            current = endpoint.deployments.get(name)
            log_dir = paths.deployment_log_dir(self.root, endpoint.name, name)
            try:
                if current is not None and current.state == "ready" and _same_but_count(current.spec, spec):
                    await current.scale(int(spec["instanceCount"]), self.session)
                else:
                    # New, failed before, or changed code/model/settings: a fresh set of instances
                    # takes over only once healthy; the old set drains afterwards.
                    replacement = Deployment(endpoint.name, name, spec, log_dir)
                    await replacement.start(self.session)
                    endpoint.deployments[name] = replacement
                    if current is not None:
                        self.background(self.retire(current))
            except DeploymentFailed as err:
                return problem_response(422, str(err), logTail=err.log_tail)
            self.persist()
            return web.json_response(endpoint.deployments[name].status())

    async def delete_deployment(self, request: web.Request) -> web.Response:
        endpoint = self.endpoint_or_404(request)
        name = request.match_info["deployment"]
        async with self.lock:
            deployment = endpoint.deployments.get(name)
            if deployment is None:
                return problem_response(404, f"deployment {name!r} not found on endpoint {endpoint.name!r}")
            live, mirror = endpoint.routing.traffic.get(name, 0), endpoint.routing.mirror_traffic.get(name, 0)
            if live or mirror:
                return problem_response(
                    409, f"deployment {name!r} still has {live}% live and {mirror}% mirror traffic; "
                    "set its traffic to 0 first (Azure refuses this too)")
            del endpoint.deployments[name]  # new pinned requests get 404 from here on
            await deployment.drain_and_stop()
            self.persist()
        return web.json_response({"deleted": name})

    async def put_traffic(self, request: web.Request) -> web.Response:
        endpoint = self.endpoint_or_404(request)
        body = await request.json()
        traffic, mirror = body.get("traffic") or {}, body.get("mirrorTraffic") or {}
        async with self.lock:
            problems = rules.traffic_problems(traffic, mirror, endpoint.deployments)
            for name, share in [*traffic.items(), *mirror.items()]:
                deployment = endpoint.deployments.get(name)
                if share and deployment is not None and deployment.state != "ready":
                    problems.append(rules.Problem(name, f"deployment {name!r} is {deployment.state}, not ready for traffic"))
            if problems:
                return problem_response(400, "traffic refused; nothing changed", problems)
            endpoint.routing = Routing(
                {k: int(v) for k, v in traffic.items()}, {k: int(v) for k, v in mirror.items()})
            self.persist()
        return web.json_response(endpoint.status())

    async def get_logs(self, request: web.Request) -> web.Response:
        endpoint = self.endpoint_or_404(request)
        name = request.match_info["deployment"]
        lines = int(request.query.get("lines", "50"))
        deployment = endpoint.deployments.get(name)
        if deployment is None:
            return problem_response(404, f"deployment {name!r} not found on endpoint {endpoint.name!r}")
        parts = [f"==> {w.log_path.name} <==\n{log_tail(w.log_path, lines)}" for w in deployment.workers]
        return web.Response(text="\n".join(parts) + "\n")


def _same_but_count(old: dict[str, Any], new: dict[str, Any]) -> bool:
    strip = lambda spec: {k: v for k, v in spec.items() if k != "instanceCount"}  # noqa: E731
    return strip(old) == strip(new)


def kill_orphans(root: Path) -> None:
    """Workers left by a runtime that crashed: stop them (only our own worker processes)."""
    try:
        pgids = json.loads(paths.workers_file(root).read_text())["pgids"]
    except (OSError, ValueError, KeyError):
        return
    for pgid in pgids:
        try:
            cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if WSGI_APP.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="mlcanary local runtime (started by the mlcanary CLI)")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=0, help="control plane port on 127.0.0.1 (0: any free port)")
    args = parser.parse_args(argv)
    root = paths.state_dir(args.state_dir)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # keys, the control token and logs live here
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    lock = open(paths.lock_file(root), "w")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another mlcanary runtime already owns {root}")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(Runtime(root).run(args.port))


def _loop_factory():
    """uvloop where it is installed (the `local` extra): the router's per-request cost is mostly the loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
