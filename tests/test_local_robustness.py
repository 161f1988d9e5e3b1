"""The local runtime in ordinary use and under attack (issue 7): idle time, crashes, a full disk,
hostile requests, restarts. Real runtime processes, real workers, real HTTP on 127.0.0.1.

The module's runtime runs with short keep-alives (worker 1 s, client connections 2 s), so idling
past them takes seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import requests

from mlcanary.local_runtime import paths
from mlcanary.local_runtime.client import NotRunning, RuntimeClient, RuntimeRefusal
from mlcanary.local_runtime.data_plane import CLIENT_KEEPALIVE_ENV
from mlcanary.local_runtime.protocol import CONTROL_TOKEN_HEADER
from mlcanary.local_runtime.store import FAULT_DISK_FULL_ENV
from mlcanary.local_runtime.workers import KEEPALIVE_ENV
from test_local_runtime import MODELS, score, serve, spec, steady_load, stop_runtime, wait_for

SHORT_KEEPALIVES = {KEEPALIVE_ENV: "1", CLIENT_KEEPALIVE_ENV: "2"}


@contextlib.contextmanager
def environment(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    runtime = RuntimeClient(tmp_path_factory.mktemp("robust"))
    with environment(**SHORT_KEEPALIVES):
        runtime.ensure_running()
    yield runtime
    stop_runtime(runtime)


@pytest.fixture
def own_runtime(tmp_path):
    """A runtime of the test's own (it will be crashed or restarted); stopped by PID at the end."""
    runtimes = []

    def start(root: Path | None = None, **env: str) -> RuntimeClient:
        runtime = RuntimeClient(root or tmp_path / "state")
        with environment(**env):
            runtime.ensure_running()
        runtimes.append(runtime)
        return runtime

    yield start
    from mlcanary.local_runtime.supervision import kill_orphans

    for runtime in runtimes:
        stop_runtime(runtime)
        kill_orphans(runtime.root, runtime.root / "sock")  # the workers of a runtime the test killed


def deployment_status(client, endpoint, deployment):
    return client.status()["endpoints"][endpoint]["deployments"][deployment]


def children_of(pid: int) -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def runtime_log(client) -> str:
    return paths.runtime_log(client.root).read_text(errors="replace")


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b'"}' in answer:
                break
        return answer


def port_of(target) -> int:
    return int(target["uri"].split(":")[2].split("/")[0])


# --- health that heals ----------------------------------------------------------------------------

def test_an_endpoint_idle_longer_than_the_keepalive_still_answers(client):
    target = serve(client, "ep-idle", {"blue": spec("blue", 2)}, {"blue": 100})
    assert [score(target).status_code for _ in range(3)] == [200] * 3
    time.sleep(3)  # the workers' keep-alive (1 s) closed every kept connection meanwhile
    assert [score(target).status_code for _ in range(20)] == [200] * 20
    blue = deployment_status(client, "ep-idle", "blue")
    assert (blue["healthy"], blue["instances"]) == (2, 2)
    client.delete_endpoint("ep-idle")


def test_a_killed_worker_child_is_back_in_rotation_within_seconds(client):
    target = serve(client, "ep-child", {"blue": spec("blue", 2)}, {"blue": 100})
    master = deployment_status(client, "ep-child", "blue")["pids"][0]
    with steady_load(target, clients=2) as results:
        time.sleep(0.5)
        for child in children_of(master):
            os.kill(child, signal.SIGKILL)  # gunicorn starts a new child; the master stays
        time.sleep(0.5)
        assert wait_for(lambda: deployment_status(client, "ep-child", "blue")["healthy"] == 2, 20)
        time.sleep(0.3)
    assert results and {status for status, _ in results} == {200}, [r for r in results if r[0] != 200][:3]
    assert deployment_status(client, "ep-child", "blue")["restarts"] == 0  # gunicorn did it, not us
    client.delete_endpoint("ep-child")


def test_the_readiness_probe_settings_take_a_hung_instance_out_and_back(client):
    probe = {"period": 1, "failureThreshold": 2, "timeout": 1}
    serve(client, "ep-probe", {"blue": {**spec("blue", 2), "readinessProbe": probe}}, {"blue": 100})
    master = deployment_status(client, "ep-probe", "blue")["pids"][0]
    hung = children_of(master)
    for pid in hung:
        os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
    try:
        assert wait_for(lambda: deployment_status(client, "ep-probe", "blue")["healthy"] == 1, 15)
    finally:
        for pid in hung:
            os.kill(pid, signal.SIGCONT)
    assert wait_for(lambda: deployment_status(client, "ep-probe", "blue")["healthy"] == 2, 15)
    client.delete_endpoint("ep-probe")


# --- data plane -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def endpoint(client):
    return serve(client, "ep-data", {"blue": spec("blue")}, {"blue": 100})


def test_the_body_limit_is_100_mib_as_configured(endpoint):
    answer = score(endpoint, {"x": "a" * (2 * 1024 * 1024)})  # aiohttp's default limit is 1 MiB
    assert answer.status_code == 200 and len(answer.json()["echo"]["x"]) == 2 * 1024 * 1024


def test_no_request_is_access_logged_and_no_handler_warning(endpoint, client):
    for _ in range(5):
        assert score(endpoint).status_code == 200
    log = runtime_log(client)
    assert "POST /score" not in log
    assert "Failed to create request handler" not in log


