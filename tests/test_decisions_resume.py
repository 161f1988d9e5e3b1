"""--resume with the error/latency judge pinned without a runtime (issue 19): the state saved at the last
promotion, then the resumed step's judged windows folded in again from the record (rollout/judge_replay.py),
so the e-process continues, nothing is counted twice and the step keeps the requests it judged before the stop.

First, record lines as the runner writes them are fed to `judge_replay.restore` and to the judges' replay
methods, and the e-values, counts and refusals (exact messages) are read back. Then the runner is driven
with the simulated world of test_rollout_runner.py (a process killed mid-step is a runner that stops
without a decision, as kill -9 leaves its record), and the CLI refuses a tampered record. These are the
fast tests the mutation runs of judges.py, judge_replay.py and runner.py use; a real rollout SIGKILLed
on the local target and resumed is in tests/test_judge_resume.py."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlcanary.cli import main
from mlcanary.rollout import judge_replay
from mlcanary.rollout.counts import LATENCY_BOUNDS, Counts, counts_json
from mlcanary.rollout.judge_replay import ReplayError, Restored, restore
from mlcanary.rollout.judges import SequentialJudge, ThresholdJudge, make_judge
from mlcanary.rollout.plan import load_plan, plan_json
from mlcanary.rollout.record import Recorder, ResumePoint, resume_point
from mlcanary.rollout.runner import Runner
from test_rollout_judges import buckets
from test_rollout_runner import STAGE_3, World, judgements

# The baseline before the step: 1000 requests, 10 errors, p90 at the 5 ms bound (900 fast, 100 at 250 ms).
BEFORE = Counts(1000, 10, 0, buckets(900, 100))
BAD_WINDOW = (Counts(100, 8, 8, buckets(80, 20)), Counts(100, 1, 1, buckets(90, 10)))  # 8 % errors vs 1 %
GOOD_WINDOW = (Counts(100, 1, 1, buckets(91, 9)), Counts(100, 1, 1, buckets(90, 10)))


def sequential(state: dict | None = None) -> SequentialJudge:
    judge = SequentialJudge(0.05)
    if state is not None:
        judge.load_state(state)
    return judge


class Writer:
    """Writes a step's judgement and interval lines as the runner does: the fold taken before observe."""

    def __init__(self, judge, served: int = 0):
        self.judge, self.served, self.lines, self.step_target = judge, served, [], 0

    def window(self, target: Counts, baseline: Counts) -> dict:
        fold = {"target": counts_json(target), "baseline": counts_json(baseline), **self.judge.step_setup()}
        self.judge.observe(target, baseline)
        self.served += target.requests
        self.step_target += target.requests
        line = {"event": "judgement", "step": "50 %", "time": float(len(self.lines)), "judged": fold,
                "eValues": self.judge.e_values(), "targetServed": self.served}
        self.lines.append(line)
        return line

    def no_data(self) -> dict:
        line = {"event": "judgement", "step": "50 %", "time": float(len(self.lines)), "noData": "no new scrape",
                "eValues": self.judge.e_values(), "targetServed": self.served}
        self.lines.append(line)
        return line

    def interval(self, **record) -> dict:
        line = {"event": "interval", "step": "50 %", "time": float(len(self.lines)), "requests": self.step_target,
                **record}
        self.lines.append(line)
        return line


def point(lines, *, state=None, served=0, judged_before=0) -> ResumePoint:
    return ResumePoint("r1", {}, 1, state, served, "died", "50 %", step_lines=tuple(lines), judged_before=judged_before)


def written_step(*windows, served=0):
    writer = Writer(sequential(), served)
    writer.judge.start_step(BEFORE)
    for window in windows:
        writer.window(*window)
    return writer


# --- the sequential judge's replay methods ---------------------------------------------------------------

def test_the_step_setup_is_the_steps_latency_bound_and_reference_error_rate():
    judge = sequential()
    assert judge.step_setup() == {"slowBoundS": None, "referenceErrorRate": None}
    judge.start_step(BEFORE)
    setup = judge.step_setup()
    assert setup["slowBoundS"] == 0.005  # the baseline's p90: 900 of 1000 at or below 5 ms
    assert setup["referenceErrorRate"] == pytest.approx(0.021952, abs=1e-6)  # 1.25 x (11/1002 + 2 standard errors)


