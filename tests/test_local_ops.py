"""Operating the local target: pinned versions, cancellable applies, restoring, metrics and logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from conftest import PROJECT_DIR
from mlcanary.cli import main
from mlcanary.local_runtime.client import RuntimeClient
from test_local_runtime import stop_runtime, wait_for

REQUEST = PROJECT_DIR / "samples" / "request.json"


@pytest.fixture
def project(tmp_path):
    """A Pulumi project of its own holding a copy of the sample model (the test edits it)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "Pulumi.yaml").write_text("name: mlcanary\nruntime: python\n")
    shutil.copytree(PROJECT_DIR / "samples" / "fraud-model", root / "fraud-model")
    return root


@pytest.fixture
def state(tmp_path):
    yield tmp_path / "state"
    stop_runtime(RuntimeClient(tmp_path / "state"))


def stage(project: Path, name: str = "stage.yaml", instances: int = 2, probe: str = "", env: str = "") -> Path:
    path = project / name
    path.write_text(f"""config:
  mlcanary:target: local
  mlcanary:endpoint:
    name: ops-scorer
    deployments:
      blue:
        model: ./fraud-model/v1/model
        code: ./fraud-model/onlinescoring
        scoringScript: score.py
        instanceCount: {instances}
{probe}{env}    traffic: {{blue: 100}}
""")
    return path


def run(state, *args):
    return CliRunner().invoke(main, [*map(str, args), "--state-dir", str(state)])


def versions_served(state, times: int = 8) -> set:
    answers = [run(state, "invoke", "ops-scorer", "--request-file", REQUEST) for _ in range(times)]
    assert all(a.exit_code == 0 for a in answers), [a.output for a in answers]
    return {json.loads(a.output.splitlines()[0])["version"] for a in answers}


def edit_model_version(project: Path, version: int) -> None:
    path = project / "fraud-model" / "v1" / "model" / "model.json"
    model = json.loads(path.read_text())
    path.write_text(json.dumps({**model, "version": version}))


# --- 9.1 pinned versions -----------------------------------------------------------------------


def test_an_edited_model_is_a_new_version_and_every_instance_serves_one_version(project, state):
    path = stage(project)
    assert run(state, "local", "up", path).exit_code == 0
    edit_model_version(project, 99)
    client = RuntimeClient(state)
    blue = client.status()["endpoints"]["ops-scorer"]["deployments"]["blue"]
    os.killpg(blue["pids"][0], signal.SIGKILL)  # the restarted instance must serve the applied version
    assert wait_for(lambda: client.status()["endpoints"]["ops-scorer"]["deployments"]["blue"]["restarts"] == 1
                    and client.status()["endpoints"]["ops-scorer"]["deployments"]["blue"]["healthy"] == 2, 60)
    assert versions_served(state) == {1}

    again = run(state, "local", "up", path)
    assert again.exit_code == 0, again.output
    assert "updated: blue (model changed)" in again.output
    assert versions_served(state) == {99}


def test_an_unchanged_folder_is_unchanged_and_pinned_once(project, state):
    path = stage(project)
    assert run(state, "local", "up", path).exit_code == 0
    again = run(state, "local", "up", path)
    assert again.exit_code == 0 and "unchanged: blue" in again.output
    from mlcanary.components.uploads import content_hash

    pinned = sorted(p.name for p in (state / "snapshots").iterdir())
    assert pinned == sorted([content_hash(str(project / "fraud-model" / "v1" / "model")),
                             content_hash(str(project / "fraud-model" / "onlinescoring"))])


def test_a_pinned_version_no_deployment_uses_is_removed(project, state):
    from mlcanary.components.uploads import content_hash

    path = stage(project)
    model, code = project / "fraud-model" / "v1" / "model", project / "fraud-model" / "onlinescoring"
    assert run(state, "local", "up", path).exit_code == 0
    pinned = lambda: {p.name for p in (state / "snapshots").iterdir()}  # noqa: E731
    assert pinned() == {content_hash(str(model)), content_hash(str(code))}
    edit_model_version(project, 7)
    assert run(state, "local", "up", path).exit_code == 0
    # the replaced version goes once the old instances have drained
    assert wait_for(lambda: pinned() == {content_hash(str(model)), content_hash(str(code))}, 60)
    run(state, "local", "down")
    assert pinned() == set()


