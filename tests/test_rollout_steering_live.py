"""A real rollout under load, steered by other processes as a second terminal would: `local up` (refused,
then --force), `rollout pause|resume|promote|abort`, and `kill -9` of the rollout. Each test checks the
endpoint's final state equals what the rollout (or the human) last said."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlcanary.local_runtime import lease
from mlcanary.local_runtime.client import RuntimeClient
from test_local_runtime import stop_runtime
from test_rollout_local import live_traffic, load_args, stage


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    client = RuntimeClient(tmp_path_factory.mktemp("steer-state"))
    client.ensure_running()
    yield client
    stop_runtime(client)


@pytest.fixture
def endpoint(runtime, request):
    name = request.node.name.removeprefix("test_").replace("_", "-")[:24].rstrip("-")
    yield name
    if name in runtime.status()["endpoints"]:
        runtime.delete_endpoint(name)


def mlcanary(runtime, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLCANARY_STATE_DIR": str(runtime.root)}
    return subprocess.run([sys.executable, "-m", "mlcanary.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def start_rollout(runtime, stage_file: Path, record: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLCANARY_STATE_DIR": str(runtime.root)}
    command = [sys.executable, "-m", "mlcanary.cli", "rollout", str(stage_file), "--to", "green", "--tick", "0.5",
               "--alpha", "0.001", "--record", str(record), "--format", "json", "--apply-stage", *load_args(20), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def hold(runtime, endpoint) -> dict:
    return lease.read(lease.lease_dir(runtime.root), endpoint) or {}


def all_to_green(tmp_path: Path, endpoint: str) -> Path:
    """The same endpoint with all traffic on green: what a colleague's `local up` would apply."""
    config = yaml.safe_load(stage(tmp_path, endpoint).read_text())
    config["config"]["mlcanary:endpoint"]["traffic"] = {"blue": 0, "green": 100}
    path = tmp_path / "all-to-green.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_pause_local_up_promote_resume_then_promote_full_ends_where_the_human_said(runtime, endpoint, tmp_path,
                                                                                     processes):
    stage_file, record = stage(tmp_path, endpoint), tmp_path / "record.jsonl"
    rollout = start_rollout(runtime, stage_file, record, "--steps", "10,50,100", "--interval", "8s",
                            "--min-requests", "5")
    processes.append(rollout)
    wait_for(lambda: hold(runtime, endpoint).get("step") == "10 %", "the 10 % step")
    paused = mlcanary(runtime, "rollout", "pause", endpoint)
    assert paused.returncode == 0 and "paused at step 10 %" in paused.stdout, paused.stderr

    refused = mlcanary(runtime, "local", "up", str(all_to_green(tmp_path, endpoint)), "--no-wait")
    assert refused.returncode == 1, refused.stderr
    assert f"endpoint {endpoint} is held by rollout" in refused.stderr and f"pid {rollout.pid}" in refused.stderr
    assert str(record) in refused.stderr and "step 10 % since" in refused.stderr
    time.sleep(max(0.0, 9 - (time.time() - hold(runtime, endpoint)["stepSince"])))  # past the 8 s interval
    assert live_traffic(runtime, endpoint) == {"blue": 90, "green": 10}  # held, and local up changed nothing
    assert hold(runtime, endpoint)["paused"] is True

    assert mlcanary(runtime, "rollout", "promote", endpoint).returncode == 0
    wait_for(lambda: live_traffic(runtime, endpoint) == {"blue": 50, "green": 50}, "the 50 % step")
    assert mlcanary(runtime, "rollout", "resume", endpoint).returncode == 0
    full = mlcanary(runtime, "rollout", "promote", endpoint, "--full")
    assert full.returncode == 0, full.stderr
    out, err = rollout.communicate(timeout=60)
    assert rollout.returncode == 0, err
    outcome = json.loads(out)
    assert outcome["decision"] == "promoted"
    assert live_traffic(runtime, endpoint) == {"green": 100}  # what the human last said
    # One rollout, one id: the record's, the hold's, and so status and history name the same one.
    assert hold(runtime, endpoint)["id"] == outcome["rollout"]
    assert {json.loads(line)["rollout"] for line in record.read_text().splitlines()} == {outcome["rollout"]}
    interventions = [i["action"] for i in hold(runtime, endpoint)["interventions"]]
    assert interventions == ["pause", "promote", "resume", "promote --full"]


