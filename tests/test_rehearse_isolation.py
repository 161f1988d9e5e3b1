"""A rehearsal never touches what it did not create, and removes what it started however it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import PROJECT_DIR, outside_the_project
from mlcanary.cli import main
from mlcanary.local_runtime import paths
from mlcanary.local_runtime.client import RuntimeClient
from test_local_cli import REQUEST, STAGE, run, state  # noqa: F401 - the `state` fixture
from test_local_runtime import MODELS, stop_runtime


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Where a default rehearsal makes its private state directory (tempfile's folder), empty."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def broken_stage(tmp_path: Path) -> Path:
    """Stage 2 plus a deployment whose init() fails: the rehearsal fails at this stage."""
    path = tmp_path / "stage-2-broken.yaml"
    path.write_text(outside_the_project(STAGE["1"].read_text()).replace("    traffic: {blue: 100}", f"""      green:
        code: {MODELS / 'code'}
        scoringScript: score.py
        model: {MODELS / 'model'}
        environmentVariables: {{FAIL_INIT: "1"}}
    traffic: {{blue: 100, green: 0}}"""))
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def processes_holding_files_in(folder: Path) -> list[int]:
    """Processes with a file open under `folder` (workers log there): what a rehearsal there started."""
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(t.startswith(f"{folder}/") for t in targets) and pid_alive(int(proc.name)):
            holders.append(int(proc.name))
    return holders


def wait_gone(pids: list[int], timeout_s: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def test_by_default_a_rehearsal_leaves_the_users_runtime_alone(state, private_tmp, monkeypatch):
    """The repro: rehearse re-applied stage 1 over the user's live fraud-scorer, then deleted it."""
    monkeypatch.setenv("MLCANARY_STATE_DIR", str(state))  # the user's runtime is the default one
    assert run(state, "local", "up", STAGE["3"]).exit_code == 0
    client = RuntimeClient(state)
    before = client.status()["endpoints"]["fraud-scorer"]
    keys = client.keys("fraud-scorer")
    result = CliRunner().invoke(main, ["rehearse", "--requests", "10", "--request-file", str(REQUEST),
                                       str(STAGE["1"]), str(STAGE["2"])])
    assert result.exit_code == 0, result.output
    after = client.status()["endpoints"]["fraud-scorer"]
    assert (after["scoringUri"], after["traffic"], sorted(after["deployments"])) == (
        before["scoringUri"], {"blue": 100, "green": 0}, ["blue", "green"])
    assert after["deployments"]["blue"]["pids"] == before["deployments"]["blue"]["pids"]
    assert client.keys("fraud-scorer") == keys
    assert list(private_tmp.iterdir()) == []  # its own runtime stopped and its directory removed


def test_a_rehearsal_pointed_at_a_runtime_refuses_an_endpoint_that_exists_there(state):
    assert run(state, "local", "up", STAGE["1"]).exit_code == 0
    client = RuntimeClient(state)
    before = client.status()["endpoints"]
    result = run(state, "rehearse", "--requests", "10", "--request-file", REQUEST, STAGE["1"], STAGE["2"])
    assert result.exit_code == 1
    assert f"endpoint(s) fraud-scorer already exist in {state.resolve()}; a rehearsal only touches endpoints " \
           "it creates" in result.output
    assert client.status()["endpoints"] == before


def test_a_stopped_runtime_with_the_endpoint_in_its_state_is_refused_too(state):
    assert run(state, "local", "up", STAGE["1"]).exit_code == 0
    stop_runtime(RuntimeClient(state))
    result = run(state, "rehearse", "--requests", "10", "--request-file", REQUEST, STAGE["1"])
    assert result.exit_code == 1 and "already exist" in result.output
    assert RuntimeClient(state).base_url() is None  # refused before starting anything


def test_a_failed_rehearsal_removes_what_it_started_and_shows_the_stages_it_completed(state, tmp_path):
    result = run(state, "rehearse", "--requests", "10", "--request-file", REQUEST, STAGE["1"], broken_stage(tmp_path))
    assert result.exit_code == 1
    assert "stage-1-create-blue.yaml  (10 requests)" in result.output  # printed when stage 1 completed
    assert "init() failed" in result.output
    assert "The rehearsal stopped after 1 of 2 stage(s) and removed what it started." in result.output
    assert RuntimeClient(state).base_url() is None  # the runtime it started is stopped