def test_ignored_files_are_not_pinned(project, state):
    code = project / "fraud-model" / "onlinescoring"
    (code / ".amlignore").write_text("notes.txt\n")
    (code / "notes.txt").write_text("not uploaded on Azure, not served locally")
    path = stage(project)
    assert run(state, "local", "up", path).exit_code == 0
    (code / "notes.txt").write_text("edited")  # ignored: not a new version
    again = run(state, "local", "up", path)
    assert "unchanged: blue" in again.output, again.output
    served = RuntimeClient(state).status()["endpoints"]["ops-scorer"]["deployments"]["blue"]
    assert not list((state / "snapshots").rglob("notes.txt")), served


# --- 9.6 an operable runtime -------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_runtime(state) -> None:
    client = RuntimeClient(state)
    os.kill(client.pid(), signal.SIGKILL)
    assert wait_for(lambda: client.base_url() is None)


def test_local_start_restores_the_runtime_without_applying_a_stage(project, state):
    assert run(state, "local", "up", stage(project)).exit_code == 0
    uri = RuntimeClient(state).status()["endpoints"]["ops-scorer"]["scoringUri"]
    kill_runtime(state)
    edit_model_version(project, 42)  # not applied: start must not pick it up
    started = run(state, "local", "start")
    assert started.exit_code == 0, started.output
    assert "restored 1 endpoint(s):" in started.output
    assert f"ops-scorer at {uri}: blue ready 2/2; live traffic: blue 100%" in started.output
    assert versions_served(state) == {1}
    again = run(state, "local", "start")
    assert again.exit_code == 0 and "is already running" in again.output
    stopped = run(state, "local", "stop")
    assert stopped.exit_code == 0 and "its state is kept" in stopped.output
    assert RuntimeClient(state).base_url() is None
    assert run(state, "local", "start").exit_code == 0
    assert RuntimeClient(state).status()["endpoints"]["ops-scorer"]["scoringUri"] == uri


def test_local_start_with_no_state_starts_an_empty_runtime(state):
    started = run(state, "local", "start")
    assert started.exit_code == 0, started.output
    assert "restored 0 endpoint(s)" in started.output


def test_metrics_are_served_on_a_fixed_address_without_a_token_across_restarts(project, state):
    port = free_port()
    address = f"127.0.0.1:{port}"
    started = run(state, "local", "start", "--metrics-address", address)
    assert started.exit_code == 0 and f"metrics: http://{address}/metrics" in started.output, started.output
    assert run(state, "local", "up", stage(project, instances=1)).exit_code == 0
    versions_served(state, 2)
    scraped = requests.get(f"http://{address}/metrics", timeout=10)
    assert scraped.status_code == 200
    assert 'mlcanary_requests_total{endpoint="ops-scorer",deployment="blue",code="200"} 2' in scraped.text
    kill_runtime(state)
    assert run(state, "local", "start", "--metrics-address", address).exit_code == 0
    assert requests.get(f"http://{address}/metrics", timeout=10).status_code == 200  # the same scrape target


@pytest.mark.parametrize("address, problem", [
    ("0.0.0.0:9577", "is not a loopback address"),
    ("192.168.1.10:9577", "is not a loopback address"),
    ("example.com:9577", "is not a loopback address"),
    ("127.0.0.1:99999", "is not an address"),
    ("127.0.0.1", "is not an address"),
    ("127.0.0.1:９５７７", "is not an address"),
])
def test_a_bad_metrics_address_is_refused(state, address, problem):
    result = run(state, "local", "start", "--metrics-address", address)
    assert result.exit_code == 2
    assert "--metrics-address / MLCANARY_METRICS_ADDRESS" in result.output and problem in result.output
    assert RuntimeClient(state).base_url() is None


