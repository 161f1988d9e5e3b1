"""One endpoint's data plane: the scoring URI, key auth, traffic split, mirroring, forwarding.

aiohttp's low-level server: the scoring URI is one route, and the application layers (router,
middlewares) are measurable cost per request. Its limits are set where that server honours them:
connection options on each RequestHandler (keep-alive, no access log: requests carry keys, no
automatic decompression) and the body limit on each request (the request factory).

Order per request: the key is checked before a byte of the body is read or decompressed; bad header
encodings answer 400/401, never 500. A connection that sends nothing (idle, or stuck inside its
headers) for the keep-alive timeout is closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mlcanary.components import rules
from mlcanary.local_runtime.metrics import Metrics
from mlcanary.local_runtime.protocol import PIN_HEADER
from mlcanary.local_runtime.routing import Routing
from mlcanary.local_runtime.workers import Deployment

MAX_BODY_BYTES = 100 * 1024 * 1024
CLIENT_KEEPALIVE_ENV = "MLCANARY_CLIENT_KEEPALIVE_S"  # idle / partial-request connections close after this
DEFAULT_CLIENT_KEEPALIVE_S = 75.0
NO_INSTANCE_WAIT_S = 0.05
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


def as_bytes(header: str) -> bytes:
    """A header value as the client sent it (aiohttp decodes with surrogateescape)."""
    return header.encode("utf-8", "surrogateescape")


def decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding, refused past `limit` bytes (no gzip bomb expands)."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[encoding]
    inflater = zlib.decompressobj(wbits)
    result = inflater.decompress(body, limit + 1)
    if len(result) > limit or inflater.unconsumed_tail:
        raise OverflowError
    return result


class Endpoint:
    def __init__(self, name: str, record: dict[str, Any], metrics: Metrics, background: Callable[[Any], None]):
        self.name = name
        self.auth_mode = record["authMode"]
        self.keys = record["keys"]
        self.port = record["port"]
        self.metrics = metrics
        self.background = background
        self.deployments: dict[str, Deployment] = {}
        self.routing = Routing({}, {})
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self._key_bytes = [k.encode() for k in self.keys.values()]

    @property
    def scoring_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/score"

    async def serve(self, free_port: Callable[[], int]) -> None:
        loop = asyncio.get_running_loop()

        def request_factory(message, payload, protocol, writer, task) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY_BYTES)

        self._server = web.Server(
            self.handle, request_factory=request_factory,
            access_log=None, keepalive_timeout=client_keepalive_s(), auto_decompress=False,
        )
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
            return problem_response(404, f"no such path {request.path[:100]!r}; the scoring URI is {self.scoring_uri}")
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

    async def read_body(self, request: web.BaseRequest) -> bytes | web.Response:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return problem_response(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            async with asyncio.timeout(client_keepalive_s()):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return problem_response(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        except asyncio.TimeoutError:
            return problem_response(408, "the request body did not arrive in time")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return body
        try:
            return decompressed(body, encoding, MAX_BODY_BYTES)
        except KeyError:
            return problem_response(415, "Content-Encoding must be gzip, deflate or identity")
        except OverflowError:
            return problem_response(413, f"decompressed request body larger than {MAX_BODY_BYTES} bytes")
        except zlib.error:
            return problem_response(400, f"request body is not valid {encoding} data")

    async def score(self, request: web.BaseRequest) -> web.Response:
        started = time.perf_counter()
        if not self.authorized(request):
            return problem_response(401, "Unauthorized: send `Authorization: Bearer <key>` (see `mlcanary local keys`)")
        content_type_text = request.headers.get("Content-Type", "application/json")
        if not content_type_text.isascii() or not content_type_text.isprintable():
            return problem_response(400, "Content-Type must be printable ASCII")
        content_type = content_type_text.encode()
        body = await self.read_body(request)
        if isinstance(body, web.Response):
            return body
        # From choosing a deployment to `forward` counting the request as in flight there must be
        # no await, or a drain could stop that deployment in between.
        pinned = request.headers.get(PIN_HEADER)
        routing = self.routing  # one consistent map for this request, whatever changes meanwhile
        mirror_to = None
        if pinned:
            deployment = self.deployments.get(pinned)
            if deployment is None or deployment.state not in ("ready", "failed"):
                return problem_response(404, f"deployment {pinned[:100]!r} not found on endpoint {self.name!r}")
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
            self.background(self.mirror(self.deployments[mirror_to], body, content_type, deployment.name, live_answer))
        answer = None
        try:
            status, payload, headers = await forward(deployment, body, content_type)
            answer = (status, payload)
        finally:  # the mirror's comparison waits for this, also when the client went away
            if live_answer is not None:
                live_answer.set_result(answer)
        self.metrics.of(self.name, deployment.name).observe(status, time.perf_counter() - started)
        if answers and not pinned:  # after this answer is sent: the output number for the distributions
            asyncio.get_running_loop().call_soon(answers.observe_output, self.name, deployment.name, status, payload)
        return web.Response(status=status, body=payload, headers={**headers, PIN_HEADER: deployment.name})

    async def mirror(self, deployment: Deployment, body: bytes, content_type: bytes, live: str = "",
                     live_answer: asyncio.Future | None = None) -> None:
        started = time.perf_counter()
        status, payload, _ = await forward(deployment, body, content_type)
        self.metrics.of(self.name, deployment.name).observe(status, time.perf_counter() - started, mirrored=True)
        if live_answer is not None:  # compared only once the live answer is out (pairing.py)
            await self.metrics.answers.pair(self.name, live, deployment.name, live_answer, status, payload, body)

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


def _error(status: int, message: str) -> tuple[int, bytes, dict]:
    return status, json.dumps({"message": message}).encode(), dict(JSON)


async def forward(deployment: Deployment, body: bytes, content_type: bytes) -> tuple[int, bytes, dict]:
    """Send one request to an instance in rotation; Azure's statuses for what goes wrong.

    An instance that refuses or resets the connection leaves the rotation (supervision probes it
    back) and another instance takes the request: scoring is stateless. While a ready deployment
    has no instance in rotation (a worker restarting), the request waits for one, within its
    request timeout.
    """
    if deployment.state != "ready":
        detail = f": {deployment.error.splitlines()[0]}" if deployment.error else ""
        return _error(503, f"deployment {deployment.name!r} is {deployment.state}{detail}")
    timeout_s = deployment.request_timeout_s
    deadline = time.monotonic() + timeout_s
    deployment.inflight += 1
    try:
        while True:
            worker = deployment.pick()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if worker is None:
                    return _error(503, f"deployment {deployment.name!r} has no healthy instance")
                return _error(408, f"request timed out after {int(timeout_s * 1000)} ms (requestTimeoutMs)")
            if worker is None:
                if deployment.state != "ready" or not any(w.alive() for w in deployment.workers):
                    return _error(503, f"deployment {deployment.name!r} has no healthy instance")
                await asyncio.sleep(NO_INSTANCE_WAIT_S)
                continue
            try:
                async with asyncio.timeout(remaining):  # no extra task, unlike wait_for
                    status, answer_headers, payload = await worker.upstream.post(body, content_type)
            except asyncio.TimeoutError:  # before OSError: TimeoutError is one
                return _error(408, f"request timed out after {int(timeout_s * 1000)} ms (requestTimeoutMs)")
            except (ConnectionError, OSError):
                worker.take_out()
                continue
            headers = {"Content-Type": answer_headers.get("content-type", "application/json")}
            if status == 200:
                return 200, payload, headers
            # Azure: the model container answered with an error -> 424, with its status.
            headers["ms-azureml-model-error-statuscode"] = str(status)
            headers["ms-azureml-model-error-reason"] = "model_error"
            return 424, payload, headers
    finally:
        deployment.inflight -= 1
