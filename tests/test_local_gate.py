"""`local up` passes the gate `check` applies, previews its changes, and prints what it changed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlcanary.cli import main
from mlcanary.local_runtime.client import RuntimeClient
from test_local_cli import REQUEST, STAGE, run, state  # noqa: F401 - the `state` fixture
from test_local_runtime import MODELS, stop_runtime


def up(state, stage, *options):
    return run(state, "local", "up", stage, *options)


def routing(state) -> dict:
    endpoints = RuntimeClient(state).status()["endpoints"]
    return {n: (e["traffic"], e["mirrorTraffic"], sorted(e["deployments"])) for n, e in endpoints.items()}


def test_a_step_check_refuses_is_refused_by_local_up_and_changes_nothing(state):
    for stage in "1", "3", "5":
        assert up(state, STAGE[stage]).exit_code == 0
    before = routing(state)
    result = up(state, STAGE["7"])
    assert result.exit_code == 1, result.output
    assert "[mandatory]  removed-deployment-had-no-traffic" in result.output
    assert "deployment 'blue' is removed but had 90% live traffic in the previous stage" in result.output
    assert "refused by a mandatory policy (above); nothing was changed" in result.output
    assert routing(state) == before == {"fraud-scorer": ({"blue": 90, "green": 10}, {}, ["blue", "green"])}


def test_a_stopped_runtime_is_judged_by_the_state_it_will_restore(state):
    """After a restart the runtime brings stage 5 back: stage 7 is refused before anything starts."""
    for stage in "1", "3", "5":
        assert up(state, STAGE[stage]).exit_code == 0
    stop_runtime(RuntimeClient(state))
    preview = up(state, STAGE["7"], "--preview")
    assert "  live traffic: blue 90, green 10 -> green 100" in preview.output and "  removed: blue" in preview.output
    result = up(state, STAGE["7"])
    assert result.exit_code == 1 and "removed-deployment-had-no-traffic" in result.output
    assert RuntimeClient(state).base_url() is None


def test_the_gate_judges_the_step_from_the_running_state_as_check_judges_two_stage_files(state):
    """Shared code: the message `local up` prints is the one `check STAGE-5 STAGE-7` reports."""
    checked = CliRunner().invoke(main, ["check", "--format", "json", str(STAGE["5"]), str(STAGE["7"])])
    transition = [v for v in json.loads(checked.output) if " -> " in v["stage"]]
    assert [v["policy"] for v in transition] == ["removed-deployment-had-no-traffic"]
    for stage in "1", "3", "5":
        assert up(state, STAGE[stage]).exit_code == 0
    refused = up(state, STAGE["7"], "--format", "json")
    assert refused.exit_code == 1
    document = json.loads(refused.stdout)
    assert document["result"] == "refused"
    assert [(v["policy"], v["message"]) for v in document["violations"]] == [
        (v["policy"], v["message"]) for v in transition]
    assert document["violations"][0]["stage"] == f"fraud-scorer as running -> {STAGE['7']}"


def test_advisories_are_printed_and_the_stage_applied(state):
    for stage in "1", "3", "4":
        assert up(state, STAGE[stage]).exit_code == 0
    result = up(state, STAGE["5"])
    assert result.exit_code == 0, result.output
    assert "[advisory]  mirror-ends-before-live" in result.output
    assert "applied" in result.output
    assert routing(state)["fraud-scorer"][0] == {"blue": 90, "green": 10}


def test_the_first_stage_is_judged_by_the_pack_alone(state):
    """As `check` on one file: a new endpoint has no step to judge (no dark-before-live advisory)."""
    result = up(state, STAGE["1"])
    assert result.exit_code == 0 and "dark-before-live" not in result.output


def test_a_policy_pack_config_is_applied_and_a_violation_starts_nothing(state, tmp_path):
    config = tmp_path / "policy.json"
    config.write_text(json.dumps({"instance-count-in-range": {"minInstanceCount": 2}}))
    result = up(state, STAGE["1"], "--policy-pack-config", config)
    assert result.exit_code == 1, result.output
    assert "instance count must be a whole number from 2 to 50, got 1" in result.output
    assert RuntimeClient(state).base_url() is None  # not even the runtime was started


def test_an_invalid_policy_pack_config_exits_2(state, tmp_path):
    config = tmp_path / "policy.json"
    config.write_text(json.dumps({"no-such-policy": "mandatory"}))
    result = up(state, STAGE["1"], "--policy-pack-config", config)
    assert result.exit_code == 2
    assert "unknown policy 'no-such-policy'" in result.output
    assert RuntimeClient(state).base_url() is None


def test_preview_prints_the_changes_and_applies_nothing(state):
    assert up(state, STAGE["2"]).exit_code == 0
    before = routing(state)
    result = up(state, STAGE["3"], "--preview")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"would apply {STAGE['3']} to endpoint fraud-scorer:",
        "  started: green",
        "  unchanged: blue",
        "  live traffic: blue 100 (unchanged)",
        "  mirror traffic: none (unchanged)",
    ]
    assert routing(state) == before


def test_preview_shows_traffic_before_and_after_and_removals(state):
    for stage in "1", "3", "5", "6":
        assert up(state, STAGE[stage]).exit_code == 0
    result = up(state, STAGE["7"], "--preview", "--format", "json")
    assert result.exit_code == 0, result.output
    changes = json.loads(result.stdout)["changes"]
    assert (changes["removed"], changes["unchanged"], changes["started"]) == (["blue"], ["green"], [])
    assert changes["traffic"] == {"before": {"green": 100}, "after": {"green": 100}}
    assert sorted(RuntimeClient(state).status()["endpoints"]["fraud-scorer"]["deployments"]) == ["blue", "green"]


def test_preview_of_a_new_endpoint_starts_no_runtime(state):
    result = up(state, STAGE["3"], "--preview")
    assert result.exit_code == 0
    assert "  started: blue, green" in result.output and "  live traffic: none -> blue 100" in result.output
    assert RuntimeClient(state).base_url() is None


def test_an_apply_prints_the_traffic_change(state):
    """Stage 4 changes no deployment but switches mirroring on: the output says so."""
    for stage in "1", "3":
        assert up(state, STAGE[stage]).exit_code == 0
    result = up(state, STAGE["4"])
    assert result.exit_code == 0, result.output
    assert "  unchanged: blue, green" in result.output
    assert "  mirror traffic: none -> green 10" in result.output
    assert "  live traffic: blue 100 (unchanged)" in result.output


def test_a_scaled_deployment_says_how(state):
    assert up(state, STAGE["1"]).exit_code == 0
    result = up(state, STAGE["2"])
    assert "  updated: blue (instances 1 -> 2)" in result.output


def test_a_stage_refused_on_its_first_apply_leaves_no_endpoint_behind(state, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(STAGE["1"].read_text().replace(
        "./samples/fraud-model/v1/model", str(MODELS / "model")).replace(
        "./samples/fraud-model/onlinescoring", str(MODELS / "code")).replace(
        "        instanceCount: 1\n", '        instanceCount: 1\n        environmentVariables: {FAIL_INIT: "1"}\n'))
    assert "FAIL_INIT" in broken.read_text()
    result = up(state, broken)
    assert result.exit_code == 1, result.output
    assert "init() failed" in result.output and "traffic is as it was" in result.output
    assert RuntimeClient(state).status()["endpoints"] == {}


def test_an_unreadable_state_file_is_named_and_nothing_starts(state):
    state.mkdir(parents=True)
    (state / "state.json").write_text("{nope")
    for command in (["local", "up", STAGE["1"]], ["rehearse", "--request-file", REQUEST, STAGE["1"]]):
        result = run(state, *command)
        assert result.exit_code == 1, result.output
        assert f"{state / 'state.json'}: cannot read the runtime's state" in result.output
        assert "Traceback" not in result.output
        assert RuntimeClient(state).base_url() is None


def test_a_stage_judged_on_a_state_that_changed_since_is_refused(state):
    """The gate's verdict holds only for the state it judged: another apply in between refuses the stage."""
    from mlcanary.local_runtime.apply import StageRefused, apply_stage
    from mlcanary.local_runtime.rehearse import load_stage

    for stage in "1", "3", "5", "6":
        assert up(state, STAGE[stage]).exit_code == 0
    client = RuntimeClient(state)
    judged = client.status()["endpoints"]["fraud-scorer"]  # stage 6: blue 0, green 100 - stage 7 passes
    assert up(state, STAGE["5"]).exit_code == 0  # meanwhile: back to blue 90, green 10
    with pytest.raises(StageRefused, match="changed after the stage was judged"):
        apply_stage(load_stage(STAGE["7"]), client, judged=judged)
    assert routing(state)["fraud-scorer"] == ({"blue": 90, "green": 10}, {}, ["blue", "green"])
