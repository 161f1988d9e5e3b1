"""A minimal HTTP/1.1 client for one worker on its Unix socket, with kept-alive connections.

The router sends one kind of request (POST /score) to servers it starts itself (gunicorn gthread
workers keep connections alive), so a general HTTP client's per-request machinery is cost without
benefit on the hot path. Each connection is an asyncio protocol that parses the answer as its bytes
arrive (status line, headers, a Content-Length or chunked body) and wakes the request once, when the
answer is complete: no stream reader, no await per header line. The request's head and body leave in
one write (one system call, no copy of a large body where the loop writes buffers together).

A kept-alive connection may have been closed by the worker meanwhile (gunicorn's keep-alive ends
idle connections). Connections idle for nearly that long are not reused, one the worker closed is
known at once (the protocol sees its end), and a reused connection found closed before any byte of
the answer arrived is retried once on a fresh connection: the request was never delivered, so
nothing is scored twice and the client never sees the error.

A request the router gives up on (its timeout, its client gone: the task is cancelled) aborts its
connection: what was still buffered for the worker is dropped and the socket closed at once, rather
than flushed to a worker that may take minutes to read it.
"""

from __future__ import annotations

import asyncio
import time

DEFAULT_KEEPALIVE_S = 30.0  # gunicorn --keep-alive of the workers the runtime starts
MAX_HEAD_BYTES = 64 * 1024  # an answer's status line and headers (a stream reader's line limit before)
_NO_BODY_STATUSES = (204, 304)  # and 1xx: never a body (RFC 9112 6.3)


class UpstreamClosed(ConnectionError):
    """The worker closed or reset the connection before a complete answer."""

    def __init__(self, message: str, answered: bool = False):
        super().__init__(message)
        self.answered = answered  # some of the answer arrived: the request was delivered