def test_a_failed_private_rehearsal_removes_its_runtime_and_directory(private_tmp, tmp_path):
    result = CliRunner().invoke(main, ["rehearse", "--requests", "5", "--request-file", str(REQUEST),
                                       str(STAGE["1"]), str(broken_stage(tmp_path))])
    assert result.exit_code == 1
    assert list(private_tmp.iterdir()) == []


def test_keep_needs_a_state_dir(private_tmp):
    result = CliRunner().invoke(main, ["rehearse", "--keep", "--request-file", str(REQUEST), str(STAGE["1"])])
    assert result.exit_code == 2 and "--keep needs --state-dir" in result.output


def test_an_azure_stage_is_unusable_input_for_rehearse(private_tmp):
    result = CliRunner().invoke(main, ["rehearse", "--request-file", str(REQUEST), str(STAGE["1"]),
                                       str(PROJECT_DIR / "stacks" / "stage-2-scale-blue.yaml")])
    assert result.exit_code == 2 and "this stage targets 'azure'" in result.output
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_rehearsal_stops_its_runtime_and_removes_its_directory(tmp_path, sig):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlcanary.cli", "rehearse", "--requests", "20", "--request-file", str(REQUEST),
         *map(str, STAGE.values())],
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(private_tmp)},
    )
    lines: list[str] = []
    stage_1_done = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if "stage-1-create-blue.yaml  (20 requests)" in line:
                stage_1_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert stage_1_done.wait(180), "".join(lines) + process.stderr.read()  # the table streamed out
        [root] = private_tmp.iterdir()
        green_logs = paths.deployment_log_dir(root, "fraud-scorer", "green")
        deadline = time.monotonic() + 180
        while not green_logs.exists() and time.monotonic() < deadline:  # stage 3 is starting green
            time.sleep(0.01)
        assert green_logs.exists()
        runtime = RuntimeClient(root)
        status = runtime.status()["endpoints"]["fraud-scorer"]
        started = [json.loads(paths.runtime_file(root).read_text())["pid"]]
        started += [pid for d in status["deployments"].values() for pid in d["pids"] if pid]
        assert len(started) >= 2
        process.send_signal(sig)
        assert process.wait(120) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    reader.join(10)
    assert "interrupted: the rehearsal stopped its private runtime and removed its state directory" in process.stderr.read()
    assert wait_gone(started) == []
    leaked = processes_holding_files_in(private_tmp)
    for pid in leaked:  # the test's own clean-up: a failing run leaves nothing behind
        os.kill(pid, signal.SIGKILL)
    assert leaked == []  # also green's workers, interrupted while starting
    assert list(private_tmp.iterdir()) == []


def test_an_interrupted_rehearsal_in_a_users_runtime_deletes_only_its_endpoint(state, tmp_path, monkeypatch):
    from mlcanary.local_runtime import rehearse as rehearsal

    other = tmp_path / "other.yaml"
    other.write_text(outside_the_project(STAGE["1"].read_text()).replace("name: fraud-scorer", "name: users-own"))
    assert run(state, "local", "up", other).exit_code == 0
    real_probe, probes = rehearsal.probe, []

    def probe_then_ctrl_c(*args, **kwargs):
        probes.append(1)
        if len(probes) == 2:
            raise KeyboardInterrupt  # Ctrl-C while stage 2 is probed
        return real_probe(*args, **kwargs)

    monkeypatch.setattr(rehearsal, "probe", probe_then_ctrl_c)
    result = run(state, "rehearse", "--requests", "5", "--request-file", REQUEST, STAGE["1"], STAGE["2"])
    assert result.exit_code == 130
    assert "interrupted: the rehearsal deleted endpoint(s) fraud-scorer it created" in result.output
    assert list(RuntimeClient(state).status()["endpoints"]) == ["users-own"]


def test_a_rehearsal_of_a_step_check_refuses_is_refused_before_anything_starts(tmp_path):
    """Found by a newcomer: stage 5 then stage 7 (blue removed while it holds 90 %) rehearsed with exit 0,
    although `check` and `local up` refuse that step."""
    from click.testing import CliRunner

    from mlcanary.cli import main

    stages = [str(PROJECT_DIR / "stacks" / "local" / name) for name in ("stage-5-canary-green.yaml",
                                                                       "stage-7-delete-blue.yaml")]
    env = {"TMPDIR": str(tmp_path)}
    result = CliRunner(env=env).invoke(main, ["rehearse", "--requests", "5", *stages])
    assert result.exit_code == 1, result.output
    assert "removed-deployment-had-no-traffic" in result.output and "nothing was started" in result.output
    assert not list(tmp_path.glob("mlcanary-rehearse-*"))  # no private runtime was made
