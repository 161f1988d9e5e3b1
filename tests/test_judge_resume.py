"""`mlcanary rollout --resume` with the error/latency judge: the state saved at the last promotion, then
the resumed step's judged windows folded in again from the record (rollout/judge_replay.py), so the
e-process continues, nothing is counted twice and the step keeps the requests it judged before the stop.

The first tests drive the runner with the simulated world of test_rollout_runner.py (a process killed
mid-step is a runner that stops without a decision, as kill -9 leaves its record); the CLI tests refuse
a tampered record; one SIGKILLs a real `mlcanary rollout` on the local target and resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlcanary.cli import main
from mlcanary.rollout import judge_replay
from mlcanary.rollout.counts import counts_from_json
from mlcanary.rollout.judges import make_judge
from mlcanary.rollout.plan import load_plan, plan_json
from mlcanary.rollout.record import Recorder, resume_point
from mlcanary.rollout.runner import Runner
from test_rollout_runner import STAGE_3, World


class Killed(BaseException):
    """kill -9: the process stops where it is; nothing after it runs, no decision is recorded."""


def judgements(events: list[dict], step: str) -> list[dict]:
    return [e for e in events if e["event"] == "judgement" and e["step"] == step]


def judged_target(lines: list[dict]) -> int:
    return sum(e["judged"]["target"]["requests"] for e in lines if "judged" in e)


def run_until(world: World, plan, recorder: Recorder, *, kill_when=None, point=None):
    """One process of the rollout, from the start or resumed from `point` as the CLI resumes it; killed
    (after a tick) once `kill_when(recorder.events)` holds."""
    options = plan.options
    judge = make_judge(options.judge, options.alpha, options.rules, options.failure_limit)
    restored = judge_replay.restore(judge, point) if point is not None else None
    sleep = world.sleep
    if kill_when is not None:
        def sleep(seconds):  # noqa: F811
            world.sleep(seconds)
            if kill_when(recorder.events):
                raise Killed()
    runner = Runner(plan, world, world, judge, recorder, clock=world.clock, sleep=sleep)
    start = 0 if point is None else point.start_index
    recorder.write("plan", plan=plan_json(plan), resumedAt=start if point else None)
    outcome = runner.run(start, None, restored.target_served if restored else 0,
                         resumed_step=(restored.target, restored.baseline) if restored else None,
                         baked=point.baked if point else True)
    return outcome, judge


def e_errors_at_least(value: float):
    def reached(events: list[dict]) -> bool:
        lines = judgements(events, "50 %")
        return bool(lines) and lines[-1]["eValues"]["errors"] >= value
    return reached


BAD = {"to": "green", "steps": [50, 100], "interval": "2s", "minRequests": 400, "maxHold": 50}


def test_a_bad_target_killed_mid_step_at_e_10_is_rolled_back_sooner_after_resume_than_a_fresh_judge_would():
    # green fails 3 % of its requests, blue none: e(errors) climbs window by window to 1/alpha = 20.
    plan = load_plan(STAGE_3, BAD)
    fresh_world = World(rps=20, green_error_rate=0.03)
    fresh_events = Recorder(None, "fresh", clock=fresh_world.clock)
    fresh, _ = run_until(fresh_world, plan, fresh_events)
    assert fresh.decision == "rolled back" and fresh.step == "50 %", fresh.message
    fresh_needed = judged_target(judgements(fresh_events.events, "50 %"))

    world = World(rps=20, green_error_rate=0.03)
    recorder = Recorder(None, "r1", clock=world.clock)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_when=e_errors_at_least(10))
    before = judgements(recorder.events, "50 %")
    e_at_kill, judged_before = before[-1]["eValues"]["errors"], judged_target(before)
    assert 10 <= e_at_kill < 20 and not [e for e in recorder.events if e["event"] == "decision"
                                         and e["decision"] != "held"]

    point = resume_point(recorder.events, STAGE_3)
    assert point.start_index == 0 and point.how == "died" and point.judged_before == 0
    resumed_from = len(recorder.events)
    outcome, judge = run_until(world, plan, recorder, point=point)
    assert outcome.decision == "rolled back" and outcome.step == "50 %", outcome.message
    after = judgements(recorder.events[resumed_from:], "50 %")
    # The e-process went on from where the kill left it: every window after the resume starts above it...
    assert after and all(e["eValues"]["errors"] >= e_at_kill for e in after)
    rolled_back = next(e for e in recorder.events[resumed_from:] if e.get("decision") == "rolled-back")
    assert rolled_back["eValues"]["errors"] >= 20
    # ... so the target served fewer requests after the resume than a fresh judge needed to roll back,
    # and the judge's folded requests are those before and after the kill, each counted once.
    judged_after = judged_target(after)
    assert judged_after < fresh_needed - judged_before // 2
    assert judge.errors.events[0] + judge.errors_alone.events[0] == sum(
        e["judged"]["target"]["errors"] for e in before + after if "judged" in e)
    assert rolled_back["targetServed"] == judged_before + judged_after == outcome.target_served


def test_a_good_target_killed_mid_step_is_promoted_after_resume_with_the_steps_requests_before_and_after_added_up():
    plan = load_plan(STAGE_3, {**BAD, "minRequests": 200})
    world = World(rps=40)  # 20 requests/s to green at 50 %: 200 take 10 s, the kill comes at about 4 s
    recorder = Recorder(None, "r1", clock=world.clock)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_when=lambda events: judged_target(judgements(events, "50 %")) >= 80)
    judged_before = judged_target(judgements(recorder.events, "50 %"))
    assert 80 <= judged_before < 200

    point = resume_point(recorder.events, STAGE_3)
    resumed_from = len(recorder.events)
    outcome, _ = run_until(world, plan, recorder, point=point)
    assert outcome.decision == "promoted", outcome.message
    after = recorder.events[resumed_from:]
    promoted = next(i for i, e in enumerate(after) if e.get("decision") == "promoted" and e["step"] == "50 %")
    judged_after = judged_target(judgements(after[:promoted], "50 %"))
    checks = [e for e in after[:promoted] if e["event"] == "interval" and e["step"] == "50 %"]
    # --min-requests counted the requests judged before the kill and those after, each once
    assert checks and checks[-1]["requests"] == judged_before + judged_after >= 200
    assert judged_after < 200  # a step that started from zero would have needed 200 after the resume
    held = [e for e in after[:promoted] if e.get("decision") == "held"]
    assert all(e["requests"] > judged_before for e in held)


def test_resume_after_an_interruption_folds_only_the_windows_after_the_saved_state():
    """An interruption saves the judge mid-step: the windows before it are in its state, those of a later
    run that was killed are folded again, and the step's requests are all of them."""
    plan = load_plan(STAGE_3, {**BAD, "minRequests": 10_000, "maxHold": 100})
    world = World(rps=20, green_error_rate=0.01)
    recorder = Recorder(None, "r1", clock=world.clock)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_when=lambda events: len(judgements(events, "50 %")) >= 3)
    point = resume_point(recorder.events, STAGE_3)
    judge = make_judge("sequential", plan.options.alpha, (), 1)
    restored = judge_replay.restore(judge, point)
    # the interruption's line, as Runner._interrupted writes it: the judge's state as it is now
    recorder.write("decision", decision="interrupted", step="the stage file", lastGood=-1,
                   judgeState=judge.state(), targetServed=restored.target_served, exitCode=130, returned=True)
    assert restored.replayed == 3
    with pytest.raises(Killed):
        run_until(world, plan, recorder, point=resume_point(recorder.events, STAGE_3),
                  kill_when=lambda events: len(judgements(events, "50 %")) >= 6)
    point = resume_point(recorder.events, STAGE_3)
    assert point.how == "died" and point.judged_before == 3 and len(point.step_lines) >= 6
    again = make_judge("sequential", plan.options.alpha, (), 1)
    restored = judge_replay.restore(again, point)
    lines = judgements(recorder.events, "50 %")
    assert restored.replayed == len(lines) - 3
    assert again.e_values()["errors"] == pytest.approx(lines[-1]["eValues"]["errors"], rel=1e-12)
    assert restored.target.requests == judged_target(lines) and restored.target_served == lines[-1]["targetServed"]


