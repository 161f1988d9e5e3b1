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
    assert "is not a runtime state: expected an object with an `endpoints` object" in result.output
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


def mount_small_disk(where: Path) -> bool:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(where)],
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
        recorded = set(json.loads(paths.workers_file(runtime.root).read_text())["pgids"])
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
    serve(runtime, "ep-dies", {"slow": {**spec("slow", ALWAYS_SLEEP="5"), "requestTimeoutMs": 20000}}, {"slow": 100})
    request = tmp_path / "request.json"
    request.write_text("{}")
    invoking = mlcanary("invoke", "ep-dies", "--request-file", request, state=runtime.root)
    time.sleep(2)  # status and keys are fetched; the request is waiting for the slow model
    os.kill(runtime.pid(), signal.SIGKILL)
    out, err = invoking.communicate(timeout=60)
    assert invoking.returncode == 1
    assert "error: no answer from endpoint 'ep-dies' (ConnectionError)" in err and "Traceback" not in err


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
