"""`mlcanary rollout` input errors: exit 2, a message naming the option, no traceback, nothing changed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlcanary.cli import main
from conftest import PROJECT_DIR

STAGE_3 = str(PROJECT_DIR / "stacks" / "local" / "stage-3-green-dark.yaml")


def run(*args: str, state=None):
    return CliRunner().invoke(main, ["rollout", *args], env={"MLCANARY_STATE_DIR": str(state)} if state else None)


@pytest.mark.parametrize("args, message", [
    ([STAGE_3], "--to: required"),
    ([STAGE_3, "--to", "purple"], "--to: deployment 'purple' is not in this stage; deployments: blue, green"),
    ([STAGE_3, "--to", "green", "--rule", "error_rate > 0.1"], "--rule: rule 'error_rate > 0.1': operator '>' not allowed"),
    ([STAGE_3, "--to", "green", "--steps", "10,abc"], "--steps:"),
    ([STAGE_3, "--to", "green", "--interval", "fast"], "--interval: a duration such as 30s"),
    ([STAGE_3, "--to", "green", "--mirror", "10"], "mirror and mirrorFor go together"),
    ([STAGE_3, "--to", "green", "--load", "10"], "--load needs --request-file"),
    ([STAGE_3, "--to", "green", "--resume"], "--resume needs --record"),
    (["missing.yaml", "--to", "green"], "missing.yaml: stage file not found"),
], ids=["no_target", "unknown_target", "bad_rule", "steps_not_numbers", "bad_interval", "mirror_without_duration",
        "load_without_body", "resume_without_record", "missing_stage_file"])
def test_bad_input_exits_2_naming_the_option(args, message, tmp_path):
    result = run(*args, state=tmp_path / "state")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "state").exists()  # no runtime was started, nothing was changed


def test_plan_only_prints_the_stages_and_the_gate_as_json():
    result = run(STAGE_3, "--to", "green", "--steps", "20,100", "--plan-only", "--format", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{"):])
    assert [s["traffic"] for s in plan["stages"]] == [{"blue": 80, "green": 20}, {"blue": 0, "green": 100}]
    assert plan["gate"] == "passed"


def test_resume_from_a_record_of_another_rollout_is_refused(tmp_path):
    record = tmp_path / "record.jsonl"
    record.write_text(json.dumps({"time": 0, "event": "plan", "plan": {"endpoint": "fraud-scorer", "to": "green",
                                                                       "from": "blue", "steps": [50, 100]}}) + "\n")
    result = run(STAGE_3, "--to", "green", "--resume", "--record", str(record), state=tmp_path / "state")
    assert result.exit_code == 2 and "the record is of another rollout (steps" in result.output


def test_write_stages_writes_files_and_changes_nothing(tmp_path):
    result = run(STAGE_3, "--to", "green", "--steps", "50,100", "--write-stages", str(tmp_path / "out"),
                 state=tmp_path / "state")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "stage-3-green-dark-step-1-50pct.yaml", "stage-3-green-dark-step-2-100pct.yaml"]
    assert not (tmp_path / "state").exists()


def test_an_azure_rollout_needs_a_stack(tmp_path):
    result = run(str(PROJECT_DIR / "stacks" / "stage-3-green-dark.yaml"), "--to", "green")
    assert result.exit_code == 2 and "give --stack NAME" in result.output


@pytest.mark.parametrize("option", ["--record", "--plot"])
def test_a_record_or_plot_in_a_missing_folder_is_refused_before_anything_changes(option, tmp_path):
    """Found by a newcomer: --record into a missing folder was a FileNotFoundError traceback after the plan."""
    from click.testing import CliRunner

    from mlcanary.cli import main

    target = tmp_path / "missing" / "out.file"
    result = CliRunner().invoke(main, ["rollout", str(PROJECT_DIR / "stacks" / "local" / "stage-3-green-dark.yaml"),
                                       "--to", "green", option, str(target), "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2, result.output
    assert f"{option} {target}: the folder {target.parent} does not exist" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "state").exists()  # no runtime was started
