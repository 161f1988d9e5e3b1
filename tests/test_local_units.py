"""Small pieces of the local runtime on their own: state files, routing arithmetic, upstream HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mlcanary.local_runtime import paths, store
from mlcanary.local_runtime.routing import LiveSplit, MirrorShare
from mlcanary.local_runtime.upstream import Upstream, UpstreamClosed


def test_state_is_replaced_atomically_and_a_failed_write_keeps_the_old_file(tmp_path, mocker):
    path = tmp_path / "state.json"
    state = {"endpoints": {"ep-a": {"authMode": "key", "keys": {"primary": "k" * 43, "secondary": "s" * 43}, "port": 1,
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
            return await Upstream(path).post(b"{}", b"application/json", 5)

    status, _, payload = asyncio.run(go())
    assert (status, payload) == (200, body)


async def serve_in_pieces(pieces: list[bytes], socket_dir):
    """A worker that sends its answer in separate writes, a pause between them (the router sees partial answers)."""
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.close()

    path = str(socket_dir / "w.sock")
    return await asyncio.start_unix_server(handle, path), path


@pytest.mark.parametrize(
    "pieces, body",
    [
        ([b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 4\r\n\r", b"\nab", b"cd"], b"abcd"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab", b"c\r\n2\r", b"\nde\r\n0\r\n", b"\r\n"],
         b"abcde"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=1\r\nx\r\n0\r\nTrailer: t\r\n", b"\r\n"], b"x"),
    ],
    ids=["content_length", "chunked", "chunk_extension_and_trailer"],
)
def test_upstream_reads_an_answer_that_arrives_in_pieces(pieces, body, short_dir):
    async def go():
        server, path = await serve_in_pieces(pieces, short_dir)
        async with server:
            return await Upstream(path).post(b"{}", b"application/json", 5)

    status, _, payload = asyncio.run(go())
    assert (status, payload) == (200, body)


def test_upstream_answer_without_a_body_status_has_none(short_dir):
    """204 has no body (RFC 9112 6.3), even without Content-Length: the answer is complete at its head."""
    async def go():
        server, path = await serve_in_pieces([b"HTTP/1.1 204 No Content\r\nServer: w\r\n\r\n"], short_dir)
        async with server:
            return await Upstream(path).post(b"{}", b"application/json", 0.5)

    assert asyncio.run(go())[0::2] == (204, b"")


@pytest.mark.parametrize("answer", [b"SMTP ready\r\n\r\n", b"HTTP/1.1 2x0 OK\r\nContent-Length: 1\r\n\r\nx",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\nx"],
                         ids=["not_http", "bad_status", "bad_length"])
def test_upstream_answer_that_is_not_http_is_a_delivered_connection_error(answer, short_dir):
    async def go():
        server, path = await serve_once(answer, short_dir)
        async with server:
            await Upstream(path).post(b"{}", b"application/json", 5)

    with pytest.raises(UpstreamClosed) as raised:
        asyncio.run(go())
    assert raised.value.answered  # delivered: never retried as if it had not been


def test_upstream_gives_up_at_its_timeout_and_drops_the_connection(short_dir):
    async def go():
        closed = asyncio.Event()

        async def handle(reader, writer):  # reads the request, never answers
            await reader.readuntil(b"\r\n\r\n")
            await reader.read()  # returns once the router dropped the connection
            closed.set()

        path = str(short_dir / "w.sock")
        async with await asyncio.start_unix_server(handle, path):
            upstream = Upstream(path)
            with pytest.raises(TimeoutError):
                await upstream.post(b"{}", b"application/json", 0.2)
            await asyncio.wait_for(closed.wait(), 2)
            return len(upstream._idle)

    assert asyncio.run(go()) == 0  # not kept for reuse


def test_upstream_reports_a_connection_closed_mid_answer(short_dir):
    async def go():
        server, path = await serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", short_dir)
        async with server:
            await Upstream(path).post(b"{}", b"application/json", 5)

    with pytest.raises(UpstreamClosed):
        asyncio.run(go())


def test_upstream_to_a_closed_socket_is_a_connection_error(short_dir):
    async def go():
        server, path = await serve_once(b"", short_dir)
        server.close()
        await server.wait_closed()
        await Upstream(path).post(b"{}", b"application/json", 5)

    with pytest.raises(ConnectionError):
        asyncio.run(go())


def test_orphan_workers_of_a_crashed_runtime_are_killed_and_nothing_else(tmp_path):
    import subprocess
    import sys

    from mlcanary.local_runtime.supervision import WSGI_APP, kill_orphans, process_start_time

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    sockets = tmp_path / "sock"
    orphan = subprocess.Popen([*sleep, "--bind", f"unix:{sockets}/a.sock", WSGI_APP], start_new_session=True)
    other_runtimes = subprocess.Popen([*sleep, "--bind", f"unix:{tmp_path}/other/b.sock", WSGI_APP], start_new_session=True)
    stranger = subprocess.Popen(sleep, start_new_session=True)  # a pid that was reused by something else
    try:
        workers = [{"pid": orphan.pid, "started": process_start_time(orphan.pid), "socket": f"{sockets}/a.sock"},
                   {"pid": other_runtimes.pid, "started": process_start_time(other_runtimes.pid),
                    "socket": f"{sockets}/b.sock"},
                   {"pid": stranger.pid, "started": process_start_time(stranger.pid), "socket": f"{sockets}/c.sock"}]
        paths.workers_file(tmp_path).write_text(json.dumps({"socketDir": str(sockets), "workers": workers}))
        kill_orphans(tmp_path)
        assert orphan.wait(timeout=10) == -9
        assert stranger.poll() is None and other_runtimes.poll() is None
    finally:
        for process in (orphan, other_runtimes, stranger):
            process.kill()
            process.wait()


def test_a_kept_alive_connection_the_worker_closed_is_retried_on_a_fresh_one(short_dir):
    """gunicorn closes idle kept-alive connections; the request was not delivered, so it is retried."""
    connections = []

    async def go():
        async def handle(reader, writer):  # one answer per connection, then close (keep-alive ended)
            connections.append(writer)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        path = str(short_dir / "w.sock")
        async with await asyncio.start_unix_server(handle, path):
            upstream = Upstream(path, keepalive_s=60)  # the router believes the connection is still good
            first = await upstream.post(b"{}", b"application/json", 5)
            await asyncio.sleep(0.1)
            second = await upstream.post(b"{}", b"application/json", 5)
            return first, second

    first, second = asyncio.run(go())
    assert first[0] == second[0] == 200 and len(connections) == 2


def test_connections_idle_near_the_keepalive_are_not_reused(short_dir):
    async def go():
        async def handle(reader, writer):
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                await reader.readexactly(2)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

        path = str(short_dir / "w.sock")
        opened = []
        async with await asyncio.start_unix_server(handle, path):
            upstream = Upstream(path, keepalive_s=0.4)
            real_connect = upstream._connect

            async def counting_connect():
                opened.append(1)
                return await real_connect()

            upstream._connect = counting_connect
            await upstream.post(b"{}", b"application/json", 5)
            await upstream.post(b"{}", b"application/json", 5)  # reused at once
            await asyncio.sleep(0.4)
            await upstream.post(b"{}", b"application/json", 5)  # too old: a fresh connection
        return len(opened)

    assert asyncio.run(go()) == 2


def test_prometheus_label_values_are_escaped():
    from mlcanary.local_runtime.metrics import Metrics

    metrics = Metrics()
    metrics.of("ep", 'bl"ue\nx\\').observe(200, 0.01)
    text = metrics.prometheus()
    assert 'mlcanary_requests_total{endpoint="ep",deployment="bl\\"ue\\nx\\\\",code="200"} 1\n' in text
    assert all(line.startswith(("#", "mlcanary_")) for line in text.splitlines())


def test_kept_request_counts_come_back_as_they_were(tmp_path):
    from mlcanary.local_runtime.metrics import Metrics
    from mlcanary.local_runtime.server import kept_metrics

    metrics = Metrics()
    metrics.of("ep", "blue").observe(200, 0.01)
    metrics.of("ep", "blue").observe(500, 2.0)
    metrics.of("ep", "green").observe(200, 0.2, mirrored=True)
    store.save(paths.metrics_file(tmp_path), metrics.as_json())
    assert kept_metrics(tmp_path).prometheus() == metrics.prometheus()
    assert not paths.metrics_file(tmp_path).exists()  # a crash later starts from 0, not from these


@pytest.mark.parametrize("text", ["{not json", '{"deployments": [{"endpoint": "ep"}]}',
                                  '{"deployments": [{"endpoint": "ep", "deployment": "b", "requests": {"200": -1}, '
                                  '"mirrored": {}, "buckets": [], "latencySum": 0}]}', "[]"],
                         ids=["not_json", "missing_counts", "negative_count", "not_an_object"])
def test_unusable_kept_counts_start_from_zero(tmp_path, text):
    from mlcanary.local_runtime.server import kept_metrics

    paths.metrics_file(tmp_path).write_text(text)
    assert kept_metrics(tmp_path).by_deployment == {}


def test_the_runtime_log_is_rotated(tmp_path, monkeypatch):
    import logging

    from mlcanary.local_runtime import server

    monkeypatch.setattr(server, "LOG_MAX_BYTES", 10_000)
    root_logger = logging.getLogger()
    saved = root_logger.handlers[:]
    root_logger.handlers.clear()
    try:
        server.setup_logging(tmp_path)
        for i in range(2000):
            logging.getLogger("mlcanary.local").info("change accepted: PUT /endpoints/ep-%d", i)
    finally:
        for handler in root_logger.handlers:
            handler.close()
        root_logger.handlers[:] = saved
    logs = sorted(p.name for p in tmp_path.glob("runtime.log*"))
    assert logs == ["runtime.log", "runtime.log.1", "runtime.log.2", "runtime.log.3"]
    assert all((tmp_path / name).stat().st_size <= 10_000 for name in logs)
    assert paths.runtime_log(tmp_path).stat().st_mode & 0o777 == 0o600


def test_a_failed_start_keeps_the_first_traceback_in_the_tail(tmp_path):
    from mlcanary.local_runtime.workers import log_tail

    log = tmp_path / "instance-0.log"
    log.write_text("\n".join([
        "--- 2026-01-01 00:00:00 starting on unix:/x.sock",
        "E azmlinfsrv - Encountered Exception Traceback (most recent call last):",
        '  File "score.py", line 3, in init',
        "RuntimeError: init failed on purpose",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "user_script.py", line 9',
        "UserScriptException: Caught an unhandled exception from the user script",
        *[f"I azmlinfsrv -         file-{i}.bin" for i in range(100)],
        "Reason: Worker failed to boot.",
    ]))
    tail = log_tail(log, 30)
    assert "RuntimeError: init failed on purpose" in tail and "UserScriptException" in tail
    assert tail.endswith("Reason: Worker failed to boot.") and len(tail.splitlines()) <= 31


def test_worker_sockets_move_to_a_private_temp_folder_when_the_state_path_is_too_long(tmp_path):
    deep = tmp_path / ("d" * 100) / "state"
    deep.mkdir(parents=True)
    folder = paths.socket_dir(deep)
    assert not str(folder).startswith(str(deep))
    assert len(str(folder / "0123456789ab.sock")) <= paths.SOCKET_PATH_MAX
    assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.getuid()
    again = paths.socket_dir(deep)  # an unpredictable name each time (workers.json records it for a restart)
    assert again != folder and again.name.startswith(f"mlcanary-{os.getuid()}-")
    folder.rmdir()
    again.rmdir()
    assert paths.socket_dir(tmp_path) == tmp_path / "sock"


def test_worker_sockets_fall_back_to_tmp_when_tmpdir_is_too_deep_as_well(tmp_path, monkeypatch):
    """A rehearsal's private state dir lives in $TMPDIR; under a deep $TMPDIR (a test's, a sandbox's)
    both it and a folder beside it are too long for a socket path, /tmp is not."""
    deep_tmp = tmp_path / ("t" * 100)
    deep_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep_tmp))
    state = deep_tmp / "mlcanary-rehearse-x"
    state.mkdir()
    folder = paths.socket_dir(state)
    assert folder.parent == Path("/tmp") and len(str(folder / "0123456789ab.sock")) <= paths.SOCKET_PATH_MAX
    folder.rmdir()


def test_a_second_stage_change_without_wait_is_refused_at_once(tmp_path):
    from mlcanary.local_runtime.stage_lock import StageLocked, stage_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib; from mlcanary.local_runtime.stage_lock import stage_lock\n"
         "with stage_lock(pathlib.Path(sys.argv[1]), 'stage-3.yaml'):\n    print('held', flush=True); sys.stdin.read()",
         str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StageLocked, match=r"another `mlcanary local up` is changing .* \(pid \d+ applying "
                                              r"stage-3.yaml since .*\); not waiting \(--no-wait\)"):
            with stage_lock(tmp_path, "stage-7.yaml", wait=False):
                pass
    finally:
        holder.communicate("", timeout=30)
    with stage_lock(tmp_path, "stage-7.yaml", wait=False):  # free again
        pass


def test_the_stage_lock_is_reentrant_within_one_process(tmp_path):
    """local up holds it from the gate to the end of the apply; apply_stage takes it again inside."""
    from mlcanary.local_runtime.stage_lock import stage_lock

    with stage_lock(tmp_path, "stage-3.yaml", wait=False):
        with stage_lock(tmp_path, "stage-3.yaml", wait=False):
            pass
        with stage_lock(tmp_path, "stage-3.yaml", wait=False):  # still held after the inner one ended
            pass


# --- pinned versions, start limits, the metrics address --------------------------------------------


@pytest.mark.parametrize("wanted, reason", [
    ({"modelDigest": "m2"}, "model changed"),
    ({"codeDigest": "c2"}, "code changed"),
    ({"code": "/elsewhere/code"}, "code changed"),
    ({"instanceCount": 3}, "instances 1 -> 3"),
    ({"environmentVariables": {"A": "2"}}, "environmentVariables changed"),
    ({"modelDigest": "m2", "instanceCount": 2}, "model changed, instances 1 -> 2"),
])
def test_an_update_says_what_changed(wanted, reason):
    from mlcanary.local_runtime.deployment_changes import why_updated

    running = {"code": "/p/code", "codeDigest": "c1", "model": "/p/model", "modelDigest": "m1", "instanceCount": 1,
               "scoringScript": "score.py", "environmentVariables": {"A": "1"}}
    assert why_updated({"state": "ready", "spec": running}, {**running, **wanted}) == reason


def test_an_update_of_a_failed_deployment_says_so():
    from mlcanary.local_runtime.deployment_changes import why_updated

    assert why_updated({"state": "failed", "spec": {}}, {"instanceCount": 1}) == "was failed"


@pytest.mark.parametrize("probe, seconds", [
    (None, 310),  # Azure's defaults: 10 + 30 x 10
    ({"period": 2}, 70),
    ({"initialDelay": 0, "failureThreshold": 5, "period": 1}, 5),
    ({"initialDelay": 60}, 360),
])
def test_the_start_limit_is_azures_initial_delay_plus_threshold_times_period(probe, seconds):
    from mlcanary.local_runtime.workers import StartLimit

    spec = {"readinessProbe": probe} if probe is not None else {}
    assert StartLimit.of(spec).seconds == seconds


@pytest.mark.parametrize("text, parsed", [
    ("127.0.0.1:9577", ("127.0.0.1", 9577)),
    ("localhost:9000", ("localhost", 9000)),
    ("[::1]:9577", ("::1", 9577)),
    ("127.0.0.2:0", ("127.0.0.2", 0)),
    ("off", None),
    ("OFF", None),
])
def test_metrics_addresses_on_loopback_are_accepted(text, parsed):
    from mlcanary.local_runtime import metrics_address

    assert metrics_address.parse(text) == parsed


def test_pinning_copies_once_per_digest_and_collecting_keeps_what_is_in_use(tmp_path):
    from mlcanary.components.uploads import content_hash
    from mlcanary.local_runtime import snapshots

    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text("def init(): pass\n")
    root = tmp_path / "state"
    root.mkdir()
    first = snapshots.pin(root, {"code": str(code)})
    assert first["codeDigest"] == content_hash(str(code))
    pinned = snapshots.served_path(root, first, "code")
    assert (pinned / "score.py").read_text() == "def init(): pass\n"
    before = pinned.stat().st_mtime_ns
    assert snapshots.pin(root, {"code": str(code)}) == first and pinned.stat().st_mtime_ns == before  # not copied again
    (code / "score.py").write_text("def init(): return 2\n")
    second = snapshots.pin(root, {"code": str(code)})
    assert second["codeDigest"] != first["codeDigest"]
    assert snapshots.collect(root, {second["codeDigest"]}) == [first["codeDigest"]]
    assert not pinned.exists() and snapshots.served_path(root, second, "code").is_dir()


def test_a_folder_edited_between_hash_and_copy_is_refused(tmp_path):
    from mlcanary.local_runtime import snapshots

    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text("x = 1\n")
    root = tmp_path / "state"
    root.mkdir()
    with pytest.raises(snapshots.SnapshotFailed, match="changed while it was being applied"):
        snapshots.pin(root, {"code": str(code), "codeDigest": "0" * 64})
    assert [p.name for p in (root / "snapshots").iterdir()] == []  # nothing half-pinned is left


def test_a_half_made_copy_is_removed_only_at_start(tmp_path):
    from mlcanary.local_runtime import snapshots

    unfinished = tmp_path / "snapshots" / ".staging-abc"
    unfinished.mkdir(parents=True)
    assert snapshots.collect(tmp_path, set()) == [] and unfinished.exists()  # a pin may be in progress
    snapshots.collect(tmp_path, set(), unfinished_too=True)
    assert not unfinished.exists()
