"""A minimal HTTP/1.1 client for one worker, with kept-alive connections.

The router sends one kind of request (POST /score) to servers it starts itself (gunicorn gthread
workers keep connections alive), so a general HTTP client's per-request machinery is cost without
benefit on the hot path; this speaks just enough HTTP/1.1, including chunked responses.
"""

from __future__ import annotations

import asyncio


class UpstreamClosed(ConnectionError):
    """The worker closed or reset the connection before a complete answer."""


class Upstream:
    def __init__(self, port: int):
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, body: bytes, content_type: str) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body). Raises ConnectionError if the worker is unreachable."""
        reader, writer = self._idle.pop() if self._idle else await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(
                b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + content_type.encode("latin-1")
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            status, headers, payload = await _read_response(reader)
        except BaseException:
            writer.close()  # half-used connections never go back to the pool
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, headers, payload

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    try:
        status_line = await reader.readline()
        if not status_line:
            raise UpstreamClosed("connection closed before the status line")
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
        raise UpstreamClosed(str(err)) from None