def test_a_replayed_window_gives_the_e_values_of_the_window_judged_live():
    writer = written_step(BAD_WINDOW, GOOD_WINDOW, BAD_WINDOW)
    replayed = sequential()
    for line in writer.lines:
        replayed.replay_window(line["judged"], Counts(**_counts(line, "target")), Counts(**_counts(line, "baseline")))
    assert replayed.e_values() == writer.judge.e_values()
    assert replayed.slow_bound_s == 0.005 and replayed.reference_error_rate == writer.judge.reference_error_rate


def _counts(line, side):
    data = line["judged"][side]
    return {"requests": data["requests"], "errors": data["errors"], "errors_5xx": data["errors5xx"],
            "buckets": tuple(data["buckets"])}


def test_a_replayed_window_is_judged_against_its_own_latency_bound_not_the_judges():
    """slow at 250 ms: with the recorded 5 ms bound, all 20 of the target's are slow, with 0.25 none."""
    slow = (Counts(100, 0, 0, buckets(60, 40)), Counts(100, 0, 0, buckets(90, 10)))
    judge = sequential()
    judge.slow_bound_s = 0.25
    judge.replay_window({"slowBoundS": 0.005, "referenceErrorRate": None}, *slow)
    assert judge.slow.events == (40, 10) and judge.slow_bound_s == 0.005


def test_a_window_the_baseline_did_not_serve_is_replayed_against_its_recorded_reference_error_rate():
    alone = Counts(100, 10, 10, buckets(100, 0))
    judge = sequential()
    judge.replay_window({"slowBoundS": None, "referenceErrorRate": 0.02}, alone, Counts())
    assert judge.errors_alone.events == (10, 100) and judge.reference_error_rate == 0.02
    live = sequential()
    live.reference_error_rate = 0.02
    live.observe(alone, Counts())
    assert judge.e_values() == live.e_values() and judge.e_values()["errors"] > 1


@pytest.mark.parametrize("bound", [LATENCY_BOUNDS[0], LATENCY_BOUNDS[-2], None], ids=["first_bound", "last_finite_bound", "none"])
def test_a_recorded_latency_bound_of_the_histogram_is_accepted(bound):
    judge = sequential()
    judge.replay_window({"slowBoundS": bound, "referenceErrorRate": None}, *GOOD_WINDOW)
    assert judge.slow_bound_s == bound


@pytest.mark.parametrize("bound", [math.inf, 0.3, "0.25"], ids=["infinity", "not_a_bound", "a_string"])
def test_a_recorded_latency_bound_outside_the_histogram_is_refused(bound):
    judge = sequential()
    with pytest.raises(ValueError) as raised:
        judge.replay_window({"slowBoundS": bound, "referenceErrorRate": None}, *GOOD_WINDOW)
    assert str(raised.value) == f"slowBoundS {bound!r} is not a latency histogram bound"
    assert judge.slow_bound_s is None and judge.e_values() == {"errors": 1.0, "latency": 1.0}


@pytest.mark.parametrize("rate", [0.99, 1e-9, None], ids=["at_most_0_99", "just_above_0", "none"])
def test_a_recorded_reference_error_rate_above_0_and_at_most_0_99_is_accepted(rate):
    judge = sequential()
    judge.replay_window({"slowBoundS": None, "referenceErrorRate": rate}, *GOOD_WINDOW)
    assert judge.reference_error_rate == rate


@pytest.mark.parametrize("rate", [0.0, 0.991, 1, "0.5", True], ids=["zero", "above_0_99", "a_whole_number", "a_string", "a_bool"])
def test_a_recorded_reference_error_rate_that_is_not_a_rate_is_refused(rate):
    judge = sequential()
    with pytest.raises(ValueError) as raised:
        judge.replay_window({"slowBoundS": None, "referenceErrorRate": rate}, *GOOD_WINDOW)
    assert str(raised.value) == f"referenceErrorRate {rate!r} is not a rate above 0 and at most 0.99"
    assert judge.reference_error_rate is None


def test_the_sequential_judge_records_nothing_at_an_interval_and_replays_an_interval_line_as_nothing():
    judge = sequential()
    judge.errors.update(3, 1, 0.5)
    before = judge.state()
    assert judge.interval_record() == {}
    judge.replay_interval({"event": "interval", "requests": 100})
    assert judge.state() == before and judge.failure is None


def test_the_restored_sequential_judge_is_described_with_its_e_values_and_the_errors_it_folded():
    judge = written_step(BAD_WINDOW, GOOD_WINDOW).judge  # target errors 8 + 1, baseline 1 + 1
    judge.observe(Counts(50, 3, 3, buckets(50, 0)), Counts())  # 3 errors the baseline did not share
    e = judge.e_values()
    assert judge.restored() == (f"e(errors) {e['errors']:.3g}, e(latency) {e['latency']:.3g} (rolls back at 20); "
                                "errors folded: target 12, baseline 2")