# --- the CLI: a record line no run could have written ---------------------------------------------------

def cli(*args: str, state=None):
    return CliRunner().invoke(main, ["rollout", *args], env={"MLCANARY_STATE_DIR": str(state)} if state else None)


def killed_record(tmp_path: Path) -> Path:
    """The record of a rollout killed mid-step, as the runner wrote it."""
    plan = load_plan(STAGE_3, BAD)
    world = World(rps=20, green_error_rate=0.03)
    record = tmp_path / "record.jsonl"
    recorder = Recorder(record, "fraud-scorer-1", clock=world.clock)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_when=e_errors_at_least(5))
    recorder.close()
    return record


def tampered(record: Path, change) -> int:
    """Change the record's last judged window with `change`; its line number."""
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    last = max(i for i, e in enumerate(lines) if e["event"] == "judgement" and "judged" in e)
    change(lines[last])
    record.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return last + 1


def lower_e(line):
    line["eValues"]["errors"] /= 2


def more_errors_than_requests(line):
    line["judged"]["target"]["errors"] = line["judged"]["target"]["requests"] + 1


def more_served(line):
    line["targetServed"] += 100


def fewer_errors(line):
    line["judged"]["target"].update(errors=0, errors5xx=0)


def no_fold(line):
    del line["judged"]


