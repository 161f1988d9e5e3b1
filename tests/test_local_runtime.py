"""The local runtime for real: a runtime process, azureml-inference-server-http workers, HTTP on 127.0.0.1.

One runtime and one endpoint serve the module (workers are reused where that does not weaken a
test); tests that break things (crashes, failing init) use their own endpoints or runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from mlcanary.local_runtime import paths
from mlcanary.local_runtime.client import RuntimeClient, RuntimeRefusal
from mlcanary.local_runtime.protocol import CONTROL_TOKEN_HEADER, PIN_HEADER
from mlcanary.local_runtime.sandbox import stop

MODELS = Path(__file__).parent / "models"


def spec(name: str, count: int = 1, **env: str) -> dict:
    return {
        "code": str(MODELS / "code"), "scoringScript": "score.py", "model": str(MODELS / "model"),
        "instanceCount": count, "environmentVariables": {"MODEL_NAME": name, **env},
    }


def stop_runtime(client: RuntimeClient) -> None:
    """Stop the runtime and its recorded workers, whatever state it is in (the product's own clean-up)."""
    stop(client)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    runtime = RuntimeClient(tmp_path_factory.mktemp("state"))
    runtime.ensure_running()
    yield runtime
    stop_runtime(runtime)


@pytest.fixture(scope="module")
def endpoint(client):
    """Endpoint `ep-main`: dep-a (2 instances) and dep-b live 90/10, dep-dark dark, dep-slow (1 s timeout)."""
    return serve(client, "ep-main", {
        "dep-a": spec("a", 2), "dep-b": spec("b"), "dep-dark": spec("dark"),
        "dep-slow": {**spec("slow"), "requestTimeoutMs": 1000},
    }, {"dep-a": 90, "dep-b": 10, "dep-dark": 0, "dep-slow": 0})


def serve(client, name: str, deployments: dict, traffic: dict, mirror: dict | None = None) -> dict:
    """Create endpoint `name` with `deployments` (name -> spec) and traffic; its URI, key and client."""
    client.put_endpoint(name, "key")
    for deployment, deployment_spec in deployments.items():
        client.put_deployment(name, deployment, deployment_spec)
    client.set_traffic(name, traffic, mirror or {})
    status = client.status()["endpoints"][name]
    return {"uri": status["scoringUri"], "key": client.keys(name)["primaryKey"], "client": client}


def score(endpoint, body=None, key=None, pin=None, timeout=30):
    headers = {"Content-Type": "application/json"}
    if key is not False:
        headers["Authorization"] = f"Bearer {key or endpoint['key']}"
    if pin:
        headers[PIN_HEADER] = pin
    return requests.post(endpoint["uri"], data=json.dumps(body or {"x": 1}), headers=headers, timeout=timeout)


@contextlib.contextmanager
def steady_load(target, clients: int = 4):
    """Clients sending requests back to back until the block ends; yields (status, name) answers."""
    results, stop = [], threading.Event()

    def one_client():
        session = requests.Session()
        while not stop.is_set():
            answer = session.post(target["uri"], data="{}", timeout=30, headers={"Authorization": f"Bearer {target['key']}"})
            results.append((answer.status_code, answer.json().get("name") if answer.ok else answer.text))

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def metrics_of(client, endpoint_name, deployment):
    return client.status()["endpoints"][endpoint_name]["deployments"][deployment]["metrics"]


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# --- data plane ---------------------------------------------------------------------------------

def test_scores_with_the_real_inference_server(endpoint):
    answer = score(endpoint, {"x": 7}, pin="dep-a")
    assert answer.status_code == 200
    assert answer.json() == {"name": "a", "weights": {"w": [1, 2, 3]}, "echo": {"x": 7}}
    assert answer.headers[PIN_HEADER] == "dep-a"


@pytest.mark.parametrize("key", [False, "wrong-key"], ids=["no_key", "wrong_key"])
def test_requests_without_a_valid_key_get_401(endpoint, key):
    answer = score(endpoint, key=key)
    assert answer.status_code == 401
    assert "Authorization: Bearer <key>" in answer.json()["message"]


def test_secondary_key_works_too(endpoint):
    secondary = endpoint["client"].keys("ep-main")["secondaryKey"]
    assert score(endpoint, key=secondary).status_code == 200


def test_live_traffic_splits_90_10(endpoint):
    answered = [score(endpoint).headers[PIN_HEADER] for _ in range(100)]
    assert answered.count("dep-a") == 90 and answered.count("dep-b") == 10


def test_header_reaches_a_dark_deployment(endpoint):
    answer = score(endpoint, pin="dep-dark")
    assert answer.status_code == 200 and answer.json()["name"] == "dark"


def test_header_to_unknown_deployment_is_404(endpoint):
    answer = score(endpoint, pin="dep-nope")
    assert answer.status_code == 404
    assert answer.json()["message"] == ("the deployment named in the azureml-model-deployment header is not one of "
                                        "endpoint 'ep-main': dep-a, dep-b, dep-dark, dep-slow")  # header values are never echoed


def test_model_error_is_424_with_the_model_status(endpoint):
    answer = score(endpoint, {"fail": True}, pin="dep-a")
    assert answer.status_code == 424
    assert answer.headers["ms-azureml-model-error-statuscode"] == "500"


def test_request_timeout_is_408(endpoint):
    started = time.monotonic()
    answer = score(endpoint, {"sleep": 3}, pin="dep-slow")
    assert answer.status_code == 408
    assert answer.json()["message"] == "request timed out after 1000 ms (requestTimeoutMs)"
    assert time.monotonic() - started < 2.5


def test_metrics_are_prometheus_text(endpoint):
    score(endpoint, pin="dep-b")
    text = endpoint["client"].metrics()
    assert re.search(r'^mlcanary_requests_total\{endpoint="ep-main",deployment="dep-b",code="200"\} \d+$', text, re.M)
    assert re.search(r'^mlcanary_request_duration_seconds_bucket\{endpoint="ep-main",deployment="dep-a",le="\+Inf"\} \d+$', text, re.M)
    assert "# TYPE mlcanary_mirrored_requests_total counter" in text


def test_logs_show_the_workers_output(endpoint):
    text = endpoint["client"].logs("ep-main", "dep-a", 200)
    assert "==> instance-0.log <==" in text and "==> instance-1.log <==" in text
    assert "POST /score" in text


def test_keys_never_reach_the_runtime_log(endpoint, client):
    score(endpoint)
    log = paths.runtime_log(client.root).read_text()
    assert endpoint["key"] not in log


def test_everything_listens_on_loopback_only_and_workers_on_private_unix_sockets(endpoint, client):
    """Only the runtime has TCP ports (control plane, scoring URIs), on 127.0.0.1; workers listen on
    Unix sockets in a folder only this user can enter, so nothing reaches a worker without the key."""
    worker_groups = [w["pid"] for w in json.loads(paths.workers_file(client.root).read_text())["workers"]]
    worker_pids = set()
    for group in worker_groups:
        worker_pids |= set(subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split())
    runtime_pid = str(client.pid())
    tcp = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    assert not [line for line in tcp if any(f"pid={pid}," in line for pid in worker_pids)]
    ours = [line for line in tcp if f"pid={runtime_pid}," in line]
    assert len(ours) >= 2 and all(line.split()[3].startswith("127.0.0.1:") for line in ours), ours
    unix = subprocess.run(["ss", "-lxpH"], capture_output=True, text=True).stdout.splitlines()
    sockets = {line.split()[4] for line in unix if any(f"pid={pid}," in line for pid in worker_pids)}
    workers = sum(d["instances"] for d in client.status()["endpoints"]["ep-main"]["deployments"].values())
    assert len(sockets) >= workers
    folders = {Path(path).parent for path in sockets}
    assert folders == {client.root / "sock"}
    assert (client.root / "sock").stat().st_mode & 0o777 == 0o700


# --- mirror -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mirrored(client):
    """Endpoint with live `main` and a mirror target that always fails and sleeps 2 s."""
    return serve(client, "ep-mirror", {
        "main": spec("main"),
        "shadow": {**spec("shadow", ALWAYS_FAIL="1", ALWAYS_SLEEP="2"), "requestTimeoutMs": 10000},
    }, {"main": 100, "shadow": 0}, {"shadow": 10})


def test_mirror_copies_ten_percent_and_the_client_never_waits_or_sees_it(mirrored, client):
    before = metrics_of(client, "ep-mirror", "shadow")["mirrored"]
    started = time.monotonic()
    answers = [score(mirrored) for _ in range(50)]
    elapsed = time.monotonic() - started
    assert all(a.status_code == 200 and a.json()["name"] == "main" for a in answers)
    assert elapsed < 2.0  # five mirror copies each take 2 s and fail; the client waited for none
    assert wait_for(lambda: metrics_of(client, "ep-mirror", "shadow")["mirrored"] - before == 5)
    shadow = metrics_of(client, "ep-mirror", "shadow")
    assert shadow["mirrorErrors"] >= 5 and shadow["requests"] == 0


def test_pinned_requests_are_not_mirrored(mirrored, client):
    before = metrics_of(client, "ep-mirror", "shadow")["mirrored"]
    for _ in range(30):
        assert score(mirrored, pin="main").status_code == 200
    time.sleep(0.3)
    assert metrics_of(client, "ep-mirror", "shadow")["mirrored"] == before


# --- control plane rules ------------------------------------------------------------------------

def test_traffic_to_unknown_deployment_is_refused_and_changes_nothing(endpoint, client):
    before = client.status()["endpoints"]["ep-main"]["traffic"]
    with pytest.raises(RuntimeRefusal) as refused:
        client.set_traffic("ep-main", {"dep-a": 50, "ghost": 50}, {})
    assert refused.value.status == 400
    assert "traffic.ghost: live traffic names unknown deployment 'ghost'" in str(refused.value)
    assert client.status()["endpoints"]["ep-main"]["traffic"] == before


@pytest.mark.parametrize(
    "traffic, mirror, message",
    [
        ({"dep-a": 80, "dep-b": 10}, {}, "live traffic must sum to 100 (or 0 when nothing is live), got 90"),
        ({"dep-a": 100}, {"dep-dark": 60}, "mirror traffic percent must be a whole number from 0 to 50, got 60"),
        ({"dep-a": 90, "dep-b": 10}, {"dep-b": 10}, "deployment 'dep-b' has live traffic (10%) and mirror traffic (10%)"),
    ],
    ids=["sum_not_100", "mirror_above_50", "live_and_mirrored"],
)
def test_azure_traffic_rules_apply_locally(endpoint, client, traffic, mirror, message):
    with pytest.raises(RuntimeRefusal, match=re.escape(message)):
        client.set_traffic("ep-main", traffic, mirror)


def test_deleting_a_deployment_with_live_traffic_is_refused(endpoint, client):
    with pytest.raises(RuntimeRefusal) as refused:
        client.delete_deployment("ep-main", "dep-b")
    assert refused.value.status == 409
    assert "deployment 'dep-b' still has 10% live and 0% mirror traffic; set its traffic to 0 first" in str(refused.value)
    assert score(endpoint, pin="dep-b").status_code == 200


def test_invalid_deployment_is_refused(endpoint, client):
    with pytest.raises(RuntimeRefusal, match=r"instanceCount: instance count must be a whole number from 1 to 50, got 0"):
        client.put_deployment("ep-main", "dep-zero", spec("zero", 0))
    with pytest.raises(RuntimeRefusal, match=r"scoringScript: 'nope.py' not found in"):
        client.put_deployment("ep-main", "dep-x", {**spec("x"), "scoringScript": "nope.py"})
    assert "dep-zero" not in client.status()["endpoints"]["ep-main"]["deployments"]


def test_failing_init_is_reported_with_the_log_tail_and_traffic_stays(endpoint, client):
    before = client.status()["endpoints"]["ep-main"]
    with pytest.raises(RuntimeRefusal) as refused:
        client.put_deployment("ep-main", "dep-broken", spec("broken", FAIL_INIT="1"))
    assert refused.value.status == 422
    assert "failed to start: init() failed (worker exit code 3)" in str(refused.value)
    assert "init failed on purpose" in refused.value.body["logTail"]
    after = client.status()["endpoints"]["ep-main"]
    assert "dep-broken" not in after["deployments"] and after["traffic"] == before["traffic"]


# --- crashes ------------------------------------------------------------------------------------

def test_a_worker_that_dies_is_restarted_and_requests_keep_succeeding(client):
    target = serve(client, "ep-crash", {"only": spec("only", 2)}, {"only": 100})
    victim = client.status()["endpoints"]["ep-crash"]["deployments"]["only"]["pids"][0]
    os.killpg(victim, signal.SIGKILL)
    results = [score(target).status_code for _ in range(40)]
    assert results == [200] * 40  # the other instance serves while one is down
    assert wait_for(lambda: client.status()["endpoints"]["ep-crash"]["deployments"]["only"]["restarts"] >= 1)
    assert wait_for(lambda: client.status()["endpoints"]["ep-crash"]["deployments"]["only"]["healthy"] == 2, 30)
    client.delete_endpoint("ep-crash")


def test_runtime_crash_and_restart_brings_back_endpoints_deployments_and_traffic(tmp_path):
    runtime = RuntimeClient(tmp_path / "state")
    runtime.ensure_running()
    try:
        serve(runtime, "ep-restart", {"blue": spec("blue"), "green": spec("green")}, {"blue": 70, "green": 30})
        keys = runtime.keys("ep-restart")
        before = runtime.status()["endpoints"]["ep-restart"]
        old_workers = [w["pid"] for w in json.loads(paths.workers_file(runtime.root).read_text())["workers"]]

        os.kill(runtime.pid(), signal.SIGKILL)  # a crash: no clean shutdown
        assert wait_for(lambda: runtime.base_url() is None)
        runtime.ensure_running()

        after = runtime.status()["endpoints"]["ep-restart"]
        assert after["traffic"] == {"blue": 70, "green": 30}
        assert {n: d["state"] for n, d in after["deployments"].items()} == {"blue": "ready", "green": "ready"}
        assert runtime.keys("ep-restart") == keys
        assert after["scoringUri"] == before["scoringUri"]
        for pgid in old_workers:  # the crashed runtime's workers were cleaned up
            assert wait_for(lambda pgid=pgid: not Path(f"/proc/{pgid}").exists(), 10)
        target = {"uri": after["scoringUri"], "key": keys["primaryKey"]}
        answered = [score(target).json()["name"] for _ in range(10)]
        assert answered.count("blue") == 7 and answered.count("green") == 3
    finally:
        stop_runtime(runtime)


# --- changes under traffic ----------------------------------------------------------------------

def test_traffic_changes_lose_no_request(client):
    target = serve(client, "ep-flip", {"left": spec("left"), "right": spec("right")}, {"left": 100, "right": 0})
    with steady_load(target) as results:
        for i in range(20):
            share = 100 if i % 2 else 0
            client.set_traffic("ep-flip", {"left": share, "right": 100 - share}, {})
            time.sleep(0.05)
    assert len(results) > 100 and {status for status, _ in results} == {200}
    assert {name for _, name in results} == {"left", "right"}
    client.delete_endpoint("ep-flip")


def test_a_removed_deployment_drains_before_it_stops(client):
    target = serve(client, "ep-drain", {"keep": spec("keep"), "slowpoke": {**spec("slowpoke", ALWAYS_SLEEP="1.5"), "requestTimeoutMs": 10000}}, {"keep": 100, "slowpoke": 0})
    answer = {}
    in_flight = threading.Thread(target=lambda: answer.update(r=score(target, pin="slowpoke")))
    in_flight.start()
    time.sleep(0.3)  # the pinned request is inside the slow worker now
    started = time.monotonic()
    client.delete_deployment("ep-drain", "slowpoke")
    waited = time.monotonic() - started
    in_flight.join()
    assert answer["r"].status_code == 200 and answer["r"].json()["name"] == "slowpoke"
    assert waited >= 0.9  # the delete waited for the request to finish
    assert score(target, pin="slowpoke").status_code == 404
    client.delete_endpoint("ep-drain")


def test_replacing_a_live_deployment_under_load_loses_no_request(client):
    target = serve(client, "ep-roll", {"model": spec("v1", 2)}, {"model": 100})
    with steady_load(target) as results:
        time.sleep(0.3)
        client.put_deployment("ep-roll", "model", spec("v2", 2))  # new settings: a new set of instances takes over
        time.sleep(0.5)
    assert {status for status, _ in results} == {200}, [r for r in results if r[0] != 200][:3]
    names = [name for _, name in results]
    assert names[0] == "v1" and names[-1] == "v2"
    client.delete_endpoint("ep-roll")


def test_the_control_plane_answers_only_its_owner(endpoint, client):
    info = json.loads(paths.runtime_file(client.root).read_text())
    url = f"http://127.0.0.1:{info['controlPort']}"
    assert paths.runtime_file(client.root).stat().st_mode & 0o777 == 0o600
    assert client.root.stat().st_mode & 0o777 == 0o700
    assert requests.get(f"{url}/health", timeout=5).status_code == 200  # liveness needs no token
    for path in ("/status", "/endpoints/ep-main/keys", "/metrics"):
        assert requests.get(f"{url}{path}", timeout=5).status_code == 401
        assert requests.get(f"{url}{path}", headers={CONTROL_TOKEN_HEADER: "guess"}, timeout=5).status_code == 401
    assert requests.get(f"{url}/status", headers={CONTROL_TOKEN_HEADER: info["token"]}, timeout=5).status_code == 200
