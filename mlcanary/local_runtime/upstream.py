"""A minimal HTTP/1.1 client for one worker on its Unix socket, with kept-alive connections.

The router sends one kind of request (POST /score) to servers it starts itself (gunicorn gthread
workers keep connections alive), so a general HTTP client's per-request machinery is cost without
benefit on the hot path; this speaks just enough HTTP/1.1, including chunked responses.

A kept-alive connection may have been closed by the worker meanwhile (gunicorn's keep-alive ends
idle connections). Connections idle for nearly that long are not reused, and a reused connection
that is found closed before any byte of the answer arrived is retried once on a fresh connection:
the request was never delivered, so nothing is scored twice and the client never sees the error.

A request the router gives up on (its timeout, its client gone: the task is cancelled) aborts its
connection: what was still buffered for the worker is dropped and the socket closed at once, rather
than flushed to a worker that may take minutes to read it.
"""

from __future__ import annotations

import asyncio
import time

DEFAULT_KEEPALIVE_S = 30.0  # gunicorn --keep-alive of the workers the runtime starts


class UpstreamClosed(ConnectionError):
    """The worker closed or reset the connection before a complete answer."""

    def __init__(self, message: str, answered: bool = False):
        super().__init__(message)
        self.answered = answered  # some of the answer arrived: the request was delivered


class Upstream:
    def __init__(self, socket_path: str, keepalive_s: float = DEFAULT_KEEPALIVE_S):
        self.socket_path = socket_path
        # Stop reusing a connection a safe margin before the worker's keep-alive closes it.
        self.reuse_within_s = max(0.1, keepalive_s - min(1.0, keepalive_s / 2))
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(self.socket_path)

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < self.reuse_within_s and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def post(self, body: bytes, content_type: bytes) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body). Raises ConnectionError if the worker is unreachable."""
        head = (
            b"POST /score HTTP/1.1\r\nHost: localhost\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        request = (head, body)  # written apart: no copy of a large body
        reused = self._take_idle()
        if reused is not None:
            try:
                return await self._exchange(*reused, request)
            except UpstreamClosed as err:
                if err.answered:
                    raise
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while we wrote: not delivered either
        return await self._exchange(*await self._connect(), request)

    async def get(self, path: str = "/") -> int:
        """The status of GET `path` on a fresh connection (health probes)."""
        reader, writer = await self._connect()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            status, _, _ = await _read_response(reader)
            return status
        finally:
            writer.close()

    async def _exchange(self, reader, writer, request: tuple[bytes, bytes]) -> tuple[int, dict[str, str], bytes]:
        try:
            for part in request:
                writer.write(part)
            status, headers, payload = await _read_response(reader)
        except BaseException:
            writer.transport.abort()  # half-used connections never go back to the pool, nor linger
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return status, headers, payload

    def drop_stale(self) -> None:
        """Close pooled connections too old to reuse (supervision calls this each round): after a burst
        the router's descriptors return to their idle level instead of waiting for the next request."""
        now = time.monotonic()
        kept = []
        for reader, writer, since in self._idle:
            if now - since < self.reuse_within_s and not reader.at_eof() and not writer.is_closing():
                kept.append((reader, writer, since))
            else:
                writer.close()
        self._idle = kept

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    answered = False
    try:
        status_line = await reader.readline()
        if not status_line:
            raise UpstreamClosed("connection closed before the status line")
        answered = True
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    await reader.readline()
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            return status, headers, b"".join(chunks)
        if "content-length" not in headers:  # delimited by the server closing the connection
            headers["connection"] = "close"
            return status, headers, await reader.read()
        length = int(headers["content-length"])
        return status, headers, await reader.readexactly(length) if length else b""
    except (asyncio.IncompleteReadError, ConnectionResetError) as err:
        raise UpstreamClosed(str(err) or "connection reset", answered) from None