def test_logs_are_readable_when_the_runtime_is_down_per_generation(project, state):
    path = stage(project, instances=1)
    assert run(state, "local", "up", path).exit_code == 0
    edit_model_version(project, 5)
    assert run(state, "local", "up", path).exit_code == 0
    first, second = sorted(p.name for p in (state / "logs" / "ops-scorer" / "blue").iterdir())
    RuntimeClient(state).shutdown()
    shown = run(state, "logs", "ops-scorer", "--deployment", "blue")
    assert shown.exit_code == 0, shown.output
    assert "no local runtime answers" in shown.output and f"(generation {second})" in shown.output
    assert "==> instance-0.log <==" in shown.output and "starting on unix:" in shown.output
    older = run(state, "logs", "ops-scorer", "--deployment", "blue", "--generation", first)
    assert older.exit_code == 0 and f"(generation {first})" in older.output
    unknown = run(state, "logs", "ops-scorer", "--deployment", "blue", "--generation", "20000101-000000-0000")
    assert unknown.exit_code == 1 and f"generations, oldest first: {first}, {second}" in unknown.output
    missing = run(state, "logs", "ops-scorer", "--deployment", "green")
    assert missing.exit_code == 1 and "deployments with logs on ops-scorer: blue" in missing.output


@pytest.mark.parametrize("args, problem", [
    (["../../etc", "--deployment", "blue"], "ENDPOINT: '../../etc' is not a valid endpoint name"),
    (["ops-scorer", "--deployment", "../x"], "--deployment: '../x' is not a valid deployment name"),
    (["ops-scorer", "--deployment", "blue", "--generation", "../../x"], "--generation: '../../x' is not a generation"),
])
def test_logs_refuse_names_that_are_not_names(state, args, problem):
    result = run(state, "logs", *args)
    assert result.exit_code == 2 and problem in result.output


