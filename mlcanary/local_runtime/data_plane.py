"""One endpoint's data plane: the scoring URI, key auth, traffic split, mirroring, forwarding.

aiohttp's low-level server (quiet_http.py: nothing a client sends is logged or echoed): the scoring
URI is one route, and the application layers (router, middlewares) are measurable cost per request.
Its limits are set where that server honours them: connection options on each RequestHandler
(keep-alive, no access log: requests carry keys, no automatic decompression, the handler cancelled
when its client goes away) and the body limit on each request (the request factory).

Order per request: the key is checked before a byte of the body is read or decompressed; bad header
encodings answer 400/401, never 500. A connection that sends nothing (idle, or stuck inside its
headers) for the keep-alive timeout is closed. Bodies are read in steps and charged to the router's
body budget (bodies.py). A request the router gives up on (its timeout, its client gone) closes its
upstream connection at once and frees its instance slot (forward).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mlcanary.components import rules
from mlcanary.local_runtime import bodies
from mlcanary.local_runtime.bodies import MAX_BODY_BYTES, BodyBudget, Held
from mlcanary.local_runtime.metrics import MIRROR_SHED_STATUS, Metrics
from mlcanary.local_runtime.protocol import PIN_HEADER
from mlcanary.local_runtime.quiet_http import QuietServer
from mlcanary.local_runtime.routing import Routing
from mlcanary.local_runtime.workers import Deployment

CLIENT_KEEPALIVE_ENV = "MLCANARY_CLIENT_KEEPALIVE_S"  # idle / partial-request connections close after this
DEFAULT_CLIENT_KEEPALIVE_S = 75.0
NO_INSTANCE_WAIT_S = 0.05
# A mirror copy waits this long at most for a free slot, then is shed: in the background, so no client
# waits; long enough that a copy arriving while the previous one finishes is still compared.
MIRROR_SLOT_WAIT_S = 0.5
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn; asyncio's default, 100, resets bursts
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client_keepalive_s() -> float:
    return float(os.environ.get(CLIENT_KEEPALIVE_ENV) or DEFAULT_CLIENT_KEEPALIVE_S)


def problem_response(status: int, message: str, problems: list[rules.Problem] | None = None, **extra) -> web.Response:
    body = {"message": message, "problems": [str(p) for p in problems or []], **extra}
    return web.json_response(body, status=status)


def refused_unread(status: int, message: str, **headers: str) -> web.Response:
    """An answer given before the body was read: the connection closes rather than read what is left."""
    response = problem_response(status, message)
    response.headers.update(headers)
    response.force_close()
    return response


def as_bytes(header: str) -> bytes:
    """A header value as the client sent it (aiohttp decodes with surrogateescape)."""
    return header.encode("utf-8", "surrogateescape")


class Endpoint:
    def __init__(self, name: str, record: dict[str, Any], metrics: Metrics, background: Callable[[Any], None],
                 body_budget: BodyBudget | None = None):
        self.name = name
        self.auth_mode = record["authMode"]
        self.keys = record["keys"]
        self.port = record["port"]
        self.metrics = metrics
        self.background = background
        self.body_budget = body_budget or BodyBudget(bodies.budget_from_environment())
        self.deployments: dict[str, Deployment] = {}
        self.routing = Routing({}, {})
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self._key_bytes = [k.encode() for k in self.keys.values()]
        self.client_keepalive_s = client_keepalive_s()

    @property
    def scoring_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/score"

    async def serve(self, free_port: Callable[[], int]) -> None:
        loop = asyncio.get_running_loop()

        def request_factory(message, payload, protocol, writer, task) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY_BYTES)

        self._server = QuietServer(
            self.handle, request_factory=request_factory, handler_cancellation=True,
            on_malformed=lambda: self.metrics.malformed_request(self.name), what=f"endpoint {self.name}",
            access_log=None, keepalive_timeout=self.client_keepalive_s, auto_decompress=False,
        )
        try:
            self._listener = await loop.create_server(self._server, "127.0.0.1", self.port, backlog=LISTEN_BACKLOG)
        except OSError:  # the remembered port was taken meanwhile
            self.port = free_port()
            self._listener = await loop.create_server(self._server, "127.0.0.1", self.port, backlog=LISTEN_BACKLOG)

    async def close(self) -> None:
        if self._listener:
            self._listener.close()
            await self._server.shutdown(5)

    async def handle(self, request: web.BaseRequest) -> web.Response:
        if request.path != "/score":
            return problem_response(404, f"no such path; the scoring URI is {self.scoring_uri}")
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
        scheme, _, token = as_bytes(request.headers.get("Authorization", "")).partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        return any(secrets.compare_digest(token, key) for key in self._key_bytes)

    async def read_body(self, request: web.BaseRequest, held: Held) -> bytes | web.Response:
        """The body, decompressed, charged to `held`; or the answer that refuses it."""
        length = request.content_length
        if (length or 0) > MAX_BODY_BYTES:
            return refused_unread(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            if length is not None:
                held.charge(length)
            if length is not None and request.content.is_eof():  # all of it arrived with the headers
                body = request.content.read_nowait()
            else:
                async with asyncio.timeout(self.client_keepalive_s):
                    body = await request.read() if length is not None else await _read_in_steps(request, held)
        except bodies.OverBudget:
            return self._over_budget()
        except (web.HTTPRequestEntityTooLarge, bodies.TooLarge):
            return refused_unread(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        except asyncio.TimeoutError:
            return refused_unread(408, "the request body did not arrive in time")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return body
        try:
            return await bodies.decompress_off_loop(body, encoding, held)
        except bodies.UnknownEncoding:
            return problem_response(415, "Content-Encoding must be gzip, deflate or identity")
        except bodies.TooLarge:
            return problem_response(413, f"decompressed request body larger than {MAX_BODY_BYTES} bytes")
        except bodies.OverBudget:
            return self._over_budget()
        except bodies.NotCompressedData as err:
            return problem_response(400, f"request body is not valid {encoding} data: {err}")

    def _over_budget(self) -> web.Response:
        mib = self.body_budget.limit // (1024 * 1024)
        return refused_unread(503, f"the router holds {mib} MiB of request bodies already "
                              f"(${bodies.BODIES_IN_FLIGHT_ENV}); retry shortly", **{"Retry-After": "1"})

    async def score(self, request: web.BaseRequest) -> web.Response:
        started = time.perf_counter()
        if not self.authorized(request):
            return problem_response(401, "Unauthorized: send `Authorization: Bearer <key>` (see `mlcanary local keys`)")
        content_type_text = request.headers.get("Content-Type", "application/json")
        if not content_type_text.isascii() or not content_type_text.isprintable():
            return problem_response(400, "Content-Type must be printable ASCII")
        content_type = content_type_text.encode()
        held = Held(self.body_budget)
        try:
            body = await self.read_body(request, held)
            if isinstance(body, web.Response):
                return body
            return await self._route(body, content_type, request.headers.get(PIN_HEADER), held, started)
        finally:
            held.done()

    async def _route(self, body: bytes, content_type: bytes, pinned: str | None, held: Held,
                     started: float) -> web.Response:
        # From choosing a deployment to `forward` counting the request as in flight there must be
        # no await, or a drain could stop that deployment in between.
        routing = self.routing  # one consistent map for this request, whatever changes meanwhile
        mirror_to = None
        if pinned:
            deployment = self.deployments.get(pinned)
            if deployment is None or deployment.state not in ("ready", "failed"):
                return problem_response(404, f"the deployment named in the {PIN_HEADER} header is not one of "
                                        f"endpoint {self.name!r}: {', '.join(sorted(self.deployments)) or 'none'}")
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
        answers = self.metrics.answers if self.metrics.answers.settings_of(self.name) else None
        live_answer = asyncio.get_running_loop().create_future() if answers and mirror_to else None
        if mirror_to and mirror_to in self.deployments:
            self._mirror(self.deployments[mirror_to], body, content_type, held, deployment.name, live_answer)
        answer = None
        try:
            status, payload, headers = await forward(deployment, body, content_type)
            answer = (status, payload)
        finally:  # the mirror's comparison waits for this, also when the client went away
            if live_answer is not None:
                live_answer.set_result(answer)
        self.metrics.of(self.name, deployment.name).observe(status, time.perf_counter() - started, pinned=bool(pinned))
        if answers and not pinned:  # after this answer is sent: the output number for the distributions
            asyncio.get_running_loop().call_soon(answers.observe_output, self.name, deployment.name, status, payload)
        return web.Response(status=status, body=payload, headers={**headers, PIN_HEADER: deployment.name})

    def _mirror(self, deployment: Deployment, body: bytes, content_type: bytes, held: Held, live: str = "",
                live_answer: asyncio.Future | None = None) -> None:
        """Send a copy in the background. Copies are shed first: none while the body budget is half used
        (forward sheds them too when no instance slot is free at once)."""
        if self.body_budget.used * 2 > self.body_budget.limit:
            self.metrics.of(self.name, deployment.name).observe(MIRROR_SHED_STATUS, 0.0, mirrored=True)
            return
        self.background(self.mirror(deployment, body, content_type, held.share(), live, live_answer))

    async def mirror(self, deployment: Deployment, body: bytes, content_type: bytes, held: Held, live: str = "",
                     live_answer: asyncio.Future | None = None) -> None:
        started = time.perf_counter()
        try:
            status, payload, _ = await forward(deployment, body, content_type, mirrored=True)
            self.metrics.of(self.name, deployment.name).observe(status, time.perf_counter() - started, mirrored=True)
            if live_answer is not None:  # compared once the live answer is out; the body stays held till then
                await self.metrics.answers.pair(self.name, live, deployment.name, live_answer, status, payload, body)
        finally:
            held.done()

    def status(self) -> dict[str, Any]:
        return {
            "scoringUri": self.scoring_uri,
            "authMode": self.auth_mode,
            "traffic": self.routing.traffic,
            "mirrorTraffic": self.routing.mirror_traffic,
            "deployments": {
                n: {**d.status(), "metrics": self.metrics.of(self.name, n).summary()}
                for n, d in self.deployments.items()
            },
        }


async def _read_in_steps(request: web.BaseRequest, held: Held) -> bytes:
    """A body without Content-Length (chunked), each piece charged as it arrives."""
    parts, size = [], 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise bodies.TooLarge
        held.charge(len(chunk))
        parts.append(chunk)
    return b"".join(parts)


def _error(status: int, message: str) -> tuple[int, bytes, dict]:
    return status, json.dumps({"message": message}).encode(), dict(JSON)


def _timed_out(deployment: Deployment) -> tuple[int, bytes, dict]:
    return _error(408, f"request timed out after {int(deployment.request_timeout_s * 1000)} ms (requestTimeoutMs)")


def _too_many(deployment: Deployment) -> tuple[int, bytes, dict]:
    # Azure's words for the same refusal (how-to-troubleshoot-online-endpoints: 429).
    return _error(429, f"Too many pending requests: deployment {deployment.name!r} takes "
                  f"{deployment.max_concurrent} request(s) at once per instance (maxConcurrentRequestsPerInstance) "
                  f"and none was free within {int(deployment.queue_wait_s * 1000)} ms (maxQueueWaitMs)")


def _shed(deployment: Deployment) -> tuple[int, bytes, dict]:
    return _error(MIRROR_SHED_STATUS, f"mirror copy shed: every instance of deployment {deployment.name!r} has its "
                  f"{deployment.max_concurrent} request slot(s) taken (maxConcurrentRequestsPerInstance)")


async def forward(deployment: Deployment, body: bytes, content_type: bytes,
                  mirrored: bool = False) -> tuple[int, bytes, dict]:
    """Send one request to an instance with a free slot; Azure's statuses for what goes wrong.

    Each instance takes at most maxConcurrentRequestsPerInstance requests at once; a request waits
    for a free slot within its request timeout (408), or at most maxQueueWaitMs when that is set (then
    429, as Azure answers); a mirror copy waits at most MIRROR_SLOT_WAIT_S, then is shed (mirror copies
    go first). An
    instance that refuses or resets the connection leaves the rotation (supervision probes it back)
    and another instance takes the request: scoring is stateless. While a ready deployment has no instance in rotation (workers restarting), the request
    waits for one within its request timeout. Whenever this gives up (timeout, or the client went
    away and the task is cancelled), the upstream connection is dropped and the slot freed.
    """
    if deployment.state != "ready":
        detail = f": {deployment.error.splitlines()[0]}" if deployment.error else ""
        return _error(503, f"deployment {deployment.name!r} is {deployment.state}{detail}")
    began = time.monotonic()
    deadline = began + deployment.request_timeout_s
    queue_wait_s = deployment.queue_wait_s
    queue_deadline = deadline if queue_wait_s is None else min(deadline, began + queue_wait_s)
    deployment.inflight += 1
    try:
        while True:
            worker = deployment.take_slot()
            if worker is None:
                now = time.monotonic()
                if mirrored and now - began >= MIRROR_SLOT_WAIT_S:
                    return _shed(deployment)
                if not deployment.in_rotation():
                    if now >= deadline or deployment.state != "ready":
                        return _error(503, f"deployment {deployment.name!r} has no healthy instance")
                    await asyncio.sleep(NO_INSTANCE_WAIT_S)
                elif now >= queue_deadline:
                    return _timed_out(deployment) if queue_wait_s is None or now >= deadline else _too_many(deployment)
                else:
                    await deployment.slot_freed(min(queue_deadline, began + MIRROR_SLOT_WAIT_S) - now if mirrored
                                                else queue_deadline - now)
                continue
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _timed_out(deployment)
                status, answer_headers, payload = await worker.upstream.post(body, content_type, remaining)
            except TimeoutError:  # before OSError: TimeoutError is one
                return _timed_out(deployment)
            except (ConnectionError, OSError):
                worker.take_out()
                continue
            finally:
                deployment.release(worker)
            headers = {"Content-Type": answer_headers.get("content-type", "application/json")}
            if status == 200:
                return 200, payload, headers
            # Azure: the model container answered with an error -> 424, with its status.
            headers["ms-azureml-model-error-statuscode"] = str(status)
            headers["ms-azureml-model-error-reason"] = "model_error"
            return 424, payload, headers
    finally:
        deployment.inflight -= 1