def bound_not_in_histogram(line):
    line["judged"]["slowBoundS"] = 0.3


@pytest.mark.parametrize("change, message", [
    (lower_e, "eValues {'errors': "),
    (more_errors_than_requests, "judged target: errors5xx"),
    (more_served, "targetServed"),
    (fewer_errors, "are not what its judged counts give"),
    (no_fold, "holds neither what the judge folded ('judged') nor why it had no data ('noData')"),
    (bound_not_in_histogram, "slowBoundS 0.3 is not a latency histogram bound"),
], ids=["e_value_lowered", "more_errors_than_requests", "target_served_raised", "errors_removed", "fold_removed",
        "latency_bound_not_a_histogram_bound"])
def test_a_record_with_a_tampered_judged_window_is_refused_with_exit_2_naming_the_line(change, message, tmp_path):
    record = killed_record(tmp_path)
    line = tampered(record, change)
    before = record.read_bytes()
    result = cli("--resume", "--record", str(record), state=tmp_path / "state")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: record {record}:{line} (rollout fraud-scorer-1): the judgement line "
                                    "of step '50 %' at time ")
    assert message in result.output
    assert "nothing was changed" in result.output and "Traceback" not in result.output
    assert record.read_bytes() == before and not (tmp_path / "state").exists()


def test_an_untampered_killed_record_passes_the_same_checks(tmp_path):
    """The refusals above come from the tampering: the record as the runner wrote it is restored."""
    record = killed_record(tmp_path)
    events = [json.loads(line) for line in record.read_text().splitlines()]
    point = resume_point(events, record)
    judge = make_judge("sequential", 0.05, (), 1)
    restored = judge_replay.restore(judge, point)
    lines = judgements(events, "50 %")
    assert restored.replayed == len([e for e in lines if "judged" in e]) and judge.e_values()["errors"] >= 5


# --- a real rollout on the local target, SIGKILLed mid-step and resumed ------------------------------------

from test_rollout_local import REQUEST, events, live_traffic, rollout, runtime, stage  # noqa: E402,F401 (fixture)


@pytest.fixture
def endpoint(runtime, request):  # noqa: F811
    name = request.node.name.removeprefix("test_").replace("_", "-")[:24].rstrip("-")
    yield name
    if name in runtime.status()["endpoints"]:
        runtime.delete_endpoint(name)