def test_a_gzip_body_is_decompressed_after_auth_and_bounded(endpoint):
    body = gzip.compress(json.dumps({"x": 5}).encode())
    headers = {"Authorization": f"Bearer {endpoint['key']}", "Content-Type": "application/json",
               "Content-Encoding": "gzip"}
    answer = requests.post(endpoint["uri"], data=body, headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.json()["echo"] == {"x": 5}
    bomb = gzip_bomb(200 * 1024 * 1024)  # 200 MB of zeros in about 200 KB
    assert requests.post(endpoint["uri"], data=bomb, headers=headers, timeout=30).status_code == 413


def gzip_bomb(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(size // len(block))) + packer.flush()


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_unauthenticated_gzip_bomb_is_never_decompressed(endpoint, client):
    bomb = gzip_bomb(512 * 1024 * 1024)  # decompressing it takes the router about 0.25 s of CPU
    headers = {"Authorization": "Bearer wrong", "Content-Encoding": "gzip", "Content-Type": "application/json"}
    before = process_cpu_seconds(client.pid())
    for _ in range(4):
        assert requests.post(endpoint["uri"], data=bomb, headers=headers, timeout=60).status_code == 401
    assert process_cpu_seconds(client.pid()) - before < 0.4  # four decompressions would be ~1 s


@pytest.mark.parametrize("header, value, status", [
    ("Authorization", "Bearer ключ".encode(), 401),
    ("Authorization", b"Bearer \xff\xfe", 401),
    ("Content-Type", "application/json; charset=ютф".encode(), 400),
], ids=["authorization_utf8", "authorization_invalid_utf8", "content_type_utf8"])
def test_bad_header_encodings_are_400_or_401_never_500(endpoint, client, header, value, status):
    headers = {"Authorization": f"Bearer {endpoint['key']}".encode(), "Content-Type": b"application/json"}
    headers[header] = value
    request = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n" + b"".join(
        k.encode() + b": " + v + b"\r\n" for k, v in headers.items()) + b"\r\n{}"
    answer = raw_exchange(port_of(endpoint), request)
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]
    assert "Traceback" not in runtime_log(client)


def test_a_non_ascii_control_token_is_401_never_500(client):
    port = json.loads(paths.runtime_file(client.root).read_text())["controlPort"]
    request = (b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               + CONTROL_TOKEN_HEADER.encode() + ": токен".encode() + b"\r\n\r\n")
    assert raw_exchange(port, request).startswith(b"HTTP/1.1 401")
    assert "Traceback" not in runtime_log(client)


@pytest.mark.parametrize("sent", [b"", b"POST /score HTTP/1.1\r\nHost: x\r\nAuthor"], ids=["idle", "partial_headers"])
def test_idle_and_partial_header_connections_are_closed(endpoint, sent):
    with socket.create_connection(("127.0.0.1", port_of(endpoint)), timeout=15) as connection:
        connection.sendall(sent)
        started = time.monotonic()
        assert connection.recv(1024) == b""  # closed by the router (keep-alive 2 s in this module)
        assert time.monotonic() - started < 12


# --- deployments' logs and metrics ------------------------------------------------------------

def test_a_replacement_writes_its_own_log_files(client):
    serve(client, "ep-logs", {"blue": spec("v1")}, {"blue": 100})
    old = deployment_status(client, "ep-logs", "blue")["logDir"]
    old_log = Path(old) / "instance-0.log"
    client.put_deployment("ep-logs", "blue", spec("v2"))
    new = deployment_status(client, "ep-logs", "blue")["logDir"]
    assert new != old and (Path(new) / "instance-0.log").exists()
    target = {"uri": client.status()["endpoints"]["ep-logs"]["scoringUri"], "key": client.keys("ep-logs")["primaryKey"]}
    assert score(target).json()["name"] == "v2"
    starts = lambda log: [line for line in log.read_text().splitlines() if line.startswith("--- ")]  # noqa: E731
    assert len(starts(old_log)) == 1 and len(starts(Path(new) / "instance-0.log")) == 1
    assert "==> instance-0.log <==" in client.logs("ep-logs", "blue", 5)
    client.delete_endpoint("ep-logs")


def test_a_failed_init_keeps_its_error_in_the_log_tail(client, endpoint, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(MODELS / "model", model)
    for i in range(80):  # the inference server lists the model folder after the error
        (model / f"part-{i:02}.bin").write_bytes(b"x")
    with pytest.raises(RuntimeRefusal) as refused:
        client.put_deployment("ep-data", "broken", {**spec("broken", FAIL_INIT="1"), "model": str(model)})
    assert "init failed on purpose" in refused.value.body["logTail"]


def test_metrics_of_a_recreated_deployment_start_from_zero(client, endpoint):
    client.put_deployment("ep-data", "again", spec("again"))
    for _ in range(3):
        assert score(endpoint, pin="again").status_code == 200
    assert deployment_status(client, "ep-data", "again")["metrics"]["requests"] == 3
    client.delete_deployment("ep-data", "again")
    assert 'deployment="again"' not in client.metrics()
    client.put_deployment("ep-data", "again", spec("again"))
    assert deployment_status(client, "ep-data", "again")["metrics"]["requests"] == 0
    text = client.metrics()
    assert 'mlcanary_requests_total{endpoint="ep-data",deployment="again"' not in text
    assert 'mlcanary_request_duration_seconds_count{endpoint="ep-data",deployment="again"} 0' in text
    client.delete_deployment("ep-data", "again")


def test_every_change_leaves_one_audit_line(client, endpoint):
    with pytest.raises(RuntimeRefusal):
        client.set_traffic("ep-data", {"blue": 50}, {})
    client.set_traffic("ep-data", {"blue": 100}, {})
    log = runtime_log(client)
    assert "change refused (400): PUT /endpoints/ep-data/traffic: traffic refused; nothing changed" in log
    assert "change accepted: PUT /endpoints/ep-data/traffic" in log


# --- state is the truth -----------------------------------------------------------------------

def test_a_corrupt_state_file_stops_the_start_at_once_and_is_kept(tmp_path):
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    paths.state_file(root).write_text('{"endpoints": {"ep-x": ')
    runtime = RuntimeClient(root)
    started = time.monotonic()
    with pytest.raises(NotRunning) as refused:
        runtime.ensure_running()
    assert time.monotonic() - started < 30
    assert f"state file {paths.state_file(root)} is not valid JSON: Expecting value (line 1, column 24)" in str(refused.value)
    assert "the file was kept as it is" in str(refused.value)
    assert paths.state_file(root).read_text() == '{"endpoints": {"ep-x": '


def test_local_up_says_the_state_file_is_corrupt(tmp_path):
    from click.testing import CliRunner

    from mlcanary.cli import main
    from test_local_cli import STAGE

    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    paths.state_file(root).write_text('{"endpoints": []}')
    result = CliRunner().invoke(main, ["local", "up", str(STAGE["1"]), "--state-dir", str(root)])
    assert result.exit_code == 1
    # local up reads the state first (the gate judges the step from what a restart would restore)
    assert f"{paths.state_file(root)}: cannot read the runtime's state" in result.output
    assert "is not a runtime state: endpoints: input should be a valid dictionary, got []" in result.output
    assert "Traceback" not in result.output
    assert paths.state_file(root).read_text() == '{"endpoints": []}'  # kept for the user to inspect
    assert RuntimeClient(root).base_url() is None


def test_a_runtime_killed_while_a_deployment_starts_leaks_no_worker(own_runtime):
    runtime = own_runtime()
    runtime.put_endpoint("ep-leak", "key")
    outcome = {}

    def start_slow_deployment():
        try:
            runtime.put_deployment("ep-leak", "slow", spec("slow", 2, INIT_SLEEP="60"))
        except Exception as err:  # noqa: BLE001 - the test looks at what was raised
            outcome["error"] = err

    starting = threading.Thread(target=start_slow_deployment)
    starting.start()
    socket_marker = f"unix:{runtime.root / 'sock'}/"
    workers = lambda: [int(p) for p in subprocess.run(  # noqa: E731
        ["pgrep", "-f", socket_marker], capture_output=True, text=True).stdout.split()]
    assert wait_for(lambda: len(workers()) >= 2, 30)
    leaked = workers()
    os.kill(runtime.pid(), signal.SIGKILL)
    starting.join(30)
    assert isinstance(outcome.get("error"), NotRunning)  # a clean error, not a raw requests traceback
    assert "the local runtime stopped answering during PUT" in str(outcome["error"])
    runtime.ensure_running()
    for pid in leaked:
        assert wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or b"Z" in _state_of(pid), 10), pid
    assert runtime.status()["endpoints"]["ep-leak"]["deployments"] == {}


def test_workers_of_a_runtime_killed_with_sigkill_stop_by_themselves(own_runtime):
    """Found by a newcomer: after `kill -9` of the runtime its workers kept running (re-parented to
    PID 1) until the next start swept them. Now they stop without any new start."""
    runtime = own_runtime()
    serve(runtime, "ep-orphans", {"blue": spec("blue", 2)}, {"blue": 100})
    socket_marker = f"unix:{runtime.root / 'sock'}/"
    workers = [int(p) for p in subprocess.run(["pgrep", "-f", socket_marker], capture_output=True, text=True).stdout.split()]
    assert len(workers) >= 4  # two gunicorn masters, each with its worker child
    os.kill(runtime.pid(), signal.SIGKILL)
    for pid in workers:
        assert wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or b"Z" in _state_of(pid), 20), pid