# --- the threshold judge's replay methods -----------------------------------------------------------------

def test_the_threshold_judge_has_no_step_setup_and_folds_no_window():
    judge = ThresholdJudge((), 3)
    assert judge.step_setup() == {}
    judge.replay_window({}, *BAD_WINDOW)
    assert judge.failed_checks == 0 and judge.failure is None and judge.interval_record() == {"failedChecks": 0}


@pytest.mark.parametrize("checks", [0, 1], ids=["passed_check", "one_failed_check_more"])
def test_a_recorded_interval_check_with_the_same_or_one_more_failed_check_is_replayed(checks):
    judge = ThresholdJudge((), 3)
    judge.replay_interval({"failedChecks": checks})
    assert judge.failed_checks == checks and judge.failure is None
    assert judge.interval_record() == {"failedChecks": checks} and judge.restored() == f"failed checks {checks}/3"


def test_the_recorded_check_that_reaches_the_failure_limit_rolls_back():
    judge = ThresholdJudge((), 2)
    judge.replay_interval({"failedChecks": 1})
    assert judge.failure is None
    judge.replay_interval({"failedChecks": 2})
    assert (judge.failure.judge, judge.failure.what) == ("threshold", "failed checks")
    assert judge.failure.message == "failed checks 2 of 2, recorded before the rollout stopped"


@pytest.mark.parametrize("before, checks", [(0, 2), (1, 0), (0, -1), (3, 4), (0, True), (0, 1.0), (0, None), (0, "1")],
                         ids=["two_more", "fewer", "negative", "above_the_limit", "a_bool", "a_float", "missing", "a_string"])
def test_a_recorded_interval_check_no_run_could_have_written_is_refused(before, checks):
    judge = ThresholdJudge((), 3)
    judge.load_state({"failedChecks": before})
    with pytest.raises(ValueError) as raised:
        judge.replay_interval({} if checks is None else {"failedChecks": checks})
    assert str(raised.value) == (f"failedChecks {checks!r} does not follow {before} "
                                 "(one failed check more at most, up to the limit 3)")
    assert judge.failed_checks == before and judge.failure is None


def test_a_threshold_judge_at_its_limit_refuses_one_failed_check_more():
    judge = ThresholdJudge((), 1)
    with pytest.raises(ValueError, match=r"^failedChecks 2 does not follow 1 \(one failed check more at most, up to the limit 1\)$"):
        judge.load_state({"failedChecks": 1})
        judge.replay_interval({"failedChecks": 2})


# --- restore: the saved state, then the step's later windows folded in again ------------------------------

def test_nothing_saved_and_no_lines_restore_an_empty_step_with_the_saved_target_served():
    judge = sequential()
    assert restore(judge, point([], served=70)) == Restored(Counts(), Counts(), 0, 70)
    assert judge.e_values() == {"errors": 1.0, "latency": 1.0}


def test_the_steps_windows_are_folded_again_to_the_e_values_the_record_holds():
    writer = written_step(BAD_WINDOW, GOOD_WINDOW, BAD_WINDOW, served=500)
    judge = sequential()
    restored = restore(judge, point(writer.lines, served=500))
    assert judge.e_values() == writer.judge.e_values() and judge.e_values()["errors"] > 5
    assert restored.replayed == 3 and restored.target_served == 800
    assert restored.target == BAD_WINDOW[0] + GOOD_WINDOW[0] + BAD_WINDOW[0] and restored.baseline == BAD_WINDOW[1] + GOOD_WINDOW[1] + BAD_WINDOW[1]


def test_windows_already_in_the_saved_state_are_counted_toward_the_step_but_not_folded_again():
    writer = written_step(BAD_WINDOW, GOOD_WINDOW, served=500)
    saved = copy.deepcopy(writer.judge.state())
    writer.interval()
    writer.window(*GOOD_WINDOW)
    judge = sequential()
    restored = restore(judge, point(writer.lines, state=saved, served=700, judged_before=3))
    assert judge.e_values() == writer.judge.e_values()  # folded once each: the state, then the last window
    assert restored.replayed == 1 and restored.target_served == 800
    assert restored.target.requests == 300 and restored.baseline.requests == 300