def test_a_failing_target_sigkilled_mid_step_at_e_10_is_rolled_back_on_evidence_a_fresh_judge_lacks(
        runtime, endpoint, tmp_path):  # noqa: F811
    # green fails 5 % of its requests, blue none; with alpha 0.01 the error e-value rolls back at 100, each
    # failed request multiplies it by about 1.6: the kill at e >= 10 leaves about half the way to go.
    record, stage_file = tmp_path / "record.jsonl", stage(tmp_path, endpoint, {"FAIL_RATE": "0.05"})
    args = ["--to", "green", "--steps", "50,100", "--interval", "2s", "--min-requests", "5000", "--max-hold", "100",
            "--alpha", "0.01", "--load", "20", "--request-file", str(REQUEST)]
    command = [sys.executable, "-m", "mlcanary.cli", "rollout", str(stage_file), "--format", "json", *args,
               "--record", str(record), "--apply-stage"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "MLCANARY_STATE_DIR": str(runtime.root)})
    deadline = time.monotonic() + 180
    try:
        while not e_errors_at_least(10)(events(record) if record.exists() else []):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the error e-value did not reach 10"
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)  # as a crash: no decision, the traffic left as it was
        first.communicate(timeout=60)
    before = events(record)
    assert not [e for e in before if e["event"] == "decision" and e["decision"] != "held"]
    lines_before = judgements(before, "50 %")
    e_at_kill = lines_before[-1]["eValues"]["errors"]
    assert 10 <= e_at_kill < 100
    assert live_traffic(runtime, endpoint) == {"blue": 50, "green": 50}  # left mid-step

    resumed = rollout(runtime, stage_file, *args, "--resume", record=record)
    assert resumed.returncode == 1 and resumed.stdout, resumed.stderr
    assert (f"sequential judge: restored from the record's {len([e for e in lines_before if 'judged' in e])} "
            f"judged window(s) of step 50 %: e(errors) {e_at_kill:.3g}") in resumed.stderr
    assert (f"step 50 % keeps its {judged_target(lines_before)} judged request(s) to green (of the 5000 it needs)"
            in resumed.stderr)
    summary = json.loads(resumed.stdout)
    assert summary["decision"] == "rolled back" and summary["step"] == "50 %", summary
    assert summary["failure"]["judge"] == "sequential" and summary["failure"]["eValue"] >= 100
    after = judgements(events(record)[len(before):], "50 %")
    # the evidence before the kill counted: a judge started from zero on the windows after it would not fail
    fresh = make_judge("sequential", 0.01, (), 1)
    for line in after:
        if "judged" in line:
            fresh.replay_window(line["judged"], *(counts_from_json(line["judged"][side])
                                                  for side in ("target", "baseline")))
    assert fresh.failure is None
    assert summary["targetServed"] == judged_target(lines_before) + judged_target(after)
    assert live_traffic(runtime, endpoint) == {"blue": 100}


def test_a_window_before_an_interruption_whose_requests_were_raised_is_refused(tmp_path):
    """Those windows are in the interruption's saved state and are not folded again, but their requests
    count toward --min-requests: a raised count would promote a step on requests no one served."""
    plan = load_plan(STAGE_3, BAD)
    world = World(rps=20)
    recorder = Recorder(None, "r1", clock=world.clock)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_when=lambda events: len(judgements(events, "50 %")) >= 4)
    judge = make_judge("sequential", plan.options.alpha, (), 1)
    restored = judge_replay.restore(judge, resume_point(recorder.events, STAGE_3))
    recorder.write("decision", decision="interrupted", step="the stage file", lastGood=-1,
                   judgeState=judge.state(), targetServed=restored.target_served, exitCode=143, returned=True)
    assert judge_replay.restore(make_judge("sequential", 0.05, (), 1), resume_point(recorder.events, STAGE_3)
                                ).target.requests == judged_target(judgements(recorder.events, "50 %"))
    judgements(recorder.events, "50 %")[2]["judged"]["target"]["requests"] += 1000
    with pytest.raises(ValueError, match=r"the judgement line of step '50 %' at time [\d.]+: targetServed \d+ is not the \d+ "
                                         "the line before and its judged counts give"):
        judge_replay.restore(make_judge("sequential", 0.05, (), 1), resume_point(recorder.events, STAGE_3))


def test_the_threshold_judges_failed_checks_before_a_kill_count_after_resume():
    # Flagger's check error_rate < 1 % fails every interval of a target failing 5 %; 3 failed checks roll back.
    plan = load_plan(STAGE_3, {**BAD, "judge": "threshold", "failureLimit": 3, "minRequests": 10})
    world = World(rps=40, green_error_rate=0.05)
    recorder = Recorder(None, "r1", clock=world.clock)

    def failed_checks(events):
        return [e["failedChecks"] for e in events if e["event"] == "interval" and e["step"] == "50 %"]

    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_when=lambda events: failed_checks(events) == [1, 2])
    resumed_from = len(recorder.events)
    outcome, judge = run_until(world, plan, recorder, point=resume_point(recorder.events, STAGE_3))
    assert outcome.decision == "rolled back" and outcome.failure.judge == "threshold", outcome.message
    assert failed_checks(recorder.events[resumed_from:]) == [3]  # one more failed check, not three
    assert outcome.failure.message.endswith("failed checks 3 of 3") and judge.failed_checks == 3