def _state_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return b"Z"


def test_a_restart_answers_no_404_while_traffic_is_restored(own_runtime):
    runtime = own_runtime()
    target = serve(runtime, "ep-back", {"blue": spec("blue", INIT_SLEEP="1")}, {"blue": 100})
    os.kill(runtime.pid(), signal.SIGKILL)
    assert wait_for(lambda: runtime.base_url() is None)
    seen, stop = [], threading.Event()

    def keep_asking():
        while not stop.is_set():
            try:
                seen.append(score(target, timeout=5).status_code)
            except requests.ConnectionError:
                seen.append("refused")
                time.sleep(0.02)

    asking = threading.Thread(target=keep_asking)
    asking.start()
    try:
        runtime.ensure_running()
        time.sleep(0.5)
    finally:
        stop.set()
        asking.join()
    assert 404 not in seen and seen[-1] == 200, seen


def pinned_code(runtime, endpoint: str, deployment: str) -> Path:
    """The copy of a deployment's code folder its workers serve (snapshots.py)."""
    spec = deployment_status(runtime, endpoint, deployment)["spec"]
    return runtime.root / "snapshots" / spec["codeDigest"] / Path(spec["code"]).name


def test_a_deployment_whose_pinned_code_vanished_is_failed_not_starting(own_runtime, tmp_path):
    code = tmp_path / "code"
    shutil.copytree(MODELS / "code", code)
    runtime = own_runtime()
    target = serve(runtime, "ep-gone", {"blue": {**spec("blue"), "code": str(code)}}, {"blue": 100})
    pinned = pinned_code(runtime, "ep-gone", "blue")
    os.kill(runtime.pid(), signal.SIGKILL)
    assert wait_for(lambda: runtime.base_url() is None)
    shutil.rmtree(pinned)
    runtime.ensure_running()
    blue = deployment_status(runtime, "ep-gone", "blue")
    assert blue["state"] == "failed"
    assert f"code folder '{pinned}' does not exist" in blue["error"]
    answer = score(target)
    assert answer.status_code == 503 and "deployment 'blue' is failed" in answer.json()["message"]


def test_a_deployment_restarts_from_its_pinned_code_when_the_users_folder_is_gone(own_runtime, tmp_path):
    code = tmp_path / "code"
    shutil.copytree(MODELS / "code", code)
    runtime = own_runtime()
    target = serve(runtime, "ep-moved", {"blue": {**spec("blue"), "code": str(code)}}, {"blue": 100})
    os.kill(runtime.pid(), signal.SIGKILL)
    assert wait_for(lambda: runtime.base_url() is None)
    shutil.rmtree(code)
    runtime.ensure_running()
    assert deployment_status(runtime, "ep-moved", "blue")["state"] == "ready"
    assert score(target).status_code == 200


def mount_small_disk(where: Path, size: str = "3m") -> bool:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                             capture_output=True)
    return mounted.returncode == 0


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as file:
        with contextlib.suppress(OSError):
            while True:
                file.write(bytes(64 * 1024))
                file.flush()
    return filler


