"""`mlcanary rollout` input errors: exit 2, a message naming the option, no traceback, nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

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


def write_record(path, *events, flags=None):
    """A record as a rollout of STAGE_3 writes it: its plan line, then `events` (decisions, steps)."""
    from mlcanary.rollout.plan import load_plan, plan_json

    plan = load_plan(Path(STAGE_3), {"to": "green", "steps": [10, 50, 100], "minRequests": 20, **(flags or {})})
    lines = [{"time": 1.0, "event": "plan", "rollout": "fraud-scorer-1", "plan": plan_json(plan)},
             *({"time": 2.0, "rollout": "fraud-scorer-1", **e} for e in events)]
    with path.open("a") as out:
        out.writelines(json.dumps(line) + "\n" for line in lines)
    return path


INTERRUPTED_AT_50 = {"event": "decision", "decision": "interrupted", "step": "10 %", "lastGood": 0,
                     "judgeState": None, "targetServed": 40, "exitCode": 130}


@pytest.mark.parametrize("tamper, message", [
    ({"lastGood": 50}, "lastGood 50 is not a step of this plan (-1 to 2)"),
    ({"lastGood": -7}, "lastGood -7 is not a step of this plan (-1 to 2)"),
    ({"lastGood": "1"}, "'lastGood' is missing or not int, got '1'"),
    ({"targetServed": -3}, "targetServed must be a whole number of at least 0, got -3"),
    ({"decision": "won"}, "unknown decision 'won'"),
    ({"judgeState": {"errors": 1}}, "its judgeState cannot be loaded"),
], ids=["last_good_past_the_plan", "last_good_negative", "last_good_a_string", "served_negative", "unknown_decision",
        "judge_state_garbled"])
def test_a_tampered_record_is_refused_before_anything_changes(tamper, message, tmp_path):
    record = write_record(tmp_path / "record.jsonl", {**INTERRUPTED_AT_50, **tamper})
    before = record.read_bytes()
    result = run("--resume", "--record", str(record), state=tmp_path / "state")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert record.read_bytes() == before and not (tmp_path / "state").exists()


def test_resume_takes_the_plan_from_the_record_and_refuses_an_option_that_contradicts_it(tmp_path):
    record = write_record(tmp_path / "record.jsonl", INTERRUPTED_AT_50)
    result = run("--resume", "--record", str(record), "--min-requests", "100", state=tmp_path / "state")
    assert result.exit_code == 2, result.output
    assert "--min-requests (recorded: 20) contradicts the plan recorded" in result.output
    steps = run("--resume", "--record", str(record), "--steps", "50,100", state=tmp_path / "state")
    assert steps.exit_code == 2 and "--steps (recorded: 10,50,100) contradicts" in steps.output
    other = run(str(PROJECT_DIR / "stacks" / "local" / "stage-5-canary-green.yaml"), "--resume", "--record", str(record),
                state=tmp_path / "state")
    assert other.exit_code == 2 and "is of " in other.output and "leave STAGE_FILE out" in other.output
    assert not (tmp_path / "state").exists()


def test_a_rollout_that_ended_is_not_resumed(tmp_path):
    record = write_record(tmp_path / "record.jsonl", {"event": "decision", "decision": "finished", "step": "100 %",
                                                      "index": 2})
    result = run("--resume", "--record", str(record), state=tmp_path / "state")
    assert result.exit_code == 2 and "the rollout ended (finished at '100 %'); nothing to resume" in result.output


@pytest.mark.parametrize("target", ["stage_file", "yaml_file", "binary_file"])
def test_record_never_writes_into_something_that_is_not_a_record(target, tmp_path):
    stage = tmp_path / "stage.yaml"
    stage.write_bytes(Path(STAGE_3).read_bytes().replace(b"./samples", str(PROJECT_DIR / "samples").encode()))
    path = {"stage_file": stage, "yaml_file": tmp_path / "notes.yaml", "binary_file": tmp_path / "x.png"}[target]
    if target == "yaml_file":
        path.write_text("steps: [10, 100]\n")
    if target == "binary_file":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    before = path.read_bytes()
    result = run(str(stage), "--to", "green", "--record", str(path), state=tmp_path / "state")
    assert result.exit_code == 2, result.output
    assert ("is the stage file" in result.output if target == "stage_file" else
            "not a line of a rollout record" in result.output or "not a rollout record" in result.output)
    assert path.read_bytes() == before and not (tmp_path / "state").exists()


def test_plan_only_validates_what_the_run_validates(tmp_path):
    load = run(STAGE_3, "--to", "green", "--plan-only", "--load", "10", state=tmp_path / "state")
    assert load.exit_code == 2 and "--load needs --request-file" in load.output
    tick = run(STAGE_3, "--to", "green", "--interval", "2s", "--tick", "5", "--plan-only", state=tmp_path / "state")
    assert tick.exit_code == 2 and "--tick: at most the interval (2 s), got 5" in tick.output
    folder = run(STAGE_3, "--to", "green", "--plan-only", "--load", "10", "--request-file", str(tmp_path),
                 state=tmp_path / "state")
    assert folder.exit_code == 2 and "request file" in folder.output and "Traceback" not in folder.output
    assert not (tmp_path / "state").exists()


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


def test_the_live_table_fits_80_columns_and_shows_pinned_requests_apart():
    """Before: on a 120-column terminal the status line wrapped; pinned requests were counted as the split's."""
    from rich.console import Console

    from mlcanary.rollout.counts import Counts
    from mlcanary.rollout.runner import View
    from mlcanary.rollout_cli import _table

    view = View(step="50 %", index=2, steps=3, traffic={"blue": 50, "green": 50}, mirror={},
                counts={"blue": Counts(123456, 3), "green": Counts(120000, 40)}, pinned={"green": Counts(55)},
                judge={"judge": "sequential", "e(errors)": 12.345, "e(latency)": 0.5},
                status="judging: 120000 of 100 requests to green", elapsed_s=12)
    console = Console(width=120, record=True)
    console.print(_table(view))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    green = next(line for line in lines if "green" in line and "120000" in line)
    assert green.split()[-2:] == ["55", "│"]  # pinned, in a column of its own
    assert any("pinned: sent with the deployment header" in line for line in lines)


