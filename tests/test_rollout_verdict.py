"""Issue 13's repros on a real local runtime: the verdict rests on data, records keep every rollout, and
nothing about the endpoint changes silently. Each test here failed before the fix it names."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import requests

from mlcanary.local_runtime.client import RuntimeClient
from test_local_runtime import stop_runtime
from test_rollout_local import (GOOD, endpoint, events, live_traffic, load_args, rollout,  # noqa: F401 - fixtures
                                runtime, stage)


def cli(state, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCANARY_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-m", "mlcanary.cli", *args], capture_output=True, text=True, env=env,
                          timeout=240)


def start(state, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLCANARY_STATE_DIR": str(state)}
    return subprocess.Popen([sys.executable, "-m", "mlcanary.cli", "rollout", "--format", "json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_step(record, index: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if record.exists() and any(e["event"] == "step" and e["index"] == index for e in events(record)):
            return
        if process.poll() is not None:
            pytest.fail(f"the rollout ended before step {index}: {process.communicate()}")
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"the rollout never reached step {index}")


@pytest.fixture
def own_runtime(tmp_path):
    """A runtime of this test alone: the test kills it."""
    client = RuntimeClient(tmp_path / "state")
    client.ensure_running()
    yield client
    stop_runtime(client)


def test_a_runtime_killed_mid_step_halts_the_rollout_and_it_is_not_promoted(own_runtime, tmp_path):
    """Before: 7 source-error windows, then "promoted", green set to 100 % by the next step's apply, exit 0."""
    record = tmp_path / "record.jsonl"
    stage_file = stage(tmp_path, "killed-runtime")
    process = start(own_runtime.root, str(stage_file), "--to", "green", "--steps", "10,50,100", "--interval", "2s",
                    "--min-requests", "5", "--max-hold", "1", "--apply-stage", "--record", str(record), *GOOD,
                    *load_args(30))
    wait_for_step(record, 1, process)  # the 50 % step is live
    os.kill(own_runtime.pid(), signal.SIGKILL)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 3, err
    summary = json.loads(out)
    assert summary["decision"] == "halted" and summary["step"] == "50 %" and "no data" in summary["message"]
    log = events(record)
    assert "100 %" not in [e["label"] for e in log if e["event"] == "step"]
    assert not any(e["event"] == "decision" and e["decision"] in ("promoted", "finished") and e["step"] != "10 %"
                   for e in log)
    held = [e for e in log if e["event"] == "decision" and e["decision"] == "held"]
    assert held and all(e["noDataWindows"] for e in held)


def test_header_pinned_requests_alone_do_not_promote_the_target(runtime, endpoint, tmp_path):
    """Before: 20 req/s pinned to green and no other traffic: "promoted" in 20 s while the baseline served 0."""
    stage_file = stage(tmp_path, endpoint)
    assert cli(runtime.root, "local", "up", str(stage_file)).returncode == 0
    uri = runtime.status()["endpoints"][endpoint]["scoringUri"]
    key = runtime.keys(endpoint)["primaryKey"]
    stop = threading.Event()
    answered = []

    def pinned_client():
        with requests.Session() as session:
            while not stop.wait(0.05):
                answer = session.post(uri, data=b'{"data": [[1, 2]]}', timeout=30, headers={
                    "Authorization": f"Bearer {key}", "azureml-model-deployment": "green",
                    "Content-Type": "application/json"})
                answered.append(answer.status_code)

    client = threading.Thread(target=pinned_client, daemon=True)
    client.start()
    record = tmp_path / "record.jsonl"
    try:
        result = rollout(runtime, stage_file, "--to", "green", "--steps", "50,100", "--interval", "2s",
                         "--min-requests", "5", "--max-hold", "1", record=record, apply_stage=False)
    finally:
        stop.set()
        client.join(35)
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert summary["decision"] == "halted" and summary["targetServed"] == 0
    assert len(answered) >= 20 and set(answered) == {200}
    pinned = sum(e["window"].get("green", {}).get("pinned", {}).get("requests", 0)
                 for e in events(record) if e["event"] == "judgement")
    assert pinned >= 10  # counted and recorded apart, never judged as the split's
    assert live_traffic(runtime, endpoint) == {"blue": 100}


def test_record_appends_each_rollout_with_its_id_and_is_private(runtime, endpoint, tmp_path):
    record = tmp_path / "record.jsonl"
    stage_file = stage(tmp_path, endpoint)
    first = rollout(runtime, stage_file, "--to", "green", "--steps", "100", "--interval", "1s", "--min-requests", "3",
                    "--max-hold", "0", record=record)
    assert first.returncode == 3, first.stderr  # no traffic: halted, which is fine for this test
    second = rollout(runtime, stage_file, "--to", "green", "--steps", "100", "--interval", "1s", "--min-requests", "3",
                     *GOOD, *load_args(20), record=record)
    assert second.returncode == 0, second.stderr
    log = events(record)
    ids = [e["rollout"] for e in log if e["event"] == "plan"]
    assert len(ids) == 2 and ids[0] != ids[1] and all(e["rollout"] in ids for e in log)
    assert [e["decision"] for e in log if e["event"] == "decision" and e["decision"] in ("halted", "finished")] == [
        "halted", "finished"]
    assert json.loads(second.stdout)["rollout"] == ids[1]
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


def test_a_rollout_killed_mid_step_is_resumed_from_its_record_alone(runtime, endpoint, tmp_path):
    """Before: `--resume` said "not interrupted (last decision: promoted)", with green left at 50 % unjudged."""
    record = tmp_path / "record.jsonl"
    process = start(runtime.root, str(stage(tmp_path, endpoint)), "--to", "green", "--steps", "10,50,100",
                    "--interval", "2s", "--min-requests", "5", "--apply-stage", "--record", str(record), *GOOD,
                    *load_args(30))
    wait_for_step(record, 1, process)
    process.kill()  # SIGKILL: no decision is written
    process.communicate(timeout=30)
    assert live_traffic(runtime, endpoint) == {"blue": 50, "green": 50}
    resumed = cli(runtime.root, "rollout", "--resume", "--record", str(record), "--format", "json",
                  *load_args(30))
    assert resumed.returncode == 0, resumed.stderr
    assert "did not finish" in resumed.stderr and "at 50 %" in resumed.stderr
    assert "the endpoint runs live blue 50, green 50" in resumed.stderr
    assert "resuming at step 2/3" in resumed.stderr
    assert live_traffic(runtime, endpoint) == {"green": 100}


def test_a_stage_file_the_endpoint_differs_from_is_not_applied_without_apply_stage(runtime, endpoint, tmp_path):
    """Before: the bad-green example after a promotion moved all traffic back to blue, shown as a status line."""
    stage_file = stage(tmp_path, endpoint)
    assert cli(runtime.root, "local", "up", str(stage_file)).returncode == 0
    before = runtime.status()["endpoints"][endpoint]
    bad = stage(tmp_path, endpoint, {"FAIL_RATE": "0.3"})  # green replaced by another version
    result = rollout(runtime, bad, "--to", "green", "--interval", "1s", apply_stage=False)
    assert result.returncode == 2, result.stderr
    assert f"endpoint {endpoint} differs from {bad}" in result.stderr
    assert "updated: green (" in result.stderr  # what `local up --preview` prints
    assert "pass --apply-stage" in result.stderr and "nothing was changed" in result.stderr
    assert runtime.status()["endpoints"][endpoint]["deployments"]["green"]["spec"] == before["deployments"]["green"]["spec"]
