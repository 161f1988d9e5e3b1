"""Reference proxies for bench/local_router.py: what one extra hop costs in Python on this machine.

Each forwards 127.0.0.1:PORT to a worker's Unix socket, on the router's event loop (uvloop where
installed), and prints `ready` once it listens:

- `pipe`: bytes copied both ways, one worker connection per client connection, no HTTP at all (the
  floor of any proxy written in Python: two more socket hops and two more process wake-ups);
- `aiohttp`: aiohttp's low-level server (the one the router is built on) and the router's own worker
  client (mlcanary.local_runtime.upstream), nothing else: no key, no split, no metrics, no limits.

    python bench/floor_proxies.py pipe|aiohttp PORT SOCKET
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _PipeToClient(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport):
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Pipe(asyncio.Protocol):
    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self.worker: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.client = transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        self.worker, _ = await asyncio.get_running_loop().create_unix_connection(
            lambda: _PipeToClient(self.client), self.socket_path)
        self.worker.writelines(self.early)

    def data_received(self, data: bytes) -> None:
        if self.worker is None:
            self.early.append(data)
        else:
            self.worker.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.worker is not None:
            self.worker.close()


async def serve(kind: str, port: int, socket_path: str) -> None:
    loop = asyncio.get_running_loop()
    if kind == "pipe":
        await loop.create_server(lambda: _Pipe(socket_path), "127.0.0.1", port)
    else:
        from aiohttp import web

        from mlcanary.local_runtime.upstream import Upstream

        upstream = Upstream(socket_path)

        async def handle(request: web.BaseRequest) -> web.Response:
            body = await request.read()
            status, headers, payload = await upstream.post(body, b"application/json", 60)
            return web.Response(status=status, body=payload,
                                headers={"Content-Type": headers.get("content-type", "application/json")})

        await loop.create_server(web.Server(handle, access_log=None), "127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    from mlcanary.local_runtime.server import event_loop_factory

    if len(sys.argv) != 4 or sys.argv[1] not in ("pipe", "aiohttp") or not sys.argv[2].isdigit():
        sys.exit("usage: floor_proxies.py pipe|aiohttp PORT SOCKET")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