@pytest.mark.parametrize("disk", ["tmpfs", "injected_fault"])
def test_a_full_disk_refuses_the_change_names_the_cause_and_undoes_it(own_runtime, tmp_path, disk):
    if disk == "tmpfs":
        root = tmp_path / "small"
        if not mount_small_disk(root):
            pytest.skip("mounting a tmpfs is not allowed here; the injected_fault case covers the same path")
        runtime = own_runtime(root)
    else:
        flag = tmp_path / "disk-is-full"
        runtime = own_runtime(**{FAULT_DISK_FULL_ENV: str(flag)})
    try:
        serve(runtime, "ep-full", {"blue": spec("blue")}, {"blue": 100})
        before = runtime.status()["endpoints"]["ep-full"]
        state_before = paths.state_file(runtime.root).read_text()
        filler = fill(runtime.root) if disk == "tmpfs" else flag.touch() or flag

        with pytest.raises(RuntimeRefusal) as refused:
            runtime.put_deployment("ep-full", "green", spec("green"))
        assert f"no space left on device: {runtime.root}" in str(refused.value)
        with pytest.raises(RuntimeRefusal) as refused:
            runtime.set_traffic("ep-full", {"blue": 0}, {})
        assert f"no space left on device: {paths.state_file(runtime.root)}" in str(refused.value)

        after = runtime.status()["endpoints"]["ep-full"]
        assert after["traffic"] == before["traffic"] and list(after["deployments"]) == ["blue"]
        assert paths.state_file(runtime.root).read_text() == state_before
        recorded = {w["pid"] for w in json.loads(paths.workers_file(runtime.root).read_text())["workers"]}
        running = {int(p) for p in subprocess.run(["pgrep", "-f", f"unix:{runtime.root / 'sock'}/"],
                                                  capture_output=True, text=True).stdout.split()}
        assert {os.getpgid(p) for p in running} <= recorded  # every worker running is recorded
        assert len(recorded) == 1  # blue's only: green's workers were stopped

        filler.unlink()
        runtime.put_deployment("ep-full", "green", spec("green"))  # space again: accepted
        assert "green" in json.loads(paths.state_file(runtime.root).read_text())["endpoints"]["ep-full"]["deployments"]
    finally:
        if disk == "tmpfs":
            stop_runtime(runtime)
            subprocess.run(["umount", "-l", str(tmp_path / "small")], check=False)


