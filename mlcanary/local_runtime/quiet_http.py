"""aiohttp's low-level server, quiet: nothing a client sends is logged or echoed back.

aiohttp answers a request it cannot parse with the parser's message (which quotes the offending
header line, an Authorization header included) and logs it with a traceback, once per request: an
unauthenticated client could fill runtime.log with its own text and rotate the audit lines out.
Here a malformed request is answered with a fixed text per status and counted (`on_malformed`);
an error inside a handler is counted too, and noted in the log at most once a minute, by its type only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("mlcanary.local")

NOTE_EVERY_S = 60.0


def fixed_text(status: int) -> str:
    if status == 500:
        return "500 Internal Server Error: the router failed to handle the request (see /metrics)"
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return f"{status} {phrase}: the request is not valid HTTP/1.1"


class FailureNote:
    """Handler failures: counted; one log line per NOTE_EVERY_S at most, naming the exception type only."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0
        self._noted_at = -NOTE_EVERY_S
        self._since_note = 0

    def failed(self, exc: BaseException | None) -> None:
        self.count += 1
        self._since_note += 1
        now = time.monotonic()
        if now - self._noted_at >= NOTE_EVERY_S:
            log.error("%s: %d request(s) failed inside the router since the last note (latest: %s); request "
                      "data is not logged", self.what, self._since_note, type(exc).__name__ if exc else "unknown")
            self._noted_at, self._since_note = now, 0


class _QuietRequestHandler(RequestHandler):
    def __init__(self, manager: QuietServer, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._quiet = manager

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            self._quiet.failures.failed(exc)
        else:
            self._quiet.on_malformed()
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; the connection is closed instead")
        response = web.Response(status=status, text=fixed_text(status), content_type="text/plain")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        self._quiet.failures.failed(exc if isinstance(exc, BaseException) else None)


class QuietServer(web.Server):
    def __init__(self, handler, *, on_malformed: Callable[[], None], what: str, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.on_malformed = on_malformed
        self.failures = FailureNote(what)

    def __call__(self) -> RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)