def test_the_saved_state_alone_restores_its_e_values_and_the_steps_requests():
    writer = written_step(BAD_WINDOW, GOOD_WINDOW, served=500)
    judge = sequential()
    restored = restore(judge, point(writer.lines, state=writer.judge.state(), served=700, judged_before=2))
    assert judge.e_values() == writer.judge.e_values() and restored == Restored(
        BAD_WINDOW[0] + GOOD_WINDOW[0], BAD_WINDOW[1] + GOOD_WINDOW[1], 0, 700)


def refused(lines, **kwargs) -> ReplayError:
    with pytest.raises(ReplayError) as raised:
        restore(sequential(kwargs.pop("state", None)), point(lines, **kwargs))
    return raised.value


def test_a_replayed_window_whose_e_values_were_lowered_is_refused_naming_the_line():
    writer = written_step(BAD_WINDOW, BAD_WINDOW)
    line = writer.lines[1]
    recorded, line["eValues"] = line["eValues"], {**line["eValues"], "errors": line["eValues"]["errors"] / 2}
    error = refused(writer.lines)
    assert str(error) == (f"the judgement line of step '50 %' at time 1.0: eValues {line['eValues']!r} are not what "
                          f"its judged counts give (errors {recorded['errors']:.6g}, latency {recorded['latency']:.6g})")
    assert error.entry is line


def test_recorded_e_values_within_a_billionth_pass_and_beyond_it_are_refused():
    writer = written_step(BAD_WINDOW)
    e = writer.lines[0]["eValues"]["errors"]
    writer.lines[0]["eValues"]["errors"] = e * (1 + 5e-10)
    restore(sequential(), point(writer.lines))
    writer.lines[0]["eValues"]["errors"] = e * (1 + 3e-9)
    assert "are not what its judged counts give" in str(refused(writer.lines))


@pytest.mark.parametrize("values", [None, [1.0, 1.0], {"errors": 1.0}, {"errors": 1.0, "latency": 1.0, "x": 1.0},
                                    {"errors": "1.0", "latency": 1.0}],
                         ids=["missing", "a_list", "a_value_missing", "a_value_more", "a_string_value"])
def test_recorded_e_values_that_are_not_the_judges_e_values_are_refused(values):
    writer = written_step(GOOD_WINDOW)
    e = writer.lines[0]["eValues"]
    writer.lines[0]["eValues"] = values
    assert str(refused(writer.lines)) == (f"the judgement line of step '50 %' at time 0.0: eValues {values!r} are not "
                                          f"what its judged counts give (errors {e['errors']:.6g}, latency {e['latency']:.6g})")


def test_a_threshold_judges_judgement_line_with_e_values_is_refused_showing_none():
    line = {"event": "judgement", "step": "50 %", "time": 0.0, "noData": "gap", "eValues": {"errors": 1.0},
            "targetServed": 0}
    with pytest.raises(ReplayError) as raised:
        restore(ThresholdJudge((), 1), point([line]))
    assert str(raised.value).endswith("eValues {'errors': 1.0} are not what its judged counts give (none)")


def test_a_replayed_window_whose_target_served_was_raised_is_refused():
    writer = written_step(BAD_WINDOW, served=40)
    writer.lines[0]["targetServed"] = 141
    assert str(refused(writer.lines, served=40)) == ("the judgement line of step '50 %' at time 0.0: targetServed 141 "
                                                     "is not the 140 its judged counts give")


def test_a_no_data_window_is_checked_but_counts_nothing():
    writer = written_step(BAD_WINDOW, served=10)
    writer.no_data()
    writer.window(*GOOD_WINDOW)
    judge = sequential()
    restored = restore(judge, point(writer.lines, served=10))
    assert restored == Restored(BAD_WINDOW[0] + GOOD_WINDOW[0], BAD_WINDOW[1] + GOOD_WINDOW[1], 2, 210)
    writer.lines[1]["targetServed"] = 111
    assert str(refused(writer.lines, served=10)).endswith("targetServed 111 is not the 110 its judged counts give")


def test_a_window_replayed_without_its_fold_or_a_reason_for_no_data_is_refused():
    writer = written_step(BAD_WINDOW)
    del writer.lines[0]["judged"]
    assert str(refused(writer.lines)) == ("the judgement line of step '50 %' at time 0.0: holds neither what the judge "
                                          "folded ('judged') nor why it had no data ('noData')")
    writer.lines[0]["noData"] = 1
    assert "holds neither" in str(refused(writer.lines))


def test_a_fold_that_is_not_an_object_is_refused():
    writer = written_step(BAD_WINDOW)
    writer.lines[0]["judged"] = [1]
    assert str(refused(writer.lines)) == "the judgement line of step '50 %' at time 0.0: 'judged' is not an object: [1]"


