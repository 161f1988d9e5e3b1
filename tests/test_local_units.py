"""Small pieces of the local runtime on their own: state files, routing arithmetic, upstream HTTP."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest

from mlcanary.local_runtime import paths, store
from mlcanary.local_runtime.routing import LiveSplit, MirrorShare
from mlcanary.local_runtime.upstream import Upstream, UpstreamClosed


def test_state_is_replaced_atomically_and_a_failed_write_keeps_the_old_file(tmp_path, mocker):
    path = tmp_path / "state.json"
    state = {"endpoints": {"a": {"authMode": "key", "keys": {"primary": "k", "secondary": "s"}, "port": 1,
                                 "deployments": {}, "traffic": {}, "mirrorTraffic": {}}}}
    store.save(path, state)
    assert path.stat().st_mode & 0o777 == 0o600  # it holds endpoint keys
    mocker.patch("mlcanary.local_runtime.store.json.dump", side_effect=OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        store.save(path, {"endpoints": {}})
    assert store.load(path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind


def test_state_dir_is_flag_then_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "from-env"))
    assert paths.state_dir(tmp_path / "from-flag") == tmp_path / "from-flag"
    assert paths.state_dir() == tmp_path / "from-env"
    monkeypatch.delenv(paths.ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.state_dir() == tmp_path / ".mlcanary" / "local"


@pytest.mark.parametrize("weights", [{"a": 90, "b": 10}, {"a": 33, "b": 33, "c": 34}, {"a": 1, "b": 99}, {"a": 100, "b": 0}])
def test_live_split_is_exact_over_every_hundred_requests(weights):
    split = LiveSplit(weights)
    for _ in range(3):
        picks = [split.pick() for _ in range(100)]
        assert {name: picks.count(name) for name in weights} == weights


def test_live_split_with_nothing_live_picks_nobody():
    assert LiveSplit({"a": 0}).pick() is None


@pytest.mark.parametrize("percent", [1, 10, 33, 50])
def test_mirror_share_is_exact(percent):
    share = MirrorShare({"shadow": percent, "other": 0})
    taken = [share.take() for _ in range(1000)]
    assert taken.count("shadow") == 10 * percent and set(taken) <= {"shadow", None}


async def serve_once(answer: bytes, socket_dir):
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    path = str(socket_dir / "w.sock")
    server = await asyncio.start_unix_server(handle, path)
    return server, path


@pytest.fixture
def short_dir():
    """A folder whose socket paths fit AF_UNIX's 108 bytes (pytest's tmp_path may not)."""
    with tempfile.TemporaryDirectory(prefix="mlc-") as folder:
        yield Path(folder)


@pytest.mark.parametrize(
    "raw, body",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd", b"abcd"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", b"until close"),
    ],
    ids=["content_length", "chunked", "close_delimited"],
)
def test_upstream_reads_each_response_framing(raw, body, short_dir):
    async def go():
        server, path = await serve_once(raw, short_dir)
        async with server:
            return await Upstream(path).post(b"{}", b"application/json")

    status, _, payload = asyncio.run(go())
    assert (status, payload) == (200, body)


def test_upstream_reports_a_connection_closed_mid_answer(short_dir):
    async def go():
        server, path = await serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", short_dir)
        async with server:
            await Upstream(path).post(b"{}", b"application/json")

    with pytest.raises(UpstreamClosed):
        asyncio.run(go())


def test_upstream_to_a_closed_socket_is_a_connection_error(short_dir):
    async def go():
        server, path = await serve_once(b"", short_dir)
        server.close()
        await server.wait_closed()
        await Upstream(path).post(b"{}", b"application/json")

    with pytest.raises(ConnectionError):
        asyncio.run(go())


def test_orphan_workers_of_a_crashed_runtime_are_killed_and_nothing_else(tmp_path):
    import subprocess
    import sys

    from mlcanary.local_runtime.supervision import WSGI_APP, kill_orphans

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    orphan = subprocess.Popen([*sleep, WSGI_APP], start_new_session=True)  # looks like our worker
    stranger = subprocess.Popen(sleep, start_new_session=True)  # a pid that was reused by something else
    try:
        paths.workers_file(tmp_path).write_text(json.dumps({"pgids": [orphan.pid, stranger.pid]}))
        kill_orphans(tmp_path)
        assert orphan.wait(timeout=10) == -9
        assert stranger.poll() is None
    finally:
        for process in (orphan, stranger):
            process.kill()
            process.wait()