def test_kill_9_then_status_says_died_and_abort_restores_the_baseline(runtime, endpoint, tmp_path, processes):
    stage_file, record = stage(tmp_path, endpoint), tmp_path / "record.jsonl"
    rollout = start_rollout(runtime, stage_file, record, "--steps", "50,100", "--interval", "30s",
                            "--min-requests", "5")
    processes.append(rollout)
    wait_for(lambda: hold(runtime, endpoint).get("step") == "50 %", "the 50 % step")
    os.kill(rollout.pid, signal.SIGKILL)
    rollout.wait(timeout=30)
    status = mlcanary(runtime, "rollout", "status", endpoint)
    assert "DIED" in status.stdout and f"pid {rollout.pid}" in status.stdout
    assert live_traffic(runtime, endpoint) == {"blue": 50, "green": 50}  # as it left it, unjudged

    aborted = mlcanary(runtime, "rollout", "abort", endpoint)
    assert aborted.returncode == 0, aborted.stderr
    assert "died; restoring its baseline: live blue 100, green 0" in aborted.stdout
    assert live_traffic(runtime, endpoint) == {"blue": 100}  # what the human last said
    history = json.loads(mlcanary(runtime, "rollout", "history", endpoint, "--format", "json").stdout)
    assert history[-1]["outcome"] == "aborted" and history[-1]["step"] == "50 %"
    assert "the rollout died at step 50 %" in history[-1]["message"]


def test_abort_of_a_running_rollout_exits_1_and_leaves_the_baseline(runtime, endpoint, tmp_path, processes):
    stage_file, record = stage(tmp_path, endpoint), tmp_path / "record.jsonl"
    rollout = start_rollout(runtime, stage_file, record, "--steps", "50,100", "--interval", "30s",
                            "--min-requests", "5")
    processes.append(rollout)
    wait_for(lambda: hold(runtime, endpoint).get("step") == "50 %", "the 50 % step")
    second = mlcanary(runtime, "rollout", str(stage_file), "--to", "green", "--steps", "25,100", "--interval", "1s",
                      "--record", str(tmp_path / "second.jsonl"))
    assert second.returncode == 1 and f"endpoint {endpoint} is held by rollout" in second.stderr
    assert not (tmp_path / "second.jsonl").exists()  # refused: no record begun
    resumed = mlcanary(runtime, "rollout", "--resume", "--record", str(record))  # the same rollout, from another terminal
    assert resumed.returncode == 1 and f"endpoint {endpoint} is held by rollout" in resumed.stderr
    assert "resuming" not in resumed.stdout + resumed.stderr
    assert [json.loads(line)["event"] for line in record.read_text().splitlines()].count("plan") == 1

    aborted = mlcanary(runtime, "rollout", "abort", endpoint)
    assert aborted.returncode == 0 and "aborted: aborted by" in aborted.stdout, aborted.stderr
    out, err = rollout.communicate(timeout=60)
    assert rollout.returncode == 1, err
    summary = json.loads(out)
    assert summary["decision"] == "aborted" and "from step 50 %" in summary["message"]
    assert live_traffic(runtime, endpoint) == {"blue": 100}


def test_a_forced_local_up_takes_the_hold_over_and_the_rollout_stops_without_overwriting(runtime, endpoint, tmp_path,
                                                                                        processes):
    stage_file, record = stage(tmp_path, endpoint), tmp_path / "record.jsonl"
    rollout = start_rollout(runtime, stage_file, record, "--steps", "50,100", "--interval", "30s",
                            "--min-requests", "5")
    processes.append(rollout)
    wait_for(lambda: hold(runtime, endpoint).get("step") == "50 %", "the 50 % step")
    forced = mlcanary(runtime, "local", "up", str(all_to_green(tmp_path, endpoint)), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "--force: took endpoint" in forced.stderr
    out, err = rollout.communicate(timeout=60)
    assert rollout.returncode == 4, err
    assert "taken over by" in json.loads(out)["message"]
    history = json.loads(mlcanary(runtime, "rollout", "history", endpoint, "--format", "json").stdout)
    assert history[-1]["outcome"] == "taken-over" and "all-to-green.yaml" in history[-1]["takenOverBy"]["writer"]
    assert live_traffic(runtime, endpoint) == {"green": 100}  # what the forced `local up` said, not overwritten