def test_logs_follow_prints_new_lines_until_interrupted_and_follows_a_rollover(project, state):
    path = stage(project, instances=1)
    assert run(state, "local", "up", path).exit_code == 0
    following = subprocess.Popen(
        [sys.executable, "-m", "mlcanary.cli", "logs", "ops-scorer", "--deployment", "blue", "--follow",
         "--lines", "1", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_DIR)
    try:
        time.sleep(3)  # printing the tail, then following
        client = RuntimeClient(state)
        os.killpg(client.status()["endpoints"]["ops-scorer"]["deployments"]["blue"]["pids"][0], signal.SIGKILL)
        assert wait_for(lambda: client.status()["endpoints"]["ops-scorer"]["deployments"]["blue"]["restarts"] == 1, 30)
        edit_model_version(project, 3)
        assert run(state, "local", "up", path).exit_code == 0  # a new generation
        time.sleep(3)
    finally:
        following.send_signal(signal.SIGINT)
        out, err = following.communicate(timeout=30)
    assert following.returncode == 0, err
    assert "[instance-0] --- worker exited (-9); restarting" in out
    assert "[instance-0] --- " in out.split("restarting", 1)[1]  # the new start, as it was written
    newest = sorted(p.name for p in (state / "logs" / "ops-scorer" / "blue").iterdir())[-1]
    rolled = out.split(f"(the deployment was replaced: now generation {newest})", 1)
    assert len(rolled) == 2 and "[instance-0] --- " in rolled[1] and "starting on unix:" in rolled[1]
    assert "Traceback" not in err


# --- 9.4 cancellable applies, a health wait with its limit ---------------------------------------


TEST_MODELS = PROJECT_DIR / "tests" / "models"


def canary_stage(project: Path, name: str, green: str | None, traffic: str, blue_env: str = "") -> Path:
    """Endpoint ops-canary on the test model: blue, and `green` (extra YAML lines under it) if given."""
    if not (project / "test-model").exists():
        shutil.copytree(TEST_MODELS, project / "test-model")
    deployment = """      {name}:
        model: ./test-model/model
        code: ./test-model/code
        scoringScript: score.py
        environmentVariables: {{MODEL_NAME: {name}{env}}}
"""
    text = "config:\n  mlcanary:target: local\n  mlcanary:endpoint:\n    name: ops-canary\n    deployments:\n"
    if blue_env is not None:
        text += deployment.format(name="blue", env=blue_env)
    if green is not None:
        text += deployment.format(name="green", env="") + green
    text += f"    traffic: {traffic}\n"
    path = project / name
    path.write_text(text)
    return path


def canary_status(state) -> dict:
    return RuntimeClient(state).status()["endpoints"]["ops-canary"]


def worker_process_groups(state) -> set[int]:
    """Process groups of every running worker of this state directory (by its socket folder)."""
    marker = f"unix:{state.resolve() / 'sock'}/".encode()
    groups = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    groups.add(os.getpgid(int(entry.name)))
            except OSError:
                continue
    return groups


def started_worker_log(state, deployment: str) -> bool:
    return any((state / "logs" / "ops-canary" / deployment).glob("*/instance-0.log"))


def local_up_in_background(state, path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlcanary.cli", "local", "up", str(path), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_DIR)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_apply_stops_what_it_started_and_keeps_traffic(project, state, sig):
    first = canary_stage(project, "one.yaml", None, "{blue: 100}")
    assert run(state, "local", "up", first).exit_code == 0
    slow = canary_stage(project, "two.yaml", "        instanceCount: 2\n", "{blue: 90, green: 10}")
    slow.write_text(slow.read_text().replace("MODEL_NAME: green", "MODEL_NAME: green, INIT_SLEEP: 600"))
    applying = local_up_in_background(state, slow)
    try:
        assert wait_for(lambda: started_worker_log(state, "green"), 120), "green never started"
        time.sleep(1)
        applying.send_signal(sig)
        out, err = applying.communicate(timeout=120)
    finally:
        if applying.poll() is None:
            applying.kill()
    assert applying.returncode == 130, (out, err)
    assert "error: cancelled: stopped green (it was starting); traffic is as it was." in " ".join(err.split())
    assert "Traceback" not in err and "Aborted!" not in err
    endpoint = canary_status(state)
    assert list(endpoint["deployments"]) == ["blue"] and endpoint["traffic"] == {"blue": 100}
    blue_groups = set(endpoint["deployments"]["blue"]["pids"])
    assert wait_for(lambda: worker_process_groups(state) == blue_groups, 30)  # green's workers are gone
    time.sleep(2)
    assert list(canary_status(state)["deployments"]) == ["blue"]  # and it does not come back


def test_an_interrupted_update_leaves_the_running_version_serving(project, state):
    first = canary_stage(project, "one.yaml", None, "{blue: 100}")
    assert run(state, "local", "up", first).exit_code == 0
    before = canary_status(state)["deployments"]["blue"]
    slower = canary_stage(project, "two.yaml", None, "{blue: 100}", blue_env=", INIT_SLEEP: 600")
    applying = local_up_in_background(state, slower)
    try:
        assert wait_for(lambda: len(list((state / "logs" / "ops-canary" / "blue").iterdir())) == 2, 120)
        time.sleep(1)
        applying.send_signal(signal.SIGINT)
        _, err = applying.communicate(timeout=120)
    finally:
        if applying.poll() is None:
            applying.kill()
    assert applying.returncode == 130 and "cancelled: stopped blue (it was updating)" in " ".join(err.split())
    after = canary_status(state)["deployments"]["blue"]
    assert after["pids"] == before["pids"] and after["spec"] == before["spec"]
    assert wait_for(lambda: worker_process_groups(state) == set(before["pids"]), 30)
    assert versions_of_canary(state) == {"blue"}


def versions_of_canary(state) -> set:
    request = json.dumps({"x": 1})
    answers = [run(state, "invoke", "ops-canary", "--request-file", write_request(state, request)) for _ in range(3)]
    assert all(a.exit_code == 0 for a in answers), [a.output for a in answers]
    return {json.loads(a.output.splitlines()[0])["name"] for a in answers}


def write_request(state, body: str) -> Path:
    path = state.parent / "request.json"
    path.write_text(body)
    return path


def test_the_health_wait_limit_comes_from_the_readiness_probe_and_names_it(project, state):
    first = canary_stage(project, "one.yaml", None, "{blue: 100}")
    assert run(state, "local", "up", first).exit_code == 0
    probe = "        readinessProbe: {initialDelay: 1, period: 1, failureThreshold: 2}\n"
    slow = canary_stage(project, "two.yaml", probe, "{blue: 90, green: 10}")
    slow.write_text(slow.read_text().replace("MODEL_NAME: green", "MODEL_NAME: green, INIT_SLEEP: 600"))
    started = time.monotonic()
    result = run(state, "local", "up", slow)
    assert result.exit_code == 1
    assert time.monotonic() - started < 60
    assert ("worker did not answer its health route within 3 s (readinessProbe: initialDelay 1 + failureThreshold 2 "
            "x period 1 s); if init() needs longer, raise readinessProbe.failureThreshold or "
            "readinessProbe.initialDelay") in " ".join(result.output.split())
    assert canary_status(state)["traffic"] == {"blue": 100}


def test_the_health_wait_reports_elapsed_time_and_its_limit(project, state):
    from mlcanary.local_runtime.apply import apply_stage
    from mlcanary.local_runtime.rehearse import load_stage

    slow = canary_stage(project, "one.yaml", None, "{blue: 100}", blue_env=", INIT_SLEEP: 2")
    client = RuntimeClient(state)
    client.ensure_running()
    seen: list[str] = []
    apply_stage(load_stage(slow), client, seen.append)
    waits = [m for m in seen if m.startswith("starting blue (1 instance(s)): waiting until healthy, ")]
    assert waits[0].endswith(" s of 310 s (readinessProbe: initialDelay 10 + failureThreshold 30 x period 10 s)")
    assert "1 s of 310 s" in " ".join(waits) or "2 s of 310 s" in " ".join(waits)


def test_a_stage_refused_on_its_first_apply_leaves_no_endpoint(project, state):
    failing = canary_stage(project, "one.yaml", None, "{blue: 100}", blue_env=", FAIL_INIT: 'yes'")
    result = run(state, "local", "up", failing)
    assert result.exit_code == 1 and "init() failed" in result.output
    assert "ops-canary" not in RuntimeClient(state).status()["endpoints"]


def test_the_metrics_address_can_be_turned_off(state):
    started = run(state, "local", "start", "--metrics-address", "off")
    assert started.exit_code == 0, started.output
    assert "metrics: http" not in started.output
    assert RuntimeClient(state).info()["metricsAddress"] is None
    assert run(state, "local", "metrics").exit_code == 0  # still on the control plane


def test_start_says_when_the_running_runtime_serves_metrics_elsewhere(state):
    assert run(state, "local", "start", "--metrics-address", "off").exit_code == 0
    port = free_port()
    again = run(state, "local", "start", "--metrics-address", f"127.0.0.1:{port}")
    assert again.exit_code == 0 and "is already running" in again.output
    assert f"it serves metrics at no address (off), not 127.0.0.1:{port}: `mlcanary local stop`" in again.output


def test_local_start_with_an_unreadable_state_says_which_file_and_keeps_it(state):
    state.mkdir(mode=0o700)
    (state / "state.json").write_text("{not json")
    result = run(state, "local", "start")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"state file {state.resolve() / 'state.json'} is not valid JSON" in result.output
    assert (state / "state.json").read_text() == "{not json"
