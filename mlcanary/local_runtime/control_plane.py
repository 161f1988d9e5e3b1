"""The control plane: the runtime's HTTP API for changes, status, keys, logs and metrics.

Rules are the project's one copy (mlcanary.components.rules): a change Azure would refuse is
refused here too, and changes nothing. A change is accepted only once the state file is durably
written; if that write fails, the change is undone in memory and in processes, and the refusal
names the cause. Every accepted or refused change leaves one audit line in runtime.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mlcanary.components import answer_compare, rules
from mlcanary.local_runtime import records, snapshots
from mlcanary.local_runtime.data_plane import Endpoint, as_bytes, free_port, problem_response
from mlcanary.local_runtime.protocol import CONTROL_TOKEN_HEADER
from mlcanary.local_runtime.routing import Routing
from mlcanary.local_runtime.store import StateWriteFailed
from mlcanary.local_runtime.workers import DeploymentFailed, log_tail

if TYPE_CHECKING:
    from mlcanary.local_runtime.server import Runtime

log = logging.getLogger("mlcanary.local")
STORAGE_FAILED = 507  # Insufficient Storage: the change could not be recorded


def deployment_problems(name: str, spec: dict[str, Any]) -> list[rules.Problem]:
    """The rules of a deployment record (records.py, as state.json is checked), then what it names must exist."""
    problems = records.deployment_problems("", name, spec)
    if problems:
        return problems
    code, script = spec.get("code"), spec.get("scoringScript")
    if not Path(code).is_dir():
        problems.append(rules.Problem("code", f"must be an existing folder, got {code!r}"))
    elif not (Path(code) / script).is_file():
        problems.append(rules.Problem("scoringScript", f"{script!r} not found in {code}"))
    model = spec.get("model")
    if model and not Path(model).exists():
        problems.append(rules.Problem("model", f"{model!r} does not exist"))
    return problems


def _same_but_count(old: dict[str, Any], new: dict[str, Any]) -> bool:
    strip = lambda spec: {k: v for k, v in spec.items() if k != "instanceCount"}  # noqa: E731
    return strip(old) == strip(new)


def control_app(runtime: Runtime) -> web.Application:
    token = runtime.control_token.encode()

    def not_recorded(err: StateWriteFailed) -> web.Response:
        return problem_response(STORAGE_FAILED, f"change refused, nothing changed: the state could not be written: {err}")

    @web.middleware
    async def only_the_owner(request: web.Request, handler):
        """The control plane hands out keys: only callers who can read runtime.json (0600) may use it."""
        if request.path != "/health" and not secrets.compare_digest(
            as_bytes(request.headers.get(CONTROL_TOKEN_HEADER, "")), token
        ):
            return problem_response(401, f"the control plane needs the {CONTROL_TOKEN_HEADER} header from runtime.json")
        return await handler(request)

    @web.middleware
    async def audit(request: web.Request, handler):
        """One line per change (not per read): what was asked, and whether it was accepted."""
        try:
            response = await handler(request)
        except web.HTTPException as err:
            response = err
        if request.method in ("PUT", "POST", "DELETE"):
            if response.status < 400:
                log.info("change accepted: %s %s", request.method, request.path)
            else:
                try:
                    reason = json.loads(response.body)["message"].splitlines()[0]
                except (TypeError, ValueError, KeyError, AttributeError, IndexError):
                    reason = response.reason
                log.warning("change refused (%s): %s %s: %s", response.status, request.method, request.path, reason)
        if isinstance(response, web.HTTPException):
            raise response
        return response

    def endpoint_or_404(request: web.Request) -> Endpoint:
        name = request.match_info["endpoint"]
        if name not in runtime.endpoints:
            raise web.HTTPNotFound(
                text=json.dumps({"message": f"endpoint {name[:100]!r} not found", "problems": []}),
                content_type="application/json")
        return runtime.endpoints[name]

    async def json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"message": "the body must be a JSON object", "problems": []}),
                                     content_type="application/json") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text=json.dumps({"message": "the body must be a JSON object", "problems": []}),
                                     content_type="application/json")
        return body

    async def get_status(_: web.Request) -> web.Response:
        return web.json_response({"endpoints": {n: e.status() for n, e in runtime.endpoints.items()}})

    async def shutdown(_: web.Request) -> web.Response:
        runtime.stopping.set()
        return web.json_response({"ok": True})

    async def put_endpoint(request: web.Request) -> web.Response:
        name = request.match_info["endpoint"]
        body = await json_body(request)
        problems = rules.name_problems("name", name, "endpoint name")
        problems += rules.auth_mode_problems("authMode", body.get("authMode", "key"))
        if problems:
            return problem_response(400, f"endpoint {name[:100]!r} refused", problems)
        async with runtime.lock:
            endpoint = runtime.endpoints.get(name)
            if endpoint is None:
                record = {"authMode": body.get("authMode", "key"), "port": free_port(),
                          "keys": {"primary": secrets.token_urlsafe(32), "secondary": secrets.token_urlsafe(32)}}
                endpoint = runtime.new_endpoint(name, record)
                await endpoint.serve(free_port)
                runtime.endpoints[name] = endpoint
                try:
                    runtime.persist()
                except StateWriteFailed as err:
                    del runtime.endpoints[name]
                    await endpoint.close()
                    return not_recorded(err)
                runtime.metrics.forget(name)
                return web.json_response({**endpoint.status(), "created": True})
            else:
                previous = endpoint.auth_mode
                endpoint.auth_mode = body.get("authMode", endpoint.auth_mode)
                try:
                    runtime.persist()
                except StateWriteFailed as err:
                    endpoint.auth_mode = previous
                    return not_recorded(err)
        return web.json_response(endpoint.status())

    async def delete_endpoint(request: web.Request) -> web.Response:
        endpoint = endpoint_or_404(request)
        async with runtime.lock:
            del runtime.endpoints[endpoint.name]
            try:
                runtime.persist()
            except StateWriteFailed as err:
                runtime.endpoints[endpoint.name] = endpoint
                return not_recorded(err)
            endpoint.routing = Routing({}, {})
            await asyncio.gather(*(d.drain_and_stop() for d in endpoint.deployments.values()))
            await endpoint.close()
            runtime.metrics.forget(endpoint.name)
            runtime.registry.write()
            runtime.collect_snapshots()
        return web.json_response({"deleted": endpoint.name})

    async def get_keys(request: web.Request) -> web.Response:
        endpoint = endpoint_or_404(request)
        return web.json_response({"primaryKey": endpoint.keys["primary"], "secondaryKey": endpoint.keys["secondary"]})

    async def put_deployment(request: web.Request) -> web.Response:
        endpoint = endpoint_or_404(request)
        name = request.match_info["deployment"]
        spec = await json_body(request)
        problems = deployment_problems(name, spec)
        if problems:
            return problem_response(400, f"deployment {name[:100]!r} refused", problems)
        key, this = (endpoint.name, name), asyncio.current_task()
        runtime.changing[key] = this  # a cancel request (the apply was interrupted) cancels this task
        try:
            return await change_deployment(endpoint, name, spec)
        except asyncio.CancelledError:
            if this not in runtime.cancel_requested:
                raise  # the runtime is stopping
            log.info("change of %s/%s cancelled; what it had started was stopped", endpoint.name, name)
            running = endpoint.deployments.get(name)
            return problem_response(
                409, f"deployment {name!r} of endpoint {endpoint.name!r}: cancelled; what it had started was stopped"
                + (", the running version serves on" if running is not None and running.state == "ready" else ""),
                cancelled=True)
        finally:
            runtime.cancel_requested.discard(this)
            if runtime.changing.get(key) is this:
                del runtime.changing[key]

    async def change_deployment(endpoint: Endpoint, name: str, spec: dict[str, Any]) -> web.Response:
        async with runtime.lock:
            try:
                spec = await asyncio.to_thread(snapshots.pin, runtime.root, spec)
            except snapshots.SnapshotFailed as err:
                return problem_response(STORAGE_FAILED if err.no_space else 409,
                                        f"deployment {name!r} refused, nothing changed: {err}")
            current = endpoint.deployments.get(name)
            try:
                if current is not None and current.state == "ready" and _same_but_count(current.spec, spec):
                    previous_count = len(current.workers)
                    await current.scale(int(spec["instanceCount"]))
                    try:
                        runtime.persist()
                    except StateWriteFailed as err:
                        await current.scale(previous_count)
                        return not_recorded(err)
                else:
                    # New, failed before, or changed code/model/settings: a fresh set of instances
                    # takes over only once healthy; the old set drains afterwards.
                    replacement = runtime.new_deployment(endpoint.name, name, spec)
                    if current is None:
                        runtime.metrics.forget(endpoint.name, name)  # a re-created deployment counts from zero
                    await replacement.start()
                    endpoint.deployments[name] = replacement
                    try:
                        runtime.persist()
                    except StateWriteFailed as err:
                        if current is None:
                            del endpoint.deployments[name]
                        else:
                            endpoint.deployments[name] = current
                        await replacement.drain_and_stop()
                        runtime.registry.write()
                        return not_recorded(err)
                    if current is not None:
                        runtime.background(runtime.retire(current))
            except DeploymentFailed as err:
                runtime.registry.write()
                runtime.collect_snapshots()
                return problem_response(422, str(err), logTail=err.log_tail)
            except asyncio.CancelledError:  # the instances being started were stopped (Deployment)
                runtime.registry.write()
                runtime.collect_snapshots()
                raise
            return web.json_response(endpoint.deployments[name].status())

    async def cancel_change(request: web.Request) -> web.Response:
        """Stop a deployment change in progress (the apply that asked for it was interrupted): what it
        started is stopped, a running version serves on. Answers once the change has cleaned up."""
        change = runtime.changing.get((request.match_info["endpoint"], request.match_info["deployment"]))
        if change is None:
            return web.json_response({"cancelled": False})
        runtime.cancel_requested.add(change)
        change.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait({change}, timeout=60)
        return web.json_response({"cancelled": True})

    async def delete_deployment(request: web.Request) -> web.Response:
        endpoint = endpoint_or_404(request)
        name = request.match_info["deployment"]
        async with runtime.lock:
            deployment = endpoint.deployments.get(name)
            if deployment is None:
                return problem_response(404, f"deployment {name[:100]!r} not found on endpoint {endpoint.name!r}")
            live, mirror = endpoint.routing.traffic.get(name, 0), endpoint.routing.mirror_traffic.get(name, 0)
            if live or mirror:
                return problem_response(
                    409, f"deployment {name!r} still has {live}% live and {mirror}% mirror traffic; "
                    "set its traffic to 0 first (Azure refuses this too)")
            del endpoint.deployments[name]  # new pinned requests get 404 from here on
            try:
                runtime.persist()
            except StateWriteFailed as err:
                endpoint.deployments[name] = deployment
                return not_recorded(err)
            runtime.draining.add(deployment)
            try:
                await deployment.drain_and_stop()
            finally:
                runtime.draining.discard(deployment)
                runtime.registry.write()
            runtime.metrics.forget(endpoint.name, name)
            runtime.collect_snapshots()
        return web.json_response({"deleted": name})

    async def put_traffic(request: web.Request) -> web.Response:
        endpoint = endpoint_or_404(request)
        body = await json_body(request)
        traffic, mirror = body.get("traffic") or {}, body.get("mirrorTraffic") or {}
        async with runtime.lock:
            problems = rules.traffic_problems(traffic, mirror, endpoint.deployments)
            for name, share in [*traffic.items(), *mirror.items()]:
                deployment = endpoint.deployments.get(name)
                if share and deployment is not None and deployment.state != "ready":
                    problems.append(rules.Problem(name, f"deployment {name!r} is {deployment.state}, not ready for traffic"))
            if problems:
                return problem_response(400, "traffic refused; nothing changed", problems)
            previous = endpoint.routing
            endpoint.routing = Routing({k: int(v) for k, v in traffic.items()}, {k: int(v) for k, v in mirror.items()})
            try:
                runtime.persist()
            except StateWriteFailed as err:
                endpoint.routing = previous
                return not_recorded(err)
        return web.json_response(endpoint.status())

    async def put_comparison(request: web.Request) -> web.Response:
        """What to compare of this endpoint's answers (pairing.py); `{"off": true}` stops comparing."""
        endpoint = endpoint_or_404(request)
        body = await json_body(request)
        unknown = sorted(body.keys() - {"comparePath", "outputTolerance", "off"})
        if unknown:
            return problem_response(400, f"unknown comparison setting(s) {', '.join(unknown)}; "
                                         "allowed: comparePath, outputTolerance, off")
        if "off" in body and body["off"] is not True:
            return problem_response(400, f"off must be true (to stop comparing), got {body['off']!r}")
        if body.get("off") is True:
            runtime.metrics.answers.configure(endpoint.name, None)
            return web.json_response({"settings": None})
        try:
            settings = answer_compare.settings_from(body.get("comparePath"), body.get("outputTolerance"))
        except answer_compare.CompareError as err:
            return problem_response(400, f"comparison refused; nothing changed: {err}")
        runtime.metrics.answers.configure(endpoint.name, settings)
        return web.json_response({"settings": settings.as_json()})

    async def get_answers(request: web.Request) -> web.Response:
        endpoint = endpoint_or_404(request)
        since = request.query.get("since", "0")
        if not (since.isascii() and since.isdigit()):
            return problem_response(400, "since must be a whole number (the `next` of the previous reading)")
        return web.json_response(runtime.metrics.answers.snapshot(endpoint.name, int(since)))

    async def get_logs(request: web.Request) -> web.Response:
        endpoint = endpoint_or_404(request)
        name = request.match_info["deployment"]
        try:
            lines = int(request.query.get("lines", "50"))
        except ValueError:
            return problem_response(400, "lines must be a whole number")
        deployment = endpoint.deployments.get(name)
        if deployment is None:
            return problem_response(404, f"deployment {name[:100]!r} not found on endpoint {endpoint.name!r}")
        parts = [f"==> {w.log_path.name} <==\n{log_tail(w.log_path, lines)}" for w in deployment.workers]
        return web.Response(text="\n".join(parts) + "\n")

    app = web.Application(middlewares=[audit, only_the_owner])
    r = app.router
    r.add_get("/health", lambda _: web.json_response({"ok": True, "pid": os.getpid()}))
    r.add_get("/status", get_status)
    r.add_get("/metrics", lambda _: web.Response(text=runtime.metrics.prometheus(), content_type="text/plain"))
    r.add_post("/shutdown", shutdown)
    r.add_put("/endpoints/{endpoint}", put_endpoint)
    r.add_delete("/endpoints/{endpoint}", delete_endpoint)
    r.add_get("/endpoints/{endpoint}/keys", get_keys)
    r.add_put("/endpoints/{endpoint}/traffic", put_traffic)
    r.add_put("/endpoints/{endpoint}/deployments/{deployment}", put_deployment)
    r.add_delete("/endpoints/{endpoint}/deployments/{deployment}", delete_deployment)
    r.add_post("/endpoints/{endpoint}/deployments/{deployment}/cancel", cancel_change)
    r.add_get("/endpoints/{endpoint}/deployments/{deployment}/logs", get_logs)
    r.add_put("/endpoints/{endpoint}/comparison", put_comparison)
    r.add_get("/endpoints/{endpoint}/answers", get_answers)
    return app