@pytest.mark.parametrize("side", ["target", "baseline"])
def test_a_fold_with_counts_no_source_could_have_counted_is_refused_naming_the_side(side):
    writer = written_step(BAD_WINDOW)
    writer.lines[0]["judged"][side]["errors"] = 101
    assert str(refused(writer.lines)) == (f"the judgement line of step '50 %' at time 0.0: judged {side}: errors5xx "
                                          f"{writer.lines[0]['judged'][side]['errors5xx']} <= errors 101 <= requests 100 "
                                          "does not hold")


def test_a_window_after_the_one_that_failed_the_judge_is_refused():
    writer = written_step(BAD_WINDOW, BAD_WINDOW, BAD_WINDOW, BAD_WINDOW)
    failed_at = next(i for i, line in enumerate(writer.lines) if line["eValues"]["errors"] >= 20)
    writer.judge.failure = None  # a record that goes on after the judge failed: no run writes one
    writer.window(*GOOD_WINDOW)
    assert failed_at < len(writer.lines) - 1
    error = refused(writer.lines[:failed_at + 2])
    assert str(error) == (f"the judgement line of step '50 %' at time {float(failed_at + 1)}: follows a window where "
                          "the sequential judge had already failed")


def test_the_threshold_judges_interval_lines_after_the_state_are_replayed_as_failed_checks():
    writer = Writer(ThresholdJudge((), 3))
    writer.window(*BAD_WINDOW)
    writer.interval(failedChecks=1)
    writer.window(*BAD_WINDOW)
    writer.interval(failedChecks=2)
    judge = ThresholdJudge((), 3)
    restored = restore(judge, point(writer.lines))
    assert judge.failed_checks == 2 and judge.failure is None and restored.target.requests == 200
    judge = ThresholdJudge((), 3)
    restore(judge, point(writer.lines, state={"failedChecks": 1}, served=100, judged_before=2))
    assert judge.failed_checks == 2  # the first interval is in the state: not counted twice


def test_an_interval_line_whose_requests_are_not_the_steps_windows_is_refused():
    writer = written_step(GOOD_WINDOW, GOOD_WINDOW)
    writer.interval()
    writer.lines[-1]["requests"] = 201
    assert str(refused(writer.lines)) == ("the interval line of step '50 %' at time 2.0: requests 201 is not the 200 "
                                          "its step's windows hold")
    assert "requests 201 is not the 200" in str(refused(writer.lines, state=writer.judge.state(), judged_before=3,
                                                        served=200))


def test_a_saved_window_whose_target_served_does_not_follow_the_line_before_is_refused():
    writer = written_step(BAD_WINDOW, BAD_WINDOW, GOOD_WINDOW)
    writer.lines[1]["judged"]["target"].update(requests=150, buckets=[*writer.lines[1]["judged"]["target"]["buckets"][:-1], 50])
    error = refused(writer.lines, state=writer.judge.state(), served=300, judged_before=3)
    assert str(error) == ("the judgement line of step '50 %' at time 1.0: targetServed 200 is not the 250 the line "
                          "before and its judged counts give")


def test_the_last_saved_window_must_hold_the_target_served_saved_after_it():
    writer = written_step(BAD_WINDOW, GOOD_WINDOW)
    writer.interval()
    state = writer.judge.state()
    assert restore(sequential(), point(writer.lines, state=state, served=200, judged_before=3)).target_served == 200
    error = refused(writer.lines, state=state, served=250, judged_before=3)
    assert str(error) == "the judgement line of step '50 %' at time 1.0: targetServed 200 is not the 250 saved after it"
    error = refused(writer.lines, state=state, served=150, judged_before=2)
    assert str(error).endswith("targetServed 200 is not the 150 saved after it")


def test_a_saved_line_without_a_fold_is_skipped_and_breaks_the_chain_of_target_served():
    """Lines written before windows kept their folds: not counted, and the next line is not checked against it."""
    writer = written_step(BAD_WINDOW, BAD_WINDOW, GOOD_WINDOW)
    del writer.lines[0]["judged"]
    writer.lines[0]["targetServed"] = 5
    restored = restore(sequential(), point(writer.lines, state=writer.judge.state(), served=300, judged_before=3))
    assert restored.target.requests == 200 and restored.replayed == 0


# --- the runner killed mid-step and resumed, on the simulated world ----------------------------------------

class Killed(BaseException):
    """kill -9: the process stops where it is; nothing after it runs, no decision is recorded."""


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
                         baked=point.baked if point else True, resuming=point is not None)
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