def test_a_step_killed_twice_keeps_the_evidence_and_requests_of_both_runs_before_the_last_resume():
    plan = load_plan(STAGE_3, {**BAD, "minRequests": 10_000, "maxHold": 100})
    world = World(rps=20, green_error_rate=0.01)
    recorder = Recorder(None, "r1", clock=world.clock)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_when=lambda events: len(judgements(events, "50 %")) >= 5)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, point=resume_point(recorder.events, STAGE_3),
                  kill_when=lambda events: len(judgements(events, "50 %")) >= 10)
    point = resume_point(recorder.events, STAGE_3)
    judge = make_judge("sequential", plan.options.alpha, (), 1)
    restored = judge_replay.restore(judge, point)
    lines = judgements(recorder.events, "50 %")
    assert restored.replayed == len([e for e in lines if "judged" in e]) >= 8  # each window of both runs, once
    assert judge.e_values() == pytest.approx(lines[-1]["eValues"], rel=1e-12)
    assert judge.errors.events[0] == sum(e["judged"]["target"]["errors"] for e in lines if "judged" in e)
    assert restored.target.requests == judged_target(lines) == restored.target_served


def test_a_rollout_killed_while_baking_bakes_again_after_resume_before_it_finishes():
    """The bake is the evidence at 100 % that --bake asks for: a rollout killed in it is not finished
    by --resume without baking (its promotion of the last live step saved the state before the bake)."""
    plan = load_plan(STAGE_3, {**BAD, "minRequests": 20, "bake": "6s"})
    world = World(rps=40)
    recorder = Recorder(None, "r1", clock=world.clock)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_when=lambda events: len(judgements(events, "bake at 100 %")) >= 2)
    bake_before = judgements(recorder.events, "bake at 100 %")
    point = resume_point(recorder.events, STAGE_3)
    assert not point.baked and len(point.step_lines) >= 2  # the bake's windows are folded again
    resumed_from = len(recorder.events)
    outcome, _ = run_until(world, plan, recorder, point=point)
    assert outcome.decision == "promoted", outcome.message
    after = recorder.events[resumed_from:]
    baked = [e for e in after if e.get("decision") == "baked"]
    assert baked, [e.get("decision") for e in after if e["event"] == "decision"]
    bake_after = judgements(after, "bake at 100 %")
    # the bake's time starts again (6 s of windows after the resume), its e-process goes on from the kill
    assert bake_after and bake_after[-1]["time"] - bake_after[0]["time"] >= 5
    assert bake_after[0]["targetServed"] > bake_before[-1]["targetServed"]
    assert [e["decision"] for e in after if e["event"] == "decision"] == ["baked", "finished"]


def test_a_rollout_killed_while_baking_a_failing_target_is_rolled_back_after_resume_not_finished():
    plan = load_plan(STAGE_3, {**BAD, "minRequests": 20, "bake": "60s", "maxHold": 100})
    world = World(rps=40)
    recorder = Recorder(None, "r1", clock=world.clock)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_when=lambda events: len(judgements(events, "bake at 100 %")) >= 1)
    world.green_error_rate = 0.2  # green starts failing in its bake
    with pytest.raises(Killed):
        run_until(world, plan, recorder, point=resume_point(recorder.events, STAGE_3),
                  kill_when=lambda events: 5 <= judgements(events, "bake at 100 %")[-1]["eValues"]["errors"] < 20)
    point = resume_point(recorder.events, STAGE_3)
    outcome, _ = run_until(world, plan, recorder, point=point)
    assert outcome.decision == "rolled back" and outcome.step == "100 %", outcome.message
    assert not [e for e in recorder.events if e.get("decision") in ("baked", "finished")]


def test_a_promotions_saved_judge_state_is_not_changed_by_the_windows_judged_after_it():
    """Recorder.events keeps the lines as written (--plot without a file, the tests' resume): the
    state saved with a promotion is a copy, not the live judge's lists."""
    plan = load_plan(STAGE_3, {**BAD, "minRequests": 20})
    world = World(rps=40, green_error_rate=0.02)
    recorder = Recorder(None, "r1", clock=world.clock)
    run_until(world, plan, recorder)
    promoted = next(e for e in recorder.events if e.get("decision") == "promoted")
    assert json.loads(json.dumps(promoted["judgeState"])) == promoted["judgeState"]
    again = make_judge("sequential", plan.options.alpha, (), 1)
    again.load_state(promoted["judgeState"])
    at_promotion = [e for e in recorder.events if e["event"] == "judgement" and e["step"] == "50 %"][-1]
    assert again.e_values() == pytest.approx(at_promotion["eValues"], rel=1e-12)


