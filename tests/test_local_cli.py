"""The local-target commands as a user runs them: up, status, keys, invoke, logs, down, rehearse."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import PROJECT_DIR, outside_the_project
from mlcanary.local_runtime.client import RuntimeClient
from mlcanary.cli import main
from test_local_runtime import MODELS, stop_runtime, wait_for

LOCAL = PROJECT_DIR / "stacks" / "local"
STAGE = {p.stem.split("-")[1]: p for p in sorted(LOCAL.glob("stage-*.yaml"))}
REQUEST = PROJECT_DIR / "samples" / "request.json"


@pytest.fixture
def state(tmp_path):
    yield tmp_path / "state"
    stop_runtime(RuntimeClient(tmp_path / "state"))


def run(state, *args):
    return CliRunner().invoke(main, [*map(str, args), "--state-dir", str(state)])


def test_the_full_rehearsal_of_the_sample_stages(state):
    result = run(state, "rehearse", "--requests", "100", "--request-file", REQUEST, "--format", "json", *STAGE.values())
    assert result.exit_code == 0, result.output
    reports = {r["stage"]: r["deployments"] for r in json.loads(result.output)}
    assert list(reports) == [p.name for p in STAGE.values()]
    seen = {stage: {n: (d["liveConfigured"], d["liveObserved"], d["mirrored"], d["errors"]) for n, d in deps.items()}
            for stage, deps in reports.items()}
    assert seen == {
        "stage-1-create-blue.yaml": {"blue": (100, 100.0, 0, 0)},
        "stage-2-scale-blue.yaml": {"blue": (100, 100.0, 0, 0)},
        "stage-3-green-dark.yaml": {"blue": (100, 100.0, 0, 0), "green": (0, 0.0, 0, 0)},
        "stage-4-mirror-green.yaml": {"blue": (100, 100.0, 0, 0), "green": (0, 0.0, 10, 0)},
        "stage-4s-stop-mirror.yaml": {"blue": (100, 100.0, 0, 0), "green": (0, 0.0, 0, 0)},
        "stage-5-canary-green.yaml": {"blue": (90, 90.0, 0, 0), "green": (10, 10.0, 0, 0)},
        "stage-6-all-to-green.yaml": {"blue": (0, 0.0, 0, 0), "green": (100, 100.0, 0, 0)},
        "stage-7-delete-blue.yaml": {"green": (100, 100.0, 0, 0)},
    }
    assert reports["stage-5-canary-green.yaml"]["green"]["p99Ms"] > 0
    assert RuntimeClient(state).base_url() is None  # --down: it stopped the runtime it started


def test_rehearsal_prints_a_table_per_stage(state):
    result = run(state, "rehearse", "--requests", "20", "--request-file", REQUEST, STAGE["1"], STAGE["2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("(20 requests)") == 2
    assert "Rehearsed 2 stage(s), 20 probe requests each: no errors" in result.output
    assert "┃ deployment ┃" in result.output  # wide enough to read without a terminal


def test_rehearsal_keeps_a_runtime_it_did_not_start(state):
    RuntimeClient(state).ensure_running()
    result = run(state, "rehearse", "--requests", "10", "--request-file", REQUEST, STAGE["1"])
    assert result.exit_code == 0, result.output
    assert RuntimeClient(state).base_url() is not None


def test_up_status_invoke_logs_keys_down(state):
    first = run(state, "local", "up", STAGE["1"])
    assert first.exit_code == 0 and "started: blue" in first.output
    third = run(state, "local", "up", STAGE["3"])
    assert third.exit_code == 0 and "started: green" in third.output and "updated: blue" in third.output
    status = run(state, "local", "status")
    assert "fraud-scorer" in status.output and "blue" in status.output and "green" in status.output
    green = run(state, "invoke", "fraud-scorer", "--request-file", REQUEST, "--deployment", "green")
    assert green.exit_code == 0 and '"version": 2' in green.output
    live = run(state, "invoke", "fraud-scorer", "--request-file", REQUEST)
    assert live.exit_code == 0 and '"version": 1' in live.output  # green is dark: live goes to blue
    logs = run(state, "logs", "fraud-scorer", "--deployment", "green", "--lines", "5")
    assert "==> instance-0.log <==" in logs.output and "POST /score 200" in logs.output
    metrics = run(state, "local", "metrics")
    assert 'mlcanary_requests_total{endpoint="fraud-scorer",deployment="green",code="200"} 1' in metrics.output
    keys = run(state, "local", "keys", "fraud-scorer")
    assert keys.output.startswith("primaryKey: ") and "secondaryKey: " in keys.output
    down = run(state, "local", "down")
    assert "deleted endpoint fraud-scorer" in down.output and "stopped the local runtime" in down.output
    assert RuntimeClient(state).base_url() is None


def test_an_invalid_stage_is_refused_before_anything_changes(state, tmp_path):
    assert run(state, "local", "up", STAGE["1"]).exit_code == 0
    before = RuntimeClient(state).status()
    bad = tmp_path / "bad.yaml"
    bad.write_text(outside_the_project(STAGE["3"].read_text()).replace("traffic: {blue: 100, green: 0}", "traffic: {blue: 80, green: 10}"))
    result = run(state, "local", "up", bad)
    assert result.exit_code == 2
    assert "mlcanary:endpoint.traffic: live traffic must sum to 100 (or 0 when nothing is live), got 90" in result.output
    after = RuntimeClient(state).status()
    assert {n: (e["traffic"], sorted(e["deployments"])) for n, e in after["endpoints"].items()} == {
        n: (e["traffic"], sorted(e["deployments"])) for n, e in before["endpoints"].items()}


def test_a_failing_init_refuses_the_stage_and_leaves_traffic(state, tmp_path):
    assert run(state, "local", "up", STAGE["1"]).exit_code == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        outside_the_project(STAGE["1"].read_text()).replace("    traffic: {blue: 100}", f"""      green:
        code: {MODELS / 'code'}
        scoringScript: score.py
        model: {MODELS / 'model'}
        environmentVariables: {{FAIL_INIT: "1"}}
    traffic: {{blue: 90, green: 10}}""")
    )
    result = run(state, "local", "up", broken)
    assert result.exit_code == 1
    assert "deployment 'green' of endpoint 'fraud-scorer' failed to start: init() failed (worker exit code 3)" in result.output
    assert "init failed on purpose" in result.output  # the worker's log tail
    assert "traffic is as it was" in result.output
    endpoint = RuntimeClient(state).status()["endpoints"]["fraud-scorer"]
    assert endpoint["traffic"] == {"blue": 100} and list(endpoint["deployments"]) == ["blue"]


def test_a_missing_stage_file_exits_2(state, tmp_path):
    result = run(state, "local", "up", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "stage file not found" in result.output


def test_an_azure_stage_is_unusable_input_for_local_up(state):
    result = run(state, "local", "up", PROJECT_DIR / "stacks" / "stage-1-create-blue.yaml")
    assert result.exit_code == 2  # an unusable input, like an invalid stage
    assert RuntimeClient(state).base_url() is None
    assert "this stage targets 'azure'; the local target applies local-target stages" in result.output


def test_after_a_crash_status_names_the_recorded_endpoints_and_down_deletes_them(state):
    """Found by a newcomer: after `kill -9` of the runtime, `local status` said only "no local runtime
    is running" and `local down` left the recorded endpoint in place."""
    import os
    import signal

    assert run(state, "local", "up", STAGE["1"]).exit_code == 0
    client = RuntimeClient(state)
    os.kill(client.pid(), signal.SIGKILL)
    assert wait_for(lambda: client.base_url() is None, 30)
    status = run(state, "local", "status")
    assert status.exit_code == 0
    assert "no local runtime is running; its state holds endpoint(s) fraud-scorer: `mlcanary local start`" in status.output
    down = run(state, "local", "down")
    assert down.exit_code == 0, down.output
    assert "deleted endpoint fraud-scorer" in down.output and "stopped the local runtime" in down.output
    assert client.base_url() is None
    assert json.loads(run(state, "local", "status", "--format", "json").output) == {
        "running": False, "endpoints": {}, "recorded": []}


def test_request_counts_go_on_after_stop_and_start_and_invoke_meanwhile_says_how_to_start(state):
    """Found by a newcomer: `invoke` on a stopped runtime did not say `local start`, and the counts of
    `local status` went back to 0 after `local stop` / `local start` (Azure's metrics do not)."""
    assert run(state, "local", "up", STAGE["1"]).exit_code == 0
    for _ in range(3):
        assert run(state, "invoke", "fraud-scorer", "--request-file", REQUEST).exit_code == 0
    assert run(state, "local", "stop").exit_code == 0

    stopped = run(state, "invoke", "fraud-scorer", "--request-file", REQUEST)
    assert stopped.exit_code == 1
    assert stopped.stderr == (f"error: no local runtime is running for {state.resolve()}; its state holds endpoint(s) "
                              "fraud-scorer: `mlcanary local start` brings them back\n")

    assert run(state, "local", "start").exit_code == 0
    counted = json.loads(run(state, "local", "status", "--format", "json").stdout)
    assert counted["endpoints"]["fraud-scorer"]["deployments"]["blue"]["metrics"]["requests"] == 3
    assert 'mlcanary_requests_total{endpoint="fraud-scorer",deployment="blue",code="200"} 3' in \
        run(state, "local", "metrics").stdout