def test_plot_never_overwrites_a_file_that_is_not_a_picture(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("the only copy\n")
    result = run(STAGE_3, "--to", "green", "--plot", str(notes), "--plan-only", state=tmp_path / "state")
    assert result.exit_code == 2 and "--plot " in result.output and "exists and is not a PNG" in result.output
    assert notes.read_text() == "the only copy\n"


COMPARE = {"compare": {"path": "scores", "tolerance": "0.01"}}


def test_resume_keeps_the_recorded_comparison_and_refuses_a_compare_option_that_contradicts_it(tmp_path):
    record = write_record(tmp_path / "record.jsonl", INTERRUPTED_AT_50, flags=COMPARE)
    path = run("--resume", "--record", str(record), "--compare-path", "$", state=tmp_path / "state")
    assert path.exit_code == 2 and "--compare-path (recorded: scores) contradicts the plan recorded" in path.output
    tolerance = run("--resume", "--record", str(record), "--output-tolerance", "abs:1", state=tmp_path / "state")
    assert tolerance.exit_code == 2 and "--output-tolerance (recorded: 0.01) contradicts" in tolerance.output
    uncompared = write_record(tmp_path / "uncompared.jsonl", INTERRUPTED_AT_50)
    added = run("--resume", "--record", str(uncompared), "--compare-path", "scores", state=tmp_path / "state")
    assert added.exit_code == 2 and "--compare-path (recorded: None) contradicts" in added.output
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("answers, message", [
    ({"compared": 5, "agreed": 9}, "its answers agreed 9 of only 5 compared"),
    ({"compared": -5, "agreed": 0}, "its answers compared is not a whole number of at least 0: -5"),
    ({"compared": 5, "agreed": 0, "fold": {"tally": {"target": 1, "baseline": 1, "cells": {}}}},
     "its answers tally: a tally before the reference was full"),
    ("lots", "its answers are not an object: 'lots'"),
], ids=["agreed_above_compared", "negative_compared", "tally_before_reference", "not_an_object"])
def test_a_record_with_tampered_answers_is_refused_before_anything_changes(answers, message, tmp_path):
    window = {"event": "judgement", "step": "10 %", "index": 0, "traffic": {"blue": 90, "green": 10}, "mirror": {},
              "window": {}, "eValues": {}, "targetServed": 5, "answers": answers}
    record = write_record(tmp_path / "record.jsonl", window, INTERRUPTED_AT_50, flags=COMPARE)
    before = record.read_bytes()
    result = run("--resume", "--record", str(record), state=tmp_path / "state")
    assert result.exit_code == 2, result.output
    assert "judgement 1 (step '10 %'): " + message in result.output and "nothing was changed" in result.output
    assert record.read_bytes() == before and not (tmp_path / "state").exists()


def test_resume_refuses_a_stage_whose_rollout_config_now_compares_what_the_record_did_not(tmp_path):
    from mlcanary.rollout.plan import load_plan, plan_json
    from test_rollout_plan import stage_with

    stage_file = stage_with(tmp_path, {"to": "green", "steps": [10, 50, 100]})
    plan = load_plan(stage_file, {})
    record = tmp_path / "record.jsonl"
    record.write_text(json.dumps({"time": 1.0, "event": "plan", "rollout": "r-1", "plan": plan_json(plan)}) + "\n"
                      + json.dumps({"time": 2.0, "rollout": "r-1", **INTERRUPTED_AT_50}) + "\n")
    stage_with(tmp_path, {"to": "green", "steps": [10, 50, 100], "compare": {"path": "scores"}})  # edited since
    result = run("--resume", "--record", str(record), state=tmp_path / "state")
    assert result.exit_code == 2, result.output
    assert "changed since rollout r-1 was recorded: its mlcanary:rollout now sets --compare-path (recorded: None)" \
        in result.output and not (tmp_path / "state").exists()


@pytest.mark.parametrize("mirrored, says", [
    (True, "the target served 12 request(s) during the rollout (its mirrored copies included: no client got those answers)"),
    (False, "the target served 12 request(s) during the rollout\n"),
], ids=["with_a_mirror_phase", "live_steps_only"])
def test_the_summary_says_when_the_targets_requests_include_mirrored_copies(mirrored, says):
    """A rollout rolled back in its mirror phase said 'the target served 12 request(s)': copies no client got."""
    import io

    from rich.console import Console

    from mlcanary.rollout.runner import Outcome, View
    from mlcanary.rollout_cli import _print_outcome

    out = io.StringIO()
    outcome = Outcome(1, "rolled back", "at step mirror 20 %", target_served=12, step="mirror 20 %")
    _print_outcome(Console(file=out, width=200), outcome, View(), None, None, None, "text", 0.05, "r-1",
                   mirrored=mirrored)
    assert says in out.getvalue()