def test_an_existing_state_dir_is_not_chmod_ed_and_a_new_one_is_private(own_runtime, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    runtime = own_runtime(shared)
    assert shared.stat().st_mode & 0o777 == 0o755
    assert "is readable by other users (mode 755)" in runtime_log(runtime)
    assert (shared / "sock").stat().st_mode & 0o777 == 0o700
    fresh = own_runtime(tmp_path / "new" / "state")
    assert fresh.root.stat().st_mode & 0o777 == 0o700


# --- one stage change at a time ---------------------------------------------------------------

def mlcanary(*args, state: Path) -> subprocess.Popen:
    import sys

    return subprocess.Popen([sys.executable, "-m", "mlcanary.cli", *map(str, args), "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_local_ups_are_serialized_and_judged_from_the_state_the_first_left(tmp_path):
    """From stage 2, `local up stage-3 & local up stage-7` used to interleave and both say "applied".
    Now stage 7 waits for stage 3, is judged from stage 3's state (blue still holds 100 %: removing
    it is the mandatory removed-deployment-had-no-traffic) and is refused; the final state is stage
    3, the stage that last reported success."""
    from conftest import outside_the_project
    from test_local_cli import STAGE

    state = tmp_path / "state"
    try:
        first = mlcanary("local", "up", STAGE["2"], state=state)
        assert first.wait(180) == 0, first.communicate()
        slow_stage_3 = tmp_path / "stage-3-slow-green.yaml"  # green's init() takes 4 s: time to collide
        slow_stage_3.write_text(outside_the_project(STAGE["3"].read_text().replace(
            "file: ./samples/fraud-model/green-deployment.yml",
            f"code: {MODELS / 'code'}\n        scoringScript: score.py\n        model: {MODELS / 'model'}\n"
            "        environmentVariables: {INIT_SLEEP: '4'}")))
        stage_3 = mlcanary("local", "up", slow_stage_3, state=state)
        assert wait_for(lambda: "stage-3" in paths.stage_lock_file(state).read_text(), 60)
        stage_7 = mlcanary("local", "up", STAGE["7"], state=state)
        out_7, err_7 = stage_7.communicate(timeout=300)
        out_3, err_3 = stage_3.communicate(timeout=300)
        assert stage_3.returncode == 0 and stage_7.returncode == 1, (err_3, err_7)
        assert "waiting for the other stage change to finish (pid " in err_7 and "stage-3-slow-green.yaml" in err_7
        assert "removed-deployment-had-no-traffic" in out_7 and "nothing was changed" in err_7
        endpoint = RuntimeClient(state).status()["endpoints"]["fraud-scorer"]
        assert endpoint["traffic"] == {"blue": 100, "green": 0} and sorted(endpoint["deployments"]) == ["blue", "green"]  # stage 3
    finally:
        stop_runtime(RuntimeClient(state))


def test_local_up_no_wait_fails_at_once_while_another_stage_applies(tmp_path):
    from mlcanary.local_runtime.stage_lock import stage_lock
    from test_local_cli import STAGE

    state = tmp_path / "state"
    with stage_lock(state, "stage-3-green-dark.yaml"):
        started = time.monotonic()
        attempt = mlcanary("local", "up", "--no-wait", STAGE["1"], state=state)
        out, err = attempt.communicate(timeout=60)
    assert attempt.returncode == 1
    assert "another `mlcanary local up` is changing" in err and "stage-3-green-dark.yaml" in err
    assert "not waiting (--no-wait)" in err and "Traceback" not in err
    assert time.monotonic() - started < 30
    assert RuntimeClient(state).base_url() is None  # it changed nothing: not even a runtime was started


def test_invoke_whose_runtime_dies_mid_request_is_a_clean_error(own_runtime, tmp_path):
    runtime = own_runtime()
    serve(runtime, "ep-dies", {"slow": {**spec("slow", ALWAYS_SLEEP="30"), "requestTimeoutMs": 60000}}, {"slow": 100})
    request = tmp_path / "request.json"
    request.write_text("{}")
    invoking = mlcanary("invoke", "ep-dies", "--request-file", request, state=runtime.root)
    time.sleep(8)  # status and keys are fetched (on a loaded machine too); the request waits for the slow model
    os.kill(runtime.pid(), signal.SIGKILL)
    out, err = invoking.communicate(timeout=60)
    assert invoking.returncode == 1
    assert "error: no answer from endpoint 'ep-dies' (" in err and "is the local runtime still running?" in err
    assert "Traceback" not in err


def test_a_worker_that_cannot_restart_is_retried_less_and_less_often(client, tmp_path):
    code = tmp_path / "code"
    shutil.copytree(MODELS / "code", code)
    target = serve(client, "ep-backoff", {"blue": {**spec("blue", 2), "code": str(code)}}, {"blue": 100})
    code = pinned_code(client, "ep-backoff", "blue")
    shutil.rmtree(code)
    os.killpg(deployment_status(client, "ep-backoff", "blue")["pids"][0], signal.SIGKILL)
    time.sleep(6.5)
    assert deployment_status(client, "ep-backoff", "blue")["restarts"] <= 4  # tries after 0, 1, 3 s (then 7, 15...)
    assert f"restarting a worker of ep-backoff/blue failed (next try in 4 s): code folder '{code}' does not exist" in (
        runtime_log(client))
    assert [score(target).status_code for _ in range(5)] == [200] * 5  # the other instance serves
    client.delete_endpoint("ep-backoff")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_local_up_interrupted_while_waiting_for_another_stage_changes_nothing(tmp_path, sig):
    from test_local_cli import STAGE

    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib; from mlcanary.local_runtime.stage_lock import stage_lock\n"
         "with stage_lock(pathlib.Path(sys.argv[1]), 'stage-3-green-dark.yaml'):\n"
         "    print('held', flush=True); sys.stdin.read()", str(state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiting = mlcanary("local", "up", STAGE["1"], state=state)
        assert wait_for(lambda: waiting.poll() is None and _stage_lock_waiters(state), 60)
        waiting.send_signal(sig)
        out, err = waiting.communicate(timeout=60)
    finally:
        holder.communicate("", timeout=30)
    assert waiting.returncode == 130, (out, err)
    assert "waiting for the other stage change to finish" in err
    assert "cancelled before the stage changed anything" in err and "Traceback" not in err
    assert RuntimeClient(state).base_url() is None  # nothing started


def _stage_lock_waiters(state: Path) -> bool:
    """Some process other than the holder has the stage lock file open (it is blocked in flock)."""
    target = str(paths.stage_lock_file(state))
    holders = 0
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            holders += any(os.readlink(fd) == target for fd in fd_dir.iterdir())
    return holders >= 2


# --- round two (issue 15): abandoned requests, bounded concurrency and bodies, a quiet log ----------

def router_fds(client) -> int:
    return len(os.listdir(f"/proc/{client.pid()}/fd"))


def router_rss_mib(client) -> float:
    for line in Path(f"/proc/{client.pid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def burst(target, seconds: float, clients: int, body: bytes, pin: str | None = None) -> list[int]:
    """`clients` threads posting `body` back to back for `seconds`; the statuses (0: no answer)."""
    statuses, stop = [], threading.Event()
    headers = {"Authorization": f"Bearer {target['key']}", "Content-Type": "application/json"}
    if pin:
        headers["azureml-model-deployment"] = pin

    def one_client():
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    statuses.append(session.post(target["uri"], data=body, headers=headers, timeout=30).status_code)
                except requests.RequestException:
                    statuses.append(0)

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return statuses


def test_a_slow_mirror_under_load_gives_back_memory_and_descriptors_within_seconds(own_runtime):
    """Issue 15's repro, scaled down: a mirror whose run() takes 4 s, half the traffic copied to it,
    1 MiB bodies. Copies beyond what its instance takes at once are shed (429 in its mirror metrics);
    nothing piles up in the router or in the worker."""
    runtime = own_runtime(**SHORT_KEEPALIVES)  # kept-alive connections to workers end 1 s after the burst
    target = serve(runtime, "ep-slowmirror", {
        "blue": {**spec("blue"), "maxConcurrentRequestsPerInstance": 8}, "green": spec("green", ALWAYS_SLEEP="4"),
    }, {"blue": 100, "green": 0}, {"green": 50})
    body = json.dumps({"x": "a" * (1024 * 1024)}).encode()
    assert score(target).status_code == 200
    fds_before, rss_before = router_fds(runtime), router_rss_mib(runtime)
    statuses = burst(target, 4.0, 8, body)
    assert statuses and set(statuses) == {200}
    assert wait_for(lambda: router_fds(runtime) <= fds_before + 2, 8), (fds_before, router_fds(runtime))
    assert wait_for(lambda: router_rss_mib(runtime) <= rss_before + 12, 8), (rss_before, router_rss_mib(runtime))
    green = runtime.status()["endpoints"]["ep-slowmirror"]["deployments"]["green"]
    assert green["metrics"]["mirrored"] >= 1 and green["metrics"]["mirrorShed"] > 20 and green["healthy"] == 1
    text = runtime.metrics()
    assert 'mlcanary_mirrored_requests_total{endpoint="ep-slowmirror",deployment="green",code="429"}' in text
    # The worker is not busy with hundreds of abandoned copies: a pinned request is served in its 4 s.
    assert score(target, pin="green", timeout=30).status_code == 200


def test_requests_beyond_an_instances_concurrency_wait_the_queue_wait_then_get_429(client):
    target = serve(client, "ep-busy", {"slow": {**spec("slow", ALWAYS_SLEEP="1.5"), "maxQueueWaitMs": 200}},
                   {"slow": 100})
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(score(target))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200, 429, 429]
    refused = next(a for a in answers if a.status_code == 429).json()["message"]
    assert refused.startswith("Too many pending requests: deployment 'slow' takes 1 request(s) at once per instance "
                              "(maxConcurrentRequestsPerInstance) and none was free within 200 ms (maxQueueWaitMs)")
    client.delete_endpoint("ep-busy")


def test_a_request_whose_client_went_away_closes_its_upstream_connection_and_frees_its_slot(client):
    target = serve(client, "ep-gone", {"blue": {**spec("blue"), "requestTimeoutMs": 60000}}, {"blue": 100})
    assert score(target).status_code == 200
    with pytest.raises(requests.Timeout):
        score(target, {"sleep": 20}, timeout=0.5)  # the client gives up; run() goes on sleeping 20 s
    # Its slot is free (no 429 after the 500 ms queue wait) and the next request is not queued behind
    # the abandoned one in the worker: it is answered long before that run() ends.
    answer = score(target, {"x": 2}, timeout=10)
    assert answer.status_code == 200 and answer.json()["echo"] == {"x": 2}
    client.delete_endpoint("ep-gone")


MALFORMED = {
    "key_in_a_bad_header": b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %KEY%\x01\r\nContent-Length: 2\r\n\r\n{}",
    "key_in_a_bad_header_name": b"POST /score HTTP/1.1\r\nHost: x\r\nAuth(%KEY%): x\r\nContent-Length: 2\r\n\r\n{}",
    "bad_method": b"P@ST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %KEY%\r\n\r\n",
    "bad_content_length": b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %KEY%\r\nContent-Length: %KEY%\r\n\r\n",
    "bad_chunk_size": b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %KEY%\r\nTransfer-Encoding: chunked\r\n\r\n%KEY%\r\n",
    "header_line_too_long": b"POST /score HTTP/1.1\r\nHost: x\r\nX-Long: %KEY%" + b"a" * 20000 + b"\r\n\r\n",
    "bad_version": b"POST /score HTTP/9.%KEY%\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_is_a_fixed_400_counted_never_logged_nor_echoed(endpoint, client, case):
    key = endpoint["key"]
    answer = raw_exchange(port_of(endpoint), MALFORMED[case].replace(b"%KEY%", key.encode()))
    status_line, _, rest = answer.partition(b"\r\n")
    assert re.fullmatch(rb"HTTP/1\.[01] 400 Bad Request", status_line), answer[:200]
    assert rest.endswith(b"400 Bad Request: the request is not valid HTTP/1.1"), rest[-200:]
    assert key.encode() not in answer
    log = runtime_log(client)
    assert key not in log and "Traceback" not in log and "Error handling request" not in log
    assert re.search(r'mlcanary_malformed_requests_total\{endpoint="ep-data"\} [1-9]', client.metrics())


def test_a_flood_of_malformed_requests_leaves_the_audit_lines_and_the_log_size_alone(endpoint, client):
    client.set_traffic("ep-data", {"blue": 100}, {})  # an audit line
    size = paths.runtime_log(client.root).stat().st_size
    request = MALFORMED["key_in_a_bad_header"].replace(b"%KEY%", endpoint["key"].encode())
    for _ in range(2000):
        raw_exchange(port_of(endpoint), request)
    assert paths.runtime_log(client.root).stat().st_size - size < 300  # a note a minute at most, not a line each
    assert "change accepted: PUT /endpoints/ep-data/traffic" in runtime_log(client)
    assert re.search(r'mlcanary_malformed_requests_total\{endpoint="ep-data"\} \d{4}', client.metrics())


@pytest.mark.parametrize("encoded, problem", [
    (gzip.compress(b'{"x": 1}')[:-6], "the compressed stream is truncated"),
    (gzip.compress(b'{"x": 1}') + b"garbage", "bytes follow the end of the compressed stream"),
    (gzip.compress(b'{"x": 1}') + gzip.compress(b'{"y": 2}'), "bytes follow the end of the compressed stream"),
], ids=["truncated", "trailing_garbage", "second_member"])
def test_a_gzip_body_that_is_not_one_complete_stream_is_400(endpoint, encoded, problem):
    headers = {"Authorization": f"Bearer {endpoint['key']}", "Content-Type": "application/json",
               "Content-Encoding": "gzip"}
    answer = requests.post(endpoint["uri"], data=encoded, headers=headers, timeout=30)
    assert answer.status_code == 400 and problem in answer.json()["message"]


def test_bodies_in_flight_are_capped_and_the_excess_is_refused_with_503(own_runtime):
    from mlcanary.local_runtime.bodies import BODIES_IN_FLIGHT_ENV

    runtime = own_runtime(**{BODIES_IN_FLIGHT_ENV: "64"})
    target = serve(runtime, "ep-bodies", {"slow": {**spec("slow", ALWAYS_SLEEP="1"),
                                                   "maxConcurrentRequestsPerInstance": 8, "maxQueueWaitMs": 5000,
                                                   "requestTimeoutMs": 20000}}, {"slow": 100})
    body = json.dumps({"x": "a" * (40 * 1024 * 1024)}).encode()  # 40 MB: one fits in 64 MiB, two do not
    rss_before = router_rss_mib(runtime)
    answers, peak = [], [0.0]
    threads = [threading.Thread(target=lambda: answers.append(score(target, json.loads(body), timeout=60)))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak[0] = max(peak[0], router_rss_mib(runtime))
        time.sleep(0.02)
    statuses = sorted(a.status_code for a in answers)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["Retry-After"] == "1" and BODIES_IN_FLIGHT_ENV in refused.json()["message"]
    assert peak[0] - rss_before < 200, (rss_before, peak[0])  # six at once: 240 MB of bodies, as much echoed back


# --- a hostile state directory (issue 15) ---------------------------------------------------------

OTHER_UID = 54321  # no such user here: a folder chown-ed to it is another user's


def victim(tmp_path: Path) -> Path:
    """One of the owner's private files, which a planted link would make the runtime overwrite."""
    secret = tmp_path / "owners-secret"
    secret.write_text("precious")
    secret.chmod(0o600)
    return secret


def test_a_state_dir_another_user_owns_is_refused_and_nothing_is_written_in_it(tmp_path):
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    os.chown(root, OTHER_UID, OTHER_UID)
    with pytest.raises(NotRunning) as refused:
        RuntimeClient(root).ensure_running()
    assert f"state directory {root} is owned by uid {OTHER_UID}, not by you" in str(refused.value)
    assert "use a folder of your own (--state-dir or $MLCANARY_STATE_DIR)" in str(refused.value)
    assert list(root.iterdir()) == []


def test_a_state_dir_others_can_write_is_refused_and_its_planted_links_are_not_followed(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    secret = victim(tmp_path)
    os.symlink(secret, root / "runtime.stderr")
    os.symlink(secret, root / "runtime.log")
    with pytest.raises(NotRunning) as refused:
        RuntimeClient(root).ensure_running()
    assert f"state directory {root} can be written by other users (mode 777)" in str(refused.value)
    assert f"run `chmod go-w {root}` (better, `chmod 700 {root}`)" in str(refused.value)
    assert secret.read_text() == "precious"


def test_a_state_dir_inside_a_folder_others_can_write_is_refused(tmp_path):
    """Others could rename the state directory away and put their own in its place (no sticky bit)."""
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    root = parent / "state"
    root.mkdir(mode=0o700)
    with pytest.raises(NotRunning) as refused:
        RuntimeClient(root).ensure_running()
    assert f"lies in {parent}, which other users can write (mode 777)" in str(refused.value)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("planted", ["runtime.stderr", "runtime.log", "runtime.lock"])
def test_a_link_in_a_private_state_dir_is_not_followed(tmp_path, planted):
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    secret = victim(tmp_path)
    os.symlink(secret, root / planted)
    with pytest.raises(NotRunning) as refused:
        RuntimeClient(root).ensure_running()
    assert f"{root / planted}: is a symbolic link; the runtime does not follow links in its state directory" in str(
        refused.value)
    assert secret.read_text() == "precious" and secret.stat().st_mode & 0o777 == 0o600


def test_a_folder_squatting_the_old_socket_folder_name_cannot_block_the_runtime(own_runtime, tmp_path):
    """Worker sockets of a state directory whose path is too long for them go to a temp folder; its
    name used to be predictable (mlcanary-<uid>-<hash of the path>), so another user could take it first."""
    import hashlib
    import tempfile

    deep = tmp_path / ("d" * 90) / "state"
    squatted = Path(tempfile.gettempdir()) / f"mlcanary-{os.getuid()}-{hashlib.sha256(str(deep).encode()).hexdigest()[:16]}"
    squatted.mkdir(mode=0o777)
    os.chown(squatted, OTHER_UID, OTHER_UID)
    try:
        runtime = own_runtime(deep)
        target = serve(runtime, "ep-squat", {"blue": spec("blue")}, {"blue": 100})
        assert score(target).status_code == 200
        folder = Path(deployment_status(runtime, "ep-squat", "blue")["sockets"][0]).parent
        assert folder != squatted and folder.name.startswith(f"mlcanary-{os.getuid()}-")
        assert folder.stat().st_uid == os.getuid() and folder.stat().st_mode & 0o777 == 0o700
        stop_runtime(runtime)
        assert not folder.exists()
    finally:
        squatted.rmdir()


# --- state.json and workers.json are checked like a stage file (issue 15) --------------------------

def valid_state() -> dict:
    deployment = {"code": str(MODELS / "code"), "scoringScript": "score.py", "model": str(MODELS / "model"),
                  "instanceCount": 1, "environmentVariables": {"MODEL_NAME": "blue"}}
    return {"endpoints": {"ep-x": {
        "authMode": "key", "keys": {"primary": "p" * 43, "secondary": "s" * 43}, "port": 40123,
        "deployments": {"blue": deployment, "green": dict(deployment)},
        "traffic": {"blue": 100, "green": 0}, "mirrorTraffic": {}}}}


def _set(path: str, value):
    def change(state: dict) -> dict:
        *parents, last = path.split("/")
        node = state
        for key in parents:
            node = node[key]
        node[last] = value
        return state
    return change


EP = "endpoints/ep-x"
STATE_CASES = {
    "port_99999": (_set(f"{EP}/port", 99999), "endpoints.ep-x.port: a TCP port is 1 to 65535, got 99999"),
    "instance_count_0": (_set(f"{EP}/deployments/blue/instanceCount", 0),
                         "endpoints.ep-x.deployments.blue.instanceCount: instance count must be a whole number from 1 to 50, got 0"),
    "instance_count_51": (_set(f"{EP}/deployments/blue/instanceCount", 51), "from 1 to 50, got 51"),
    "traffic_250_minus_150": (_set(f"{EP}/traffic", {"blue": 250, "green": -150}), "endpoints.ep-x.traffic"),
    "traffic_to_a_missing_deployment": (_set(f"{EP}/traffic", {"blue": 50, "ghost": 50}),
                                        "live traffic names unknown deployment 'ghost'"),
    "two_mirror_targets": (_set(f"{EP}/mirrorTraffic", {"blue": 10, "green": 10}), "endpoints.ep-x.mirrorTraffic"),
    "traffic_not_a_number": (_set(f"{EP}/traffic", {"blue": "x"}), "endpoints.ep-x.traffic.blue: input should be a valid integer"),
    "integer_environment_value": (_set(f"{EP}/deployments/blue/environmentVariables", {"N": 5}),
                                  "endpoints.ep-x.deployments.blue.environmentVariables.N: input should be a valid string"),
    "string_request_timeout": (_set(f"{EP}/deployments/blue/requestTimeoutMs", "1000"),
                               "endpoints.ep-x.deployments.blue.requestTimeoutMs: input should be a valid integer"),
    "huge_probe_period": (_set(f"{EP}/deployments/blue/readinessProbe", {"period": 10**9}),
                          "endpoints.ep-x.deployments.blue.readinessProbe.period: period must be a whole number from 1 to 3600"),
    "endpoint_name_leaving_the_folder": (lambda s: {"endpoints": {"../../x": s["endpoints"]["ep-x"]}},
                                         "endpoints.../../x: '../../x' is not a valid endpoint name"),
    "deep_nesting": (None, "is nested too deeply to be a runtime record"),
    "dev_zero": (None, "is a device, not a regular file"),
    "fifo": (None, "is a named pipe (FIFO), not a regular file"),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_a_state_file_breaking_a_rule_is_refused_at_start_naming_the_field_and_kept(tmp_path, case):
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    state_path = paths.state_file(root)
    change, message = STATE_CASES[case]
    if case == "deep_nesting":
        state_path.write_text('{"endpoints": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif case == "dev_zero":
        os.symlink("/dev/zero", state_path)
    elif case == "fifo":
        os.mkfifo(state_path)
    else:
        state_path.write_text(json.dumps(change(valid_state())))
    before = os.lstat(state_path)
    runtime = RuntimeClient(root)
    try:
        with pytest.raises(NotRunning) as refused:
            runtime.ensure_running()
    finally:
        stop_runtime(runtime)
    assert f"state file {state_path}" in str(refused.value) and message in str(refused.value), str(refused.value)
    assert "the file was kept as it is" in str(refused.value)
    after = os.lstat(state_path)
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (before.st_mode, before.st_size, before.st_mtime_ns)


def test_a_valid_state_file_still_starts(tmp_path):
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    paths.state_file(root).write_text(json.dumps(valid_state()))
    runtime = RuntimeClient(root)
    try:
        runtime.ensure_running()
        assert runtime.status()["endpoints"]["ep-x"]["deployments"]["blue"]["state"] == "ready"
    finally:
        stop_runtime(runtime)


@pytest.mark.parametrize("document, message", [
    ({"pgids": [1234]}, "workers.json is not a runtime state: socketDir: required"),
    ({"socketDir": "/etc", "workers": []}, "socketDir: '/etc' is neither the state directory's sock folder"),
    ({"socketDir": "SOCK", "workers": [{"pid": "1", "started": 0, "socket": "SOCK/a.sock"}]},
     "workers.0.pid: input should be a valid integer"),
    ({"socketDir": "SOCK", "workers": [{"pid": 1234, "started": 0, "socket": "/elsewhere/a.sock"}]},
     "workers.0.socket: not in socketDir"),
], ids=["old_format", "foreign_socket_dir", "pid_not_a_number", "socket_elsewhere"])
def test_a_workers_file_that_is_not_one_is_refused_at_start_and_kept(tmp_path, document, message):
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    text = json.dumps(document).replace("SOCK", str(root / "sock"))
    paths.workers_file(root).write_text(text)
    runtime = RuntimeClient(root)
    try:
        with pytest.raises(NotRunning) as refused:
            runtime.ensure_running()
    finally:
        stop_runtime(runtime)
    assert message in str(refused.value) and "the file was kept as it is" in str(refused.value), str(refused.value)
    assert paths.workers_file(root).read_text() == text


# --- smaller points (issue 15) --------------------------------------------------------------------

@pytest.mark.parametrize("disk", ["tmpfs", "injected_fault"])
def test_a_full_disk_gives_a_clean_refusal_from_the_stage_lock(tmp_path, disk):
    from mlcanary.local_runtime.stage_lock import StageLocked, stage_lock

    root = tmp_path / "small"
    fault = {}
    if disk == "tmpfs":
        if not mount_small_disk(root):
            pytest.skip("mounting a tmpfs is not allowed here; the injected_fault case covers the same path")
        fill(root)
    else:
        root.mkdir(mode=0o700)
        (tmp_path / "disk-is-full").touch()
        fault = {FAULT_DISK_FULL_ENV: str(tmp_path / "disk-is-full")}
    try:
        with environment(**fault), pytest.raises(StageLocked) as refused, stage_lock(root, "stage-1.yaml"):
            raise AssertionError("the stage lock was taken on a full disk")
        assert str(refused.value) == (f"cannot write the stage lock {paths.stage_lock_file(root)}: no space left on "
                                      "device; nothing was changed: free some space and apply the stage again")
    finally:
        if disk == "tmpfs":
            subprocess.run(["umount", "-l", str(root)], check=False)


def test_with_every_instance_dead_a_request_waits_for_a_restart_within_its_timeout(client):
    target = serve(client, "ep-dead", {"blue": {**spec("blue"), "requestTimeoutMs": 30000}}, {"blue": 100})
    master = deployment_status(client, "ep-dead", "blue")["pids"][0]
    os.killpg(master, signal.SIGKILL)  # the only instance is gone; supervision starts it again
    answer = score(target, timeout=60)
    assert answer.status_code == 200 and answer.json()["name"] == "blue"
    assert deployment_status(client, "ep-dead", "blue")["restarts"] == 1
    client.delete_endpoint("ep-dead")


def test_3000_connections_at_once_are_accepted_without_a_reset(own_runtime):
    runtime = own_runtime()  # the default client keep-alive (75 s): no connection here idles that long
    runtime.put_endpoint("ep-backlog", "key")
    port = port_of({"uri": runtime.status()["endpoints"]["ep-backlog"]["scoringUri"]})
    request = b"GET /score HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    connections, failures = [], []
    try:
        for _ in range(3000):  # all at once, before the router can accept them: the listen backlog holds them
            connection = socket.socket()
            connection.setblocking(False)
            connection.connect_ex(("127.0.0.1", port))
            connections.append(connection)
        for connection in connections:
            connection.settimeout(30)
            try:
                connection.sendall(request)
            except OSError as err:
                failures.append(repr(err))
        for connection in connections:
            try:
                answer = connection.recv(64)
                if not answer.startswith(b"HTTP/1.1 405"):
                    failures.append(answer)
            except OSError as err:
                failures.append(repr(err))
    finally:
        for connection in connections:
            connection.close()
    assert failures == [], (len(failures), failures[:3])


def test_a_decompression_outliving_its_cancelled_request_cannot_hold_budget():
    """The request is cancelled (its client went away) while a thread still inflates its body: the
    charges are released with the request, and the thread is stopped at its next step."""
    from mlcanary.local_runtime.bodies import BodyBudget, Held, OverBudget, decompress

    budget = BodyBudget(300 * 1024 * 1024)
    held = Held(budget)
    held.charge(1024)  # the compressed body, as read
    held.done()  # the request ends (cancelled)
    with pytest.raises(OverBudget):
        decompress(gzip_bomb(64 * 1024 * 1024), "gzip", held)
    assert budget.used == 0