class _Connection(asyncio.Protocol):
    """One connection to the worker: at most one request at a time, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buffer = bytearray()
        self._answer: asyncio.Future | None = None
        self._head: tuple[int, dict[str, str], int] | None = None  # status, headers, where the body starts
        self._chunks: list[bytes] = []
        self._at = 0  # chunked: where the next chunk's size line starts

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._answer is None or self._answer.done():
            self.transport.abort()  # bytes nobody asked for: this connection is not reused
            return
        try:
            answer = self._parse()
        except ValueError as err:
            self.transport.abort()
            self._fail(UpstreamClosed(f"the worker's answer is not HTTP/1.1: {err}", answered=True))
            return
        if answer is not None:
            self._answer.set_result(answer)

    def eof_received(self) -> bool:
        self.closed = True
        return False  # the transport closes; connection_lost says what that means for a pending answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is None or self._answer.done():
            return
        head = self._head
        if exc is None and head is not None and _delimited_by_close(head[1]):
            status, headers, start = head
            self._answer.set_result((status, {**headers, "connection": "close"}, bytes(self._buffer[start:])))
            return
        reason = str(exc) if exc else "connection closed before a complete answer"
        self._fail(UpstreamClosed(reason or "connection reset", answered=bool(self._buffer)))

    # --- one request ------------------------------------------------------------------------------

    async def exchange(self, parts: tuple[bytes, ...], deadline: float) -> tuple[int, dict[str, str], bytes]:
        """The answer to `parts`; TimeoutError at `deadline` (the loop's clock): a timer of the connection's
        own, lighter than a timeout context around the await."""
        if self.closed:
            raise UpstreamClosed("connection closed before the request was sent")
        self._buffer.clear()
        self._head, self._chunks, self._at = None, [], 0
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        timer = loop.call_at(deadline, self._time_out)
        try:
            self.transport.writelines(parts)
            return await self._answer
        except BaseException:
            self.transport.abort()  # half-used connections never go back to the pool, nor linger
            raise
        finally:
            timer.cancel()
            self._answer = None

    def _time_out(self) -> None:
        self._fail(TimeoutError("the worker did not answer in time"))

    def _fail(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    def _parse(self) -> tuple[int, dict[str, str], bytes] | None:
        """The complete answer in the buffer, or None while it is still arriving; ValueError if malformed."""
        buffer = self._buffer
        if self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ValueError(f"status line and headers longer than {MAX_HEAD_BYTES} bytes")
                return None
            self._head = _parse_head(bytes(buffer[:end]), end + 4)
            self._at = end + 4
        status, headers, start = self._head
        if status < 200 or status in _NO_BODY_STATUSES:
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._parse_chunks()
        if "content-length" not in headers:
            return None  # delimited by the server closing the connection (connection_lost)
        length = int(headers["content-length"])
        if length < 0:
            raise ValueError("negative Content-Length")
        if len(buffer) - start < length:
            return None
        return status, headers, bytes(buffer[start:start + length])

    def _parse_chunks(self) -> tuple[int, dict[str, str], bytes] | None:
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n", self._at)
            if line_end < 0:
                return None
            size = int(bytes(buffer[self._at:line_end]).split(b";", 1)[0].strip() or b"0", 16)
            if size < 0:
                raise ValueError("negative chunk size")
            if size == 0:
                if buffer.find(b"\r\n\r\n", line_end) < 0:  # the end of the trailers (usually none)
                    return None
                status, headers, _ = self._head
                return status, headers, b"".join(self._chunks)
            data_end = line_end + 2 + size
            if len(buffer) < data_end + 2:
                return None
            self._chunks.append(bytes(buffer[line_end + 2:data_end]))
            self._at = data_end + 2


def _parse_head(head: bytes, body_start: int) -> tuple[int, dict[str, str], int]:
    status_line, _, fields = head.decode("latin-1").partition("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("no HTTP/1.x status line")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for line in fields.split("\r\n") if fields else ():
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body_start


def _delimited_by_close(headers: dict[str, str]) -> bool:
    return "content-length" not in headers and headers.get("transfer-encoding", "").lower() != "chunked"


class Upstream:
    def __init__(self, socket_path: str, keepalive_s: float = DEFAULT_KEEPALIVE_S):
        self.socket_path = socket_path
        # Stop reusing a connection a safe margin before the worker's keep-alive closes it.
        self.reuse_within_s = max(0.1, keepalive_s - min(1.0, keepalive_s / 2))
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        _, connection = await asyncio.get_running_loop().create_unix_connection(_Connection, self.socket_path)
        return connection

    def _usable(self, connection: _Connection, now: float) -> bool:
        return now - connection.idle_since < self.reuse_within_s and not connection.closed

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if self._usable(connection, now):
                return connection
            connection.transport.close()
        return None

    async def post(self, body: bytes, content_type: bytes, timeout_s: float) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body). Raises ConnectionError if the worker is unreachable,
        TimeoutError if it has not answered within `timeout_s` (connecting included)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        head = (
            b"POST /score HTTP/1.1\r\nHost: localhost\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        request = (head, body)  # written together, not joined: no copy of a large body
        reused = self._take_idle()
        if reused is not None:
            try:
                return await self._exchange(reused, request, deadline)
            except UpstreamClosed as err:
                if err.answered:
                    raise
        async with asyncio.timeout_at(deadline):
            connection = await self._connect()
        return await self._exchange(connection, request, deadline)

    async def get(self, path: str, timeout_s: float) -> int:
        """The status of GET `path` on a fresh connection (health probes); TimeoutError after `timeout_s`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with asyncio.timeout_at(deadline):
            connection = await self._connect()
        try:
            request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
            status, _, _ = await connection.exchange((request,), deadline)
            return status
        finally:
            connection.transport.close()

    async def _exchange(self, connection: _Connection, request: tuple[bytes, bytes],
                        deadline: float) -> tuple[int, dict[str, str], bytes]:
        status, headers, payload = await connection.exchange(request, deadline)
        if headers.get("connection", "").lower() == "close":
            connection.transport.close()
        else:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        return status, headers, payload

    def drop_stale(self) -> None:
        """Close pooled connections too old to reuse (supervision calls this each round): after a burst
        the router's descriptors return to their idle level instead of waiting for the next request."""
        now = time.monotonic()
        kept = []
        for connection in self._idle:
            if self._usable(connection, now):
                kept.append(connection)
            else:
                connection.transport.close()
        self._idle = kept

    def close(self) -> None:
        for connection in self._idle:
            connection.transport.close()
        self._idle.clear()