def test_a_second_resume_of_the_same_rollout_while_the_first_runs_is_refused_by_the_endpoint_hold(tmp_path):
    """Both --resume processes carry the record's rollout id: the hold is taken back from a dead process
    only, so the second sees the first (pid, record) and changes nothing unless --force."""
    from mlcanary.local_runtime import lease

    directory = tmp_path / "rollouts"
    lease.acquire(directory, "fraud-scorer", {"id": "r1", "step": "50 %", "record": "/r/r.jsonl"})
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        doc = lease.read(directory, "fraud-scorer")
        doc["holder"] = {**doc["holder"], "pid": first.pid, "processStart": lease.process_start(first.pid)}
        lease.write_atomically(lease.document_file(directory, "fraud-scorer"), json.dumps(doc))
        lease.forget(directory, "fraud-scorer")
        with pytest.raises(lease.EndpointHeld, match=f"pid {first.pid}.*--force"):
            lease.acquire(directory, "fraud-scorer", {"id": "r1", "step": None})
        assert lease.read(directory, "fraud-scorer")["holder"]["pid"] == first.pid  # the first keeps it
    finally:
        first.kill()
        first.wait()
    # the first is gone now (kill -9): the next --resume takes its hold back
    lease.acquire(directory, "fraud-scorer", {"id": "r1", "step": None})
    assert lease.read(directory, "fraud-scorer")["holder"]["pid"] == os.getpid()


def test_a_record_whose_last_line_was_cut_by_a_kill_is_refused_saying_so_and_left_untouched(tmp_path):
    record = killed_record(tmp_path)
    text = record.read_text()
    record.write_text(text[:-30])  # kill -9 in the middle of writing the last window
    lines = len(record.read_text().splitlines())
    result = cli("--resume", "--record", str(record), state=tmp_path / "state")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith(f"error: record {record}:{lines}: the last line is cut short")
    assert "delete that line" in result.output and record.read_text() == text[:-30]
    record.write_text("".join(line + "\n" for line in text.splitlines()[:-1]))  # as the message says
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert resume_point(events, record).how == "died"


@pytest.mark.parametrize("key, value", [("endpoint", "other-endpoint"), ("target", "azure")],
                         ids=["other_endpoint", "other_target"])
def test_a_record_of_another_endpoint_than_its_stage_file_names_now_is_refused(key, value, tmp_path):
    """The record's windows and promotions are evidence about the endpoint it names, not about the one
    the stage file names now: no --resume carries them over."""
    record = killed_record(tmp_path)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    for line in lines:
        if line["event"] == "plan":
            line["plan"][key] = value
    record.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = record.read_bytes()
    result = cli("--resume", "--record", str(record), state=tmp_path / "state")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"is of {key} {value!r}" in result.output and "start a new rollout instead of --resume" in result.output
    assert record.read_bytes() == before and not (tmp_path / "state").exists()


def test_a_rollout_interrupted_while_baking_bakes_again_after_resume_with_the_bakes_windows_in_its_state():
    plan = load_plan(STAGE_3, {**BAD, "minRequests": 20, "bake": "6s"})
    world = World(rps=40)
    recorder = Recorder(None, "r1", clock=world.clock)
    judge = make_judge("sequential", plan.options.alpha, (), 1)

    def sleep(seconds):  # Ctrl-C in the bake's third window
        world.sleep(seconds)
        if len(judgements(recorder.events, "bake at 100 %")) >= 3:
            raise KeyboardInterrupt
    recorder.write("plan", plan=plan_json(plan), resumedAt=None)
    interrupted = Runner(plan, world, world, judge, recorder, clock=world.clock, sleep=sleep).run()
    assert interrupted.decision == "interrupted" and interrupted.step == "100 %"
    point = resume_point(recorder.events, STAGE_3)
    assert point.how == "interrupted" and not point.baked and point.judged_before == len(point.step_lines) >= 3
    resumed_from = len(recorder.events)
    outcome, _ = run_until(world, plan, recorder, point=point)
    assert outcome.decision == "promoted", outcome.message
    after = recorder.events[resumed_from:]
    assert [e["decision"] for e in after if e["event"] == "decision"] == ["baked", "finished"]
    bake_after = judgements(after, "bake at 100 %")
    assert bake_after[-1]["time"] - bake_after[0]["time"] >= 5
