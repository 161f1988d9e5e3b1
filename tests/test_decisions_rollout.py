"""The rollout's decisions pinned where a plausible bug would change them (issue 19): the e-values'
null hypothesis and alternatives, what the judges count, when the runner promotes, holds and
moves on, and how a plan is derived and gated."""

from __future__ import annotations

import copy
import json
import signal
import shutil
from pathlib import Path

import pytest
import yaml
from pulumi_policy import EnforcementLevel

from mlcanary.check import policy_defaults
from mlcanary.policy_config import PolicySettings, load_policy_config
from mlcanary.rollout.counts import LATENCY_BOUNDS, Counts, DeploymentCounts
from mlcanary.rollout.evalue import RateEValue, RatioEValue, reference_rate, sprt
from mlcanary.rollout.judges import Failure, SequentialJudge, ThresholdJudge, check_rules, describe, make_judge
from mlcanary.rollout.appliers import ApplyError
from mlcanary.rollout.plan import PlanError, gate, load_plan, plan_json
from mlcanary.rollout.record import Recorder
from mlcanary.rollout.runner import Runner
from mlcanary.components.rollout_rules import parse_rule
from conftest import PROJECT_DIR
from test_rollout_judges import buckets
from test_rollout_runner import (STAGE_3, World, decisions, fail_reads_while,
                                 failing_on, interrupted_at, restarted_once_when, run)

# --- e-values ------------------------------------------------------------------------------------


def test_the_two_sample_null_is_the_tolerated_ratio_r0_not_equality():
    """One target error in a window where the target served half the requests: with H0 r <= r0 = 1.25
    and the single alternative r = 2 r0, the likelihood ratio is q(2.5) / q(1.25) with
    q(r) = r / (r + 1) at share 1/2 (evalue.py's docstring): (2.5/3.5) / (1.25/2.25) = 9/7."""
    e = RatioEValue(1.25, 0.05, (2.0,))
    e.update(1, 0, 0.5)
    assert e.e_value == pytest.approx(9 / 7)


def test_two_sample_likelihood_ratio_with_errors_on_both_sides():
    """One target and one baseline error at share 1/2: q0 = q(1.25) = 5/9, q1 = q(2.5) = 5/7, so the
    ratio is (q1 / q0) * ((1 - q1) / (1 - q0)) = 9/7 * 9/14 = 81/98."""
    e = RatioEValue(1.25, 0.05, (2.0,))
    e.update(1, 1, 0.5)
    assert e.e_value == pytest.approx(81 / 98) and e.events == (1, 1)
    e.update(2, 3, 0.5)
    assert e.events == (3, 4)


@pytest.mark.parametrize("target, baseline, share", [(0, 0, 0.5), (0, 3, 0.0), (3, 0, 1.0)],
                         ids=["no_events", "target_served_nothing", "baseline_served_nothing"])
def test_a_two_sample_window_without_events_or_without_one_side_says_nothing(target, baseline, share):
    e = RatioEValue(1.25, 0.05)
    e.update(target, baseline, share)
    assert e.e_value == 1.0 and e.events == (0, 0)


def test_a_target_erring_exactly_r0_times_the_baseline_is_never_rejected():
    e = RatioEValue(1.25, 0.05)
    for _ in range(200):
        e.update(125, 100, 0.5)  # the target's error rate is 1.25x the baseline's, on equal traffic
    assert not e.rejected and e.e_value < 1


def test_a_failing_target_against_a_40_percent_reference_is_rejected_within_8_requests():
    """The one-sample alternatives stay strictly between p0 and 1 (p1 <= 1 - (1 - p0) / 2m), so one
    request that succeeded does not all but rule out the strong alternatives (with alternatives at
    p1 = 0.999 this stream needs 10 requests)."""
    e, served = RateEValue(0.05), 0
    pattern = [0, 1, 1, 1, 1, 1, 1, 1]  # the first request succeeds, the 7 after it fail
    while e.e_value < 1 / e.alpha and served < len(pattern):
        e.update(pattern[served], 1, 0.4)
        served += 1
    assert e.e_value >= 1 / e.alpha, f"not rejected after {served} requests (e = {e.e_value:.2f})"


def test_one_sample_likelihood_ratio_of_one_window():
    """p0 = 0.5, the x2 alternative is min(2 p0, 1 - (1 - p0) / 4) = 0.875; one error in two requests:
    (0.875 / 0.5) * (0.125 / 0.5) = 0.4375."""
    e = RateEValue(0.05, (2.0,))
    e.update(1, 2, 0.5)
    assert e.e_value == pytest.approx(0.4375)
    assert e.events == (1, 2)
    e.update(3, 4, 0.5)
    assert e.events == (4, 6) and e.e_value == pytest.approx(0.4375 * 1.75 ** 3 * 0.25)


@pytest.mark.parametrize("events, requests, p0", [(1, 0, 0.1), (0, 10, 0.0), (5, 10, 1.0), (5, 10, 1.5)],
                         ids=["no_requests", "reference_zero", "reference_one", "reference_above_one"])
def test_a_one_sample_window_without_requests_or_a_usable_reference_says_nothing(events, requests, p0):
    e = RateEValue(0.05)
    e.update(events, requests, p0)
    assert e.e_value == 1.0 and e.events[0] == 0


def test_the_reference_rate_is_the_tolerance_times_the_smoothed_rate_plus_two_standard_errors():
    p = 11 / 1002  # (10 errors + 1) / (1000 requests + 2)
    assert reference_rate(10, 1000, 1.25) == pytest.approx(1.25 * (p + 2 * (p * (1 - p) / 1002) ** 0.5))
    assert reference_rate(0, 0, 1.25) is None
    assert reference_rate(900, 1000, 1.25) == 0.99  # capped below 1: a rate of 1 leaves no room above it


def test_the_oracle_sprt_tests_exactly_the_true_ratio():
    e = sprt(3.0, 1.25, 0.05)
    assert (e.r0, e.alpha) == (1.25, 0.05) and [e.r0 * m for m in e.grid] == [pytest.approx(3.0)]


@pytest.mark.parametrize("make, windows", [
    (lambda: RatioEValue(1.25, 0.01), [(3, 1, 0.2), (0, 4, 0.5)]),
    (lambda: RateEValue(0.01), [(3, 10, 0.1), (0, 20, 0.1)]),
], ids=["two_sample", "one_sample"])
def test_an_e_value_resumes_from_its_recorded_state_as_it_was(make, windows):
    """--resume reads the judge's state back from the JSON record: every field survives the trip."""
    e = make()
    for window in windows:
        e.update(*window)
    state = json.loads(json.dumps(e.state()))
    again = type(e).from_state(state)
    assert again == e and again.e_value == e.e_value
    again.update(*windows[0])
    e.update(*windows[0])
    assert again.log_ratios == e.log_ratios


# --- judges --------------------------------------------------------------------------------------


def test_latency_is_not_judged_on_windows_with_untimed_baseline_requests():
    """Mirrored copies are not timed: a baseline window of 80 requests of which 10 have a latency says
    nothing about the baseline's slow share. Counting the 70 untimed ones as fast would roll back a
    target that is exactly as slow as the baseline."""
    judge = SequentialJudge(0.05)
    judge.start_step(Counts(requests=1000, buckets=buckets(900, 100, slow_bound=0.01)))
    for _ in range(50):
        judge.observe(Counts(requests=20, buckets=buckets(18, 2, slow_bound=0.01)),
                      Counts(requests=80, buckets=buckets(9, 1, slow_bound=0.01)))
    assert judge.failure is None
    assert judge.e_values()["latency"] == 1.0


def test_the_sequential_judges_rules_judge_the_whole_step_not_one_noisy_interval():
    rule = (parse_rule("error_rate < 0.02"),)
    step = (Counts(requests=1000, errors=10), Counts(requests=9000, errors=90))  # 1 % over the step
    noisy = (Counts(requests=100, errors=5), Counts(requests=900, errors=9))  # 5 % in its last interval
    judge = SequentialJudge(0.05, rule)
    judge.check_interval(noisy, step, Counts())
    assert judge.failure is None and judge.interval_ok
    bad_step = (Counts(requests=1000, errors=30), Counts(requests=9000, errors=90))  # 3 % over the step
    quiet = (Counts(requests=100), Counts(requests=900))
    judge = SequentialJudge(0.05, rule)
    judge.check_interval(quiet, bad_step, Counts())
    assert judge.failure is not None and "error_rate = 0.03" in judge.failure.message


def test_a_judges_summary_of_counts_reads_requests_error_rate_and_p90():
    counts = Counts(requests=200, errors=3, buckets=buckets(180, 20))
    assert describe(counts) == "200 requests, error rate 1.50 %, p90 5.0 ms"  # the 180th request: the fast bucket's top
    # 100 requests in the 2.5-5 ms bucket: the 90th is 90 % of the way up it (as Prometheus interpolates)
    assert describe(Counts(requests=100, buckets=buckets(100, 0))) == "100 requests, error rate 0.00 %, p90 4.8 ms"
    assert describe(Counts()) == "0 requests, error rate no data, p90 no data"


def test_a_rule_without_data_is_not_judged_and_every_failed_rule_is_reported():
    rules = (parse_rule("error_rate < 0.02"), parse_rule("latency_p99_ms < 500"), parse_rule("error_rate_ratio < 1.5"))
    target, baseline = Counts(requests=100, errors=5), Counts()  # no histogram, no baseline: two rules lack data
    assert check_rules(rules, target, baseline) == [(rules[0], 0.05)]
    judge = ThresholdJudge(rules)
    judge.check_interval((target, Counts(requests=100, errors=1)), (target, baseline), Counts())
    assert judge.failure == Failure(
        "threshold", "error_rate < 0.02; error_rate_ratio < 1.5",
        "error_rate = 0.05 (limit < 0.02); error_rate_ratio = 5 (limit < 1.5); failed checks 1 of 1")
    assert judge.failure.as_json() == {
        "judge": "threshold", "what": "error_rate < 0.02; error_rate_ratio < 1.5",
        "message": "error_rate = 0.05 (limit < 0.02); error_rate_ratio = 5 (limit < 1.5); failed checks 1 of 1",
        "eValue": None}


def test_make_judge_builds_the_judge_the_options_name():
    rules = (parse_rule("error_rate < 0.02"),)
    threshold = make_judge("threshold", 0.01, rules, 3)
    assert isinstance(threshold, ThresholdJudge) and (threshold.rules, threshold.failure_limit) == (rules, 3)
    sequential = make_judge("sequential", 0.01, rules, 3)
    assert isinstance(sequential, SequentialJudge) and (sequential.alpha, sequential.rules) == (0.01, rules)


def test_the_threshold_judge_without_rules_checks_flaggers_defaults_and_fails_at_the_first_bad_interval():
    judge = ThresholdJudge()
    assert [str(r) for r in judge.rules] == ["error_rate < 0.01", "latency_p99_ms < 500"] and judge.failure_limit == 1
    bad = (Counts(requests=100, errors=2), Counts(requests=100))
    judge.check_interval(bad, bad, Counts())
    assert judge.failure is not None and not judge.interval_ok


def test_the_threshold_judge_compares_with_the_rollouts_baseline_when_the_interval_has_none():
    rule = (parse_rule("error_rate_ratio < 1.5"),)
    judge = ThresholdJudge(rule)
    interval = (Counts(requests=100, errors=2), Counts())  # at 100 %: the baseline served nothing
    judge.check_interval(interval, interval, Counts(requests=1000, errors=10))  # 2 % vs 1 %: ratio 2
    assert judge.failure is not None and "error_rate_ratio = 2 " in judge.failure.message
    judge = ThresholdJudge(rule)
    judge.check_interval(interval, interval, Counts(requests=1000, errors=20))  # 2 % vs 2 %
    assert judge.failure is None and judge.interval_ok


def test_a_failed_threshold_judge_passes_no_later_interval():
    judge = ThresholdJudge((parse_rule("error_rate < 0.05"),))
    judge.check_interval((Counts(requests=100, errors=10), Counts(requests=100)), (Counts(), Counts()), Counts())
    first = judge.failure
    good = (Counts(requests=100), Counts(requests=100))
    judge.check_interval(good, good, Counts())
    assert judge.failure is first and not judge.interval_ok and judge.failed_checks == 1


def test_the_sequential_judges_rules_use_the_rollouts_baseline_when_the_step_has_none():
    rule = (parse_rule("error_rate_ratio < 1.5"),)
    step = (Counts(requests=100, errors=2), Counts())
    judge = SequentialJudge(0.05, rule)
    judge.check_interval(step, step, Counts(requests=1000, errors=10))
    assert judge.failure is not None and judge.failure.judge == "rule" and not judge.interval_ok
    judge = SequentialJudge(0.05, rule)
    judge.check_interval(step, step, Counts(requests=1000, errors=20))
    assert judge.failure is None and judge.interval_ok


def test_the_sequential_judges_ratio_rules_compare_with_the_baseline_of_the_same_step():
    rule = (parse_rule("error_rate_ratio < 1.5"),)
    step = (Counts(requests=100, errors=2), Counts(requests=900, errors=18))  # 2 % and 2 %: ratio 1
    judge = SequentialJudge(0.05, rule)
    judge.check_interval(step, step, Counts(requests=1000, errors=10))  # the rollout's baseline had 1 %
    assert judge.failure is None and judge.interval_ok


def test_a_failed_sequential_judge_passes_no_later_interval():
    judge = SequentialJudge(0.05, (parse_rule("error_rate < 0.02"),))
    bad = (Counts(requests=100, errors=5), Counts(requests=100))
    judge.check_interval(bad, bad, Counts())
    first = judge.failure
    good = (Counts(requests=100), Counts(requests=100))
    judge.check_interval(good, good, Counts())
    assert judge.failure is first and not judge.interval_ok


@pytest.mark.parametrize("kind", ["sequential", "threshold"])
def test_a_judge_resumed_from_its_recorded_state_decides_as_the_one_that_was_interrupted(kind):
    """--resume: the judge's state goes into the JSON record and comes back into a fresh judge."""
    rules = (parse_rule("error_rate < 0.05"),)
    judge, resumed = make_judge(kind, 0.05, rules, 3), make_judge(kind, 0.05, rules, 3)
    history = Counts(requests=1000, errors=10, buckets=buckets(900, 100, slow_bound=0.01))
    bad = (Counts(requests=50, errors=5, buckets=buckets(40, 10, slow_bound=0.01)),
           Counts(requests=50, buckets=buckets(45, 5, slow_bound=0.01)))
    judge.start_step(history)
    for _ in range(3):
        judge.observe(*bad)
    judge.check_interval(bad, bad, history)
    resumed.load_state(json.loads(json.dumps(judge.state())))
    assert resumed.state() == judge.state() and resumed.e_values() == judge.e_values()
    for one in (judge, resumed):
        one.failure = None
        one.observe(*bad)
        one.check_interval(bad, bad, history)
    assert resumed.state() == judge.state() and resumed.e_values() == judge.e_values()
    assert (resumed.failure is None) == (judge.failure is None)


def _observe_until_failure(judge: SequentialJudge, windows, limit: int = 500) -> int:
    """Feed windows until the judge fails; checks it fails at the first look where an e-value reaches
    1/alpha (Ville's inequality is about that first crossing) and not before. Returns the windows fed."""
    for fed, (target, baseline) in enumerate(windows, start=1):
        judge.observe(target, baseline)
        crossed = max(judge.e_values().values()) >= 1 / judge.alpha
        assert (judge.failure is not None) == crossed, f"window {fed}: e-values {judge.e_values()}"
        if crossed:
            return fed
        assert fed < limit
    raise AssertionError("never failed")


def test_the_sequential_judge_fails_on_errors_at_the_first_crossing_and_says_what_it_saw():
    judge = SequentialJudge(0.05)  # one error in ten requests a window: the e-value grows less than 2x a window
    fed = _observe_until_failure(judge, iter(lambda: (Counts(requests=10, errors=1), Counts(requests=10)), None))
    assert judge.failure == Failure("sequential", "error rate",
                                    f"target errors {fed}, baseline errors 0: the target's error rate is above "
                                    "1.25x the baseline's", judge.e_values()["errors"])


def test_errors_the_baseline_did_not_share_are_counted_and_said_so():
    judge = SequentialJudge(0.05)
    judge.start_step(Counts(requests=1000, errors=10))
    judge.observe(Counts(requests=50, errors=1), Counts(requests=50, errors=1))
    fed = _observe_until_failure(judge, iter(lambda: (Counts(requests=100, errors=20), Counts()), None))
    assert judge.failure.message == (
        f"target errors {1 + 20 * fed}, baseline errors 1 (of them {20 * fed} in {100 * fed} requests the baseline "
        "did not share): the target's error rate is above 1.25x the baseline's")


def test_the_sequential_judge_fails_on_latency_at_the_first_crossing_and_says_what_it_saw():
    judge = SequentialJudge(0.05)
    judge.start_step(Counts(requests=1000, buckets=buckets(900, 100, slow_bound=0.01)))  # p90 bound: 5 ms
    fed = _observe_until_failure(judge, iter(lambda: (
        Counts(requests=20, buckets=buckets(10, 10, slow_bound=0.01)),
        Counts(requests=80, buckets=buckets(72, 8, slow_bound=0.01))), None))
    assert judge.failure == Failure(
        "sequential", "latency", f"requests slower than 5 ms (the baseline's p90): target {10 * fed}, baseline "
        f"{8 * fed}; the target's share is above 1.25x the baseline's", judge.e_values()["latency"])


def test_a_window_with_as_many_target_as_baseline_requests_is_judged():
    judge = SequentialJudge(0.05)
    for _ in range(10):
        judge.observe(Counts(requests=50, errors=10), Counts(requests=50))
    assert judge.failure is not None and judge.failure.what == "error rate"


def test_a_judge_that_has_not_started_a_step_judges_errors_only_against_the_baseline_beside_it():
    """Before start_step there is no latency threshold and no reference error rate: latency is not
    judged, and windows the baseline did not serve say nothing."""
    judge = SequentialJudge(0.05)
    for _ in range(20):
        judge.observe(Counts(requests=50, errors=25, buckets=buckets(0, 50)), Counts())
        judge.observe(Counts(requests=50, buckets=buckets(0, 50)), Counts(requests=50, buckets=buckets(50, 0)))
    assert judge.failure is None and judge.e_values() == {"errors": 1.0, "latency": 1.0}


def test_a_fresh_judge_has_passed_no_interval_and_records_its_alpha():
    assert not SequentialJudge(0.05).interval_ok and not ThresholdJudge().interval_ok
    state = SequentialJudge(0.01).state()
    assert (state["errors"]["alpha"], state["slow"]["alpha"], state["errorsAlone"]["alpha"]) == (0.01, 0.01, 0.01)
    assert (state["errors"]["r0"], state["slow"]["r0"], state["slowBoundS"]) == (1.25, 1.25, None)


# --- the runner ----------------------------------------------------------------------------------


def test_a_step_whose_target_serves_too_few_requests_is_not_promoted_after_a_good_step():
    """The promise "no data never passes": the first step is judged good; then the endpoint stops
    serving. The next step must hold and halt, not ride on the previous step's good interval."""
    world = World()
    apply = world.apply

    def apply_and_go_quiet(step):
        apply(step)
        if step.label == "50 %":
            world.rps = 0

    world.apply = apply_and_go_quiet
    outcome, events = run(world, steps=[10, 50, 100], maxHold=1)
    assert outcome.exit_code == 3 and outcome.decision == "halted"
    assert decisions(events) == [("promoted", "10 %"), ("held", "50 %"), ("held", "50 %"), ("halted", "50 %")]
    assert world.traffic == {"blue": 100, "green": 0}


def test_a_step_whose_target_served_exactly_min_requests_is_promoted_without_a_hold():
    world = World()  # 100 requests/s, all to green at 100 %: 200 in the first 2 s interval
    outcome, events = run(world, steps=[100], minRequests=200)
    served = sum(e["window"]["green"]["requests"] for e in events if e["event"] == "judgement")
    assert served == 200  # the premise: exactly --min-requests when the interval closes
    assert outcome.exit_code == 0
    assert decisions(events) == [("promoted", "100 %"), ("finished", "100 %")]


def test_the_mirror_phase_lasts_mirror_for_not_one_interval():
    world = World()
    outcome, events = run(world, steps=[50, 100], mirror=10, mirrorFor="6s")  # interval 2 s
    assert outcome.exit_code == 0
    applied = next(e["time"] for e in events if e["event"] == "step" and e["label"] == "mirror 10 %")
    promoted = next(e["time"] for e in events if e["event"] == "decision" and e["step"] == "mirror 10 %")
    assert promoted - applied >= 6
    live = next(e["time"] for e in events if e["event"] == "step" and e["label"] == "50 %")
    done = next(e["time"] for e in events if e["event"] == "decision" and e["step"] == "50 %")
    assert done - live < 6  # a live step is held for the interval, not for --mirror-for


def run_watched(world: World, judge=None, **flags):
    """run() of test_rollout_runner, also collecting every status line the live table showed."""
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, **flags})
    recorder = Recorder(None, clock=world.clock)
    o = plan.options
    statuses: list[str] = []
    runner = Runner(plan, world, world, judge or make_judge(o.judge, o.alpha, o.rules, o.failure_limit), recorder,
                    clock=world.clock, sleep=world.sleep, on_update=lambda view: statuses.append(view.status))
    return runner.run(), recorder.events, statuses


def quiet_after_start(world: World) -> World:
    apply = world.apply

    def apply_and_go_quiet(step):
        apply(step)
        if step.kind != "start":
            world.rps = 0

    world.apply = apply_and_go_quiet
    return world


def test_a_halt_says_how_many_requests_the_step_got_and_puts_traffic_back():
    world = quiet_after_start(World())
    outcome, events, statuses = run_watched(world, steps=[100], maxHold=1)
    message = ("at step 100 %: green served 0 of the 5 requests a step needs, after 1 extra interval(s); "
               "traffic is back on blue")
    assert (outcome.exit_code, outcome.decision, outcome.message, outcome.step) == (3, "halted", message, "100 %")
    assert outcome.target_served == 0 and outcome.failure is None
    last = events[-1]
    assert (last["event"], last["decision"], last["step"], last["index"], last["requests"], last["targetServed"],
            last["message"]) == ("decision", "halted", "100 %", 0, 0, 0, message)
    assert "halting: not enough data" in statuses and world.traffic == {"blue": 100, "green": 0}


def test_a_halt_whose_rollback_fails_says_so():
    world = failing_on(quiet_after_start(World()), "rollback")
    outcome, events, _ = run_watched(world, steps=[100], maxHold=1)
    assert outcome.exit_code == 3 and outcome.message.endswith("the rollback failed: cannot apply rollback")
    assert events[-1]["message"] == outcome.message


def halted(world: World, **flags):
    """run() of test_rollout_runner to a halt: the outcome, the halt's record line, the decision lines said."""
    said: list[str] = []
    outcome, events = run(world, lines=said, **flags)
    assert outcome.decision == "halted", outcome.message
    return outcome, events[-1], said


def test_a_halt_for_want_of_requests_says_so_in_one_line_and_records_no_missing_data():
    outcome, line, said = halted(quiet_after_start(World()), steps=[100], maxHold=1)
    assert said[-1] == "halted at 100 %: not enough requests; rolled back: live blue 100, green 0"
    assert line["noData"] is None and "waitedFor" not in line and line["rollbackError"] is None
    assert outcome.e_values == {"errors": 1.0, "latency": 1.0} and outcome.target_served == 0


def test_a_halt_whose_rollback_fails_records_the_error_and_says_it():
    outcome, line, said = halted(failing_on(quiet_after_start(World()), "rollback"), steps=[100], maxHold=1)
    assert said[-1] == "halted at 100 %: not enough requests; rollback failed: cannot apply rollback"
    assert line["rollbackError"] == "cannot apply rollback"


def test_a_halt_for_missing_data_records_why_and_says_no_data():
    world = World()
    fail_reads_while(world, lambda: world.traffic.get("green") == 50)
    outcome, line, said = halted(world, steps=[50, 100], maxHold=1)
    assert said[-1] == "halted at 50 %: no data; rolled back: live blue 100, green 0"
    assert "metrics unavailable" in line["noData"] and line["noData"] in outcome.message
    assert line["targetServed"] == outcome.target_served and outcome.step == "50 %"


def test_a_rollback_says_which_judge_failed_on_what_and_records_what_it_observed():
    world = World(green_error_rate=0.5)
    outcome, events, statuses = run_watched(world, ThresholdJudge((parse_rule("error_rate < 0.05"),)), steps=[10, 100])
    assert outcome.exit_code == 1 and outcome.decision == "rolled back" and outcome.step == "10 %"
    assert outcome.message == f"at step 10 %, threshold judge failed on error_rate < 0.05: {outcome.failure.message}"
    assert outcome.failure.message.startswith("error_rate = 0.5 (limit < 0.05)")
    last = events[-1]
    assert (last["decision"], last["step"], last["index"], last["rollbackError"]) == ("rolled-back", "10 %", 0, None)
    assert last["failure"] == outcome.failure.as_json() and last["targetServed"] == outcome.target_served == 20
    assert last["observed"]["green"]["requests"] == 20 and last["observed"]["green"]["errors"] == 10
    assert last["observed"]["blue"]["requests"] == 180
    assert "rolling back: threshold (error_rate < 0.05)" in statuses and world.traffic == {"blue": 100, "green": 0}


def test_a_rollback_that_fails_itself_says_so():
    world = failing_on(World(green_error_rate=0.5), "rollback")
    outcome, events, _ = run_watched(world, ThresholdJudge((parse_rule("error_rate < 0.05"),)), steps=[10, 100])
    assert outcome.exit_code == 1
    assert outcome.message.endswith("\nthe rollback itself failed: cannot apply rollback")
    assert events[-1]["rollbackError"] == "cannot apply rollback"


def test_a_step_that_cannot_be_applied_is_rolled_back_as_an_apply_failure():
    world = failing_on(World(), "50 %")
    outcome, events, _ = run_watched(world, steps=[10, 50, 100])
    assert (outcome.exit_code, outcome.step, outcome.failure.judge, outcome.failure.what) == (1, "50 %", "apply", "50 %")
    assert world.traffic == {"blue": 100, "green": 0}


def test_an_interrupted_rollout_goes_back_to_the_last_good_step_and_says_how_to_go_on():
    world = interrupted_at(World(), 50)
    outcome, events, statuses = run_watched(world, steps=[10, 50, 100])
    message = "left at the last good step (10 %: live blue 90, green 10); continue with --resume"
    assert (outcome.exit_code, outcome.decision, outcome.message, outcome.step) == (130, "interrupted", message, "10 %")
    last = events[-1]
    assert (last["decision"], last["step"], last["lastGood"], last["exitCode"]) == ("interrupted", "10 %", 0, 130)
    assert last["targetServed"] == outcome.target_served > 0 and last["judgeState"]["errors"]["alpha"] == 0.05
    assert "interrupted: back to 10 %" in statuses and world.traffic == {"blue": 90, "green": 10}


def test_an_interrupt_in_the_first_step_goes_back_to_the_stage_file():
    world = interrupted_at(World(), 10)
    outcome, events, _ = run_watched(world, steps=[10, 100])
    assert outcome.message == ("left at the last good step (stage-3-green-dark.yaml: live blue 100, green 0); "
                               "continue with --resume")
    assert events[-1]["lastGood"] == -1 and world.traffic == {"blue": 100, "green": 0}


def test_an_interrupted_rollout_that_cannot_go_back_says_so():
    world = failing_on(interrupted_at(World(), 50), "10 %")
    world.applied_once = False
    apply = world.apply

    def first_time_only(step):  # "10 %" applies as a step, fails as the way back
        if step.label == "10 %" and not world.applied_once:
            world.applied_once = True
            World.apply(world, step)
            return
        apply(step)

    world.apply = first_time_only
    outcome, _, _ = run_watched(world, steps=[10, 50, 100])
    assert outcome.exit_code == 130 and outcome.message == (
        "could not return to the last good step (10 %: live blue 90, green 10): cannot apply 10 %\n"
        "the endpoint's traffic is unknown: check it before --resume")


def test_sigterm_stops_the_rollout_at_the_last_good_step_with_exit_143():
    world = interrupted_at(World(), 50, by=signal.SIGTERM)
    previous = signal.getsignal(signal.SIGTERM)
    outcome, events, _ = run_watched(world, steps=[10, 50, 100])
    assert (outcome.exit_code, outcome.step) == (143, "10 %") and events[-1]["exitCode"] == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # the runner's handler is gone again
    assert world.traffic == {"blue": 90, "green": 10}


class TimedWorld(World):
    """World whose every live request is timed in the first histogram bucket (0-1 ms)."""

    def read(self):
        return {name: DeploymentCounts(Counts(c.live.requests, c.live.errors, c.live.errors_5xx,
                                              (c.live.requests,) + (0,) * (len(LATENCY_BOUNDS) - 1)), c.mirrored)
                for name, c in super().read().items()}


def test_each_judgement_records_the_windows_counts_per_deployment():
    world = TimedWorld(green_error_rate=0.1)
    _, events, _ = run_watched(world, steps=[50, 100])
    judged = [e for e in events if e["event"] == "judgement"]
    green = judged[1]["window"]["green"]  # one second at 50 % of 100 requests/s, 10 % failing
    green = {k: green[k] for k in ("requests", "errors", "errors5xx", "p90Ms", "p99Ms")}
    assert green == {"requests": 50, "errors": 5, "errors5xx": 5, "p90Ms": pytest.approx(0.9), "p99Ms": pytest.approx(0.99)}
    assert judged[1]["traffic"] == {"blue": 50, "green": 50} and judged[1]["step"] == "50 %"


def test_the_start_stage_is_applied_and_recorded_unless_the_endpoint_is_already_in_it():
    world = World()
    _, events, statuses = run_watched(world, steps=[100])
    assert world.applied[0] == "stage-3-green-dark.yaml" and "applying stage-3-green-dark.yaml" in statuses
    assert {k: v for k, v in events[0].items() if k != "rollout"} == {"time": 0.0, "event": "step", "index": -1, "label": "stage-3-green-dark.yaml",
                         "traffic": {"blue": 100, "green": 0}, "mirror": {}}
    world = World()
    world.in_state = lambda step: step.label == "stage-3-green-dark.yaml"
    _, events, _ = run_watched(world, steps=[100])
    assert world.applied[0] == "100 %" and events[0]["label"] == "stage-3-green-dark.yaml"


def test_a_start_stage_that_cannot_be_applied_is_refused_with_nothing_changed():
    world = failing_on(World(), "stage-3-green-dark.yaml")
    outcome, events, _ = run_watched(world, steps=[100])
    assert (outcome.exit_code, outcome.decision) == (2, "refused")
    assert outcome.message == ("the stage file could not be applied; nothing was changed by the rollout:\n"
                               "cannot apply stage-3-green-dark.yaml")
    assert world.applied == [] and events == []


def test_the_live_table_shows_the_step_number_out_of_all_steps():
    world = World()
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "steps": [50, 100]})
    seen = set()
    runner = Runner(plan, world, world, make_judge("sequential", 0.05, (), 1), Recorder(None, clock=world.clock),
                    clock=world.clock, sleep=world.sleep,
                    on_update=lambda v: seen.add((v.step, v.index, v.steps, str(v.traffic), str(v.mirror), "judge" in v.judge)))
    assert runner.run().exit_code == 0
    assert {("50 %", 1, 2, "{'blue': 50, 'green': 50}", "{}", True), ("100 %", 2, 2, "{'blue': 0, 'green': 100}", "{}", True)} <= seen


def test_a_resumed_rollout_starts_at_its_step_with_the_judges_state_and_what_was_served():
    world = World(green_error_rate=0.2)
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "steps": [10, 50, 100]})
    judge = ThresholdJudge((parse_rule("error_rate < 0.5"),), failure_limit=2)
    runner = Runner(plan, world, world, judge, Recorder(None, clock=world.clock), clock=world.clock, sleep=world.sleep)
    outcome = runner.run(start_index=1, judge_state={"failedChecks": 1}, target_served=40)
    assert world.applied[0] == "50 %"  # no start stage, no 10 % again
    assert outcome.exit_code == 0 and outcome.target_served == 40 + 100 + 200
    world = World(green_error_rate=0.6)
    judge = ThresholdJudge((parse_rule("error_rate < 0.5"),), failure_limit=2)
    runner = Runner(plan, world, world, judge, Recorder(None, clock=world.clock), clock=world.clock, sleep=world.sleep)
    outcome = runner.run(start_index=1, judge_state={"failedChecks": 1}, target_served=40)
    assert outcome.exit_code == 1 and "failed checks 2 of 2" in outcome.message  # the check before resuming counts


def test_an_interrupt_right_after_resuming_goes_back_to_the_step_before():
    world = interrupted_at(World(), 50)
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "steps": [10, 50, 100]})
    runner = Runner(plan, world, world, make_judge("sequential", 0.05, (), 1), Recorder(None, clock=world.clock),
                    clock=world.clock, sleep=world.sleep)
    outcome = runner.run(start_index=1)
    assert outcome.exit_code == 130 and outcome.step == "10 %" and world.traffic == {"blue": 90, "green": 10}


def test_a_target_failing_its_mirrored_copies_is_rolled_back_in_the_mirror_phase():
    world = World(green_error_rate=0.5)  # green fails half of what it serves, mirrored copies included
    outcome, _, _ = run_watched(world, steps=[50, 100], mirror=10, mirrorFor="6s")
    assert (outcome.exit_code, outcome.step, outcome.failure.judge) == (1, "mirror 10 %", "sequential")
    assert "50 %" not in world.applied


def test_judgements_while_baking_are_labelled_as_the_bake():
    world = World()
    _, events, _ = run_watched(world, steps=[100], bake="3s")
    labels = [e["step"] for e in events if e["event"] == "judgement"]
    assert labels[:2] == ["100 %", "100 %"] and set(labels[2:]) == {"bake at 100 %"}


def test_windows_close_every_tick_in_every_step_and_a_failed_reading_is_delayed_not_lost():
    world = World(fail_reads={3})  # a reading in the middle of the first step
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "steps": [50, 100]})
    recorder = Recorder(None, clock=world.clock)
    runner = Runner(plan, world, world, make_judge("sequential", 0.05, (), 1), recorder, tick_s=0.5,
                    clock=world.clock, sleep=world.sleep)
    assert runner.run().exit_code == 0
    times = [e["time"] for e in recorder.events if e["event"] == "judgement"]
    assert len(times) >= 8  # two steps of 2 s, a window every 0.5 s
    assert all(later - earlier == pytest.approx(0.5) for earlier, later in zip(times, times[1:]))
    judged = sum(e["window"].get("green", {}).get("requests", 0) for e in recorder.events if e["event"] == "judgement")
    assert judged == world.totals["green"].live.requests  # every request green served, judged once


class TwoRateWorld(World):
    """World where blue fails too: `rates` maps a deployment to its error rate, changed by the test."""

    def __init__(self, rates):
        self.rates = rates
        super().__init__()

    def _serve(self, seconds):
        for name in ("blue", "green"):
            for kind, share in (("live", self.traffic.get(name, 0)), ("mirrored", self.mirror.get(name, 0))):
                requests, errors = self.exact.get((name, kind), (0.0, 0.0))
                self.exact[(name, kind)] = (requests + self.rps * seconds * share / 100,
                                            errors + self.rps * seconds * share / 100 * self.rates[name])
            live, mirrored = self.exact.get((name, "live"), (0, 0)), self.exact.get((name, "mirrored"), (0, 0))
            self.totals[name] = DeploymentCounts(Counts(int(live[0] + 1e-9), int(live[1] + 1e-9), int(live[1] + 1e-9)),
                                                 Counts(int(mirrored[0] + 1e-9), int(mirrored[1] + 1e-9)))


def test_at_100_percent_a_ratio_rule_compares_with_the_baseline_of_the_earlier_steps():
    world = TwoRateWorld({"blue": 0.1, "green": 0.1})
    apply = world.apply

    def apply_and_degrade(step):
        apply(step)
        if step.label == "100 %":
            world.rates["green"] = 0.3  # 3x the error rate blue had while it served
    world.apply = apply_and_degrade
    judge = ThresholdJudge((parse_rule("error_rate_ratio < 1.5"),))
    outcome, _, _ = run_watched(world, judge, steps=[50, 100])
    assert (outcome.exit_code, outcome.step) == (1, "100 %")
    assert "error_rate_ratio = 3 " in outcome.failure.message


def test_a_promoted_rollout_records_each_step_and_decision_and_says_where_it_ended():
    world = World()
    outcome, events, _ = run_watched(world, steps=[50, 100], bake="2s", deleteOld=True)
    assert (outcome.exit_code, outcome.decision, outcome.message, outcome.step) == (
        0, "promoted", "green promoted to delete blue", "delete blue")
    assert set(outcome.e_values) == {"errors", "latency"}
    steps = [(e["index"], e["label"], e["traffic"], e["mirror"]) for e in events if e["event"] == "step"]
    assert steps == [(-1, "stage-3-green-dark.yaml", {"blue": 100, "green": 0}, {}),
                     (0, "50 %", {"blue": 50, "green": 50}, {}), (1, "100 %", {"blue": 0, "green": 100}, {}),
                     (2, "delete blue", {"green": 100}, {})]
    served, made = 0, []  # green's requests as the judgement windows recorded them, up to each decision
    for e in events:
        if e["event"] == "judgement":
            served += e["window"]["green"]["requests"]
        elif e["event"] == "decision":
            made.append({k: v for k, v in e.items() if k not in ("time", "event", "judgeState", "rollout")})
            assert made[-1]["targetServed"] == served
    assert served > 0 and outcome.target_served == served
    assert [{k: v for k, v in d.items() if k != "targetServed"} for d in made] == [
        {"decision": "promoted", "step": "50 %", "index": 0},
        {"decision": "promoted", "step": "100 %", "index": 1},
        {"decision": "baked", "step": "100 %", "index": 1},
        {"decision": "finished", "step": "delete blue", "index": 2, "message": "green promoted to delete blue"}]
    assert all(e["judgeState"]["errors"]["r0"] == 1.25 for e in events if e.get("decision") in ("promoted", "baked"))


def test_a_failed_reading_is_recorded_with_the_sources_message():
    world = World(fail_reads={3})
    _, events, _ = run_watched(world, steps=[100])
    assert [e["message"] for e in events if e["event"] == "source-error"] == ["metrics unavailable"]


def test_the_live_table_shows_the_threshold_judges_failed_checks():
    world = World()
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "steps": [100]})
    seen = []
    runner = Runner(plan, world, world, ThresholdJudge(failure_limit=2), Recorder(None, clock=world.clock),
                    clock=world.clock, sleep=world.sleep, on_update=lambda v: seen.append(dict(v.judge)))
    assert runner.run().exit_code == 0
    assert {"judge": "threshold", "failed checks": "0/2"} in seen


def test_every_ending_reports_the_judges_e_values_and_what_the_target_served():
    world = World(green_error_rate=0.5)
    rolled, events, _ = run_watched(world, steps=[10, 100])
    assert set(rolled.e_values) == {"errors", "latency"} and events[-1]["eValues"] == rolled.e_values
    world = World(rps=2)  # 2 requests/s: fewer than the 50 a step needs
    halted, events, _ = run_watched(world, steps=[100], maxHold=1, minRequests=50)
    assert halted.exit_code == 3 and set(halted.e_values) == {"errors", "latency"}
    assert 0 < halted.target_served == events[-1]["targetServed"] == events[-1]["requests"]
    world = interrupted_at(World(), 50)
    stopped, events, _ = run_watched(world, steps=[10, 50, 100])
    assert set(stopped.e_values) == {"errors", "latency"} and events[-1]["event"] == "decision"


def test_the_live_table_shows_the_judge_and_the_mirror_of_the_step():
    world = World(green_error_rate=0.5)
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "steps": [50, 100],
                               "mirror": 10, "mirrorFor": "4s"})
    views = []
    runner = Runner(plan, world, world, make_judge("sequential", 0.05, (), 1), Recorder(None, clock=world.clock),
                    clock=world.clock, sleep=world.sleep,
                    on_update=lambda v: views.append((v.step, dict(v.mirror), dict(v.judge), v.status)))
    assert runner.run().exit_code == 1
    assert ("mirror 10 %", {"green": 10}) in [(step, mirror) for step, mirror, _, _ in views]
    assert views[-1][3].startswith("rolling back") and "e(errors)" in views[-1][2]


def test_a_step_whose_interval_failed_a_check_is_not_promoted_even_under_the_failure_limit():
    """Flagger's threshold: a failed check is counted, not forgiven; the step waits for a good interval."""
    world = World(green_error_rate=0.5)
    judge = ThresholdJudge((parse_rule("error_rate < 0.05"),), failure_limit=3)
    outcome, events, _ = run_watched(world, judge, steps=[10, 100])
    assert (outcome.exit_code, outcome.step) == (1, "10 %") and "failed checks 3 of 3" in outcome.message
    assert [d for d, _ in decisions(events)] == ["rolled-back"]


# --- the plan ------------------------------------------------------------------------------------


def stage_in(folder: Path, traffic: dict[str, int], rollout: dict | None = None) -> Path:
    """Local stage 3 with a third deployment `red` (blue's twin), written into `folder` as a project
    of its own (a copy of Pulumi.yaml, the deployments' paths made absolute)."""
    shutil.copy(PROJECT_DIR / "Pulumi.yaml", folder / "Pulumi.yaml")
    config = copy.deepcopy(yaml.safe_load(STAGE_3.read_text())["config"])
    endpoint = config["mlcanary:endpoint"]
    blue = endpoint["deployments"]["blue"]
    blue["model"], blue["code"] = (str(PROJECT_DIR / blue[k]) for k in ("model", "code"))
    endpoint["deployments"]["green"]["file"] = str(PROJECT_DIR / endpoint["deployments"]["green"]["file"])
    endpoint["deployments"]["red"] = {**blue, "instanceCount": 1}
    endpoint["traffic"] = traffic
    if rollout is not None:
        config["mlcanary:rollout"] = rollout
    path = folder / "stage.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


def test_the_baseline_is_the_busiest_other_deployment(tmp_path):
    path = stage_in(tmp_path, {"blue": 100, "red": 0, "green": 0})
    assert load_plan(path, {"to": "green"}).options.baseline == "blue"
    path = stage_in(tmp_path, {"blue": 30, "red": 70, "green": 0})
    with pytest.raises(PlanError) as raised:  # red is the baseline; blue keeps its 30 %
        load_plan(path, {"to": "green"})
    assert str(raised.value) == ("other deployments keep 30 % of live traffic ({'blue': 30}); "
                                 "'green' can take at most 70 %, but the last step is 100 %")


def test_steps_and_rules_from_the_stage_file_hold_when_no_flag_gives_them(tmp_path):
    """The CLI passes an empty tuple for a repeatable option the user did not give (--rule, --steps)."""
    path = stage_in(tmp_path, {"blue": 100, "red": 0, "green": 0},
                    {"to": "green", "steps": [20, 100], "rule": ["error_rate < 0.02"]})
    options = load_plan(path, {"steps": (), "rule": (), "interval": None}).options
    assert options.steps == (20, 100) and [str(r) for r in options.rules] == ["error_rate < 0.02"]


def test_the_gate_judges_the_first_step_against_the_stage_file():
    settings = load_policy_config(None, policy_defaults())
    settings["max-traffic-shift"] = PolicySettings(EnforcementLevel.MANDATORY, {"maxShiftPercent": 10})
    plan = load_plan(STAGE_3, {"to": "green", "steps": [50, 60, 70, 80, 90, 100]})
    refused = gate(plan, settings)
    assert len(refused) == 1
    assert refused[0].startswith("stage-3-green-dark.yaml -> step '50 %': [mandatory] max-traffic-shift: this step "
                                 "moves 50 percentage points")


def test_the_plan_record_keeps_every_option_and_stage_that_resume_derives_again():
    """The record's plan (plan_json) is what `--resume` re-derives the plan from and compares the stage
    file's steps with: each option under its record key, each step's live and mirror traffic."""
    plan = load_plan(STAGE_3, {"to": "green", "steps": [25, 50, 100], "interval": "2s", "mirror": 10,
                               "mirrorFor": "1m", "bake": "30s", "deleteOld": True, "rule": ["error_rate < 0.02"],
                               "judge": "threshold", "alpha": 0.01, "minRequests": 7, "maxHold": 4,
                               "failureLimit": 2,
                               "compare": {"path": "$.result", "tolerance": "0.01", "maxDisagreement": 0.05}})
    assert (plan.endpoint, plan.target) == ("fraud-scorer", "local")
    assert plan_json(plan) == {
        "endpoint": "fraud-scorer", "stageFile": str(STAGE_3.resolve()), "target": "local",
        "to": "green", "from": "blue", "steps": [25, 50, 100], "intervalS": 2.0, "mirror": 10, "mirrorForS": 60.0,
        "bakeS": 30.0, "deleteOld": True, "rule": ["error_rate < 0.02"], "judge": "threshold", "alpha": 0.01,
        "minRequests": 7, "maxHold": 4, "failureLimit": 2,
        "compare": {"path": "$.result", "tolerance": "0.01", "maxDisagreement": 0.05},
        "stages": [
            {"label": "mirror 10 %", "traffic": {"blue": 100, "green": 0}, "mirror": {"green": 10}},
            {"label": "mirror off", "traffic": {"blue": 100, "green": 0}, "mirror": {}},
            {"label": "25 %", "traffic": {"blue": 75, "green": 25}, "mirror": {}},
            {"label": "50 %", "traffic": {"blue": 50, "green": 50}, "mirror": {}},
            {"label": "100 %", "traffic": {"blue": 0, "green": 100}, "mirror": {}},
            {"label": "delete blue", "traffic": {"green": 100}, "mirror": {}},
        ],
        "rollback": {"blue": 100, "green": 0},
    }
    assert [(s.kind, s.percent, s.judged) for s in plan.steps] == [
        ("mirror", 10, True), ("mirror-off", 0, False), ("live", 25, True), ("live", 50, True), ("live", 100, True),
        ("delete", 100, False)]
    assert (plan.start.label, plan.start.kind, plan.start.percent) == ("stage-3-green-dark.yaml", "start", 0)
    # the way back is a stage of its own: the baseline live, the target dark, no mirror
    rollback = plan.rollback.config["mlcanary:endpoint"]
    assert (plan.rollback.kind, plan.rollback.percent) == ("live", 0)
    assert (rollback["traffic"], rollback["mirrorTraffic"]) == ({"blue": 100, "green": 0}, {})


def test_every_bad_option_is_listed_on_a_line_of_its_own_under_the_refusal():
    with pytest.raises(PlanError) as raised:
        load_plan(STAGE_3, {"steps": [10, 50]})
    assert str(raised.value) == (
        "invalid rollout options:\n"
        "  --steps: live percentages 1-100 for the target, increasing, ending at 100 (e.g. 10,25,50,100), got 10,50\n"
        "  --to: required: the deployment to promote")


def test_the_start_step_records_the_share_the_target_already_has(tmp_path):
    plan = load_plan(stage_in(tmp_path, {"blue": 90, "red": 0, "green": 10}), {"to": "green", "steps": [50, 100]})
    assert (plan.start.kind, plan.start.percent) == ("start", 10)
    # nothing asked of the answer judge: the record says so (compare: null)
    assert plan_json(plan)["compare"] is None


def test_a_target_busier_than_the_others_still_rolls_out_from_the_busiest_other(tmp_path):
    plan = load_plan(stage_in(tmp_path, {"blue": 40, "red": 0, "green": 60}), {"to": "green", "steps": [80, 100]})
    assert plan.options.baseline == "blue" and plan.steps[0].traffic == {"blue": 20, "red": 0, "green": 80}


def test_the_busiest_other_deployment_is_chosen_by_share_not_by_name(tmp_path):
    with pytest.raises(PlanError) as raised:  # blue (70 %) is the baseline; red keeps its 30 %
        load_plan(stage_in(tmp_path, {"blue": 70, "red": 30, "green": 0}), {"to": "green"})
    assert str(raised.value) == ("other deployments keep 30 % of live traffic ({'red': 30}); "
                                 "'green' can take at most 70 %, but the last step is 100 %")


def test_a_deployment_with_1_percent_is_a_baseline_and_none_with_0_is(tmp_path):
    plan = load_plan(stage_in(tmp_path, {"blue": 1, "red": 0, "green": 99}), {"to": "green", "steps": [100]})
    assert plan.options.baseline == "blue"
    with pytest.raises(PlanError) as raised:
        load_plan(stage_in(tmp_path, {"blue": 0, "red": 0, "green": 100}), {"to": "green"})
    assert str(raised.value) == ("invalid rollout options:\n"
                                 "  --from: no other deployment has live traffic in this stage: name the baseline")


def test_rollout_keys_of_the_stage_file_in_their_documented_spelling_make_the_plan(tmp_path):
    """`from` and `deleteOld` together: the delete step's stage no longer names the deleted baseline."""
    path = stage_in(tmp_path, {"blue": 100, "red": 0, "green": 0},
                    {"to": "green", "from": "blue", "minRequests": 7, "failureLimit": 2, "deleteOld": True})
    plan = load_plan(path, {})
    options = plan.options
    assert (options.baseline, options.min_requests, options.failure_limit, options.delete_old) == ("blue", 7, 2, True)
    deleted = plan.steps[-1].config
    assert "blue" not in deleted["mlcanary:endpoint"]["deployments"] and "from" not in deleted["mlcanary:rollout"]
    assert plan.start.config["mlcanary:rollout"]["from"] == "blue"  # the stage file's own config is left as it is


def test_a_flag_of_the_wrong_type_is_refused_naming_the_flag_and_the_value():
    with pytest.raises(PlanError) as raised:
        load_plan(STAGE_3, {"to": "green", "minRequests": "x"})
    assert str(raised.value) == "invalid rollout options:\n  --min-requests: Input should be a valid integer, got 'x'"


def test_a_stage_file_the_spec_refuses_is_refused_with_each_problem_on_its_line(tmp_path):
    path = stage_in(tmp_path, {"blue": 90, "red": 0, "green": 0})
    with pytest.raises(PlanError) as raised:
        load_plan(path, {"to": "green"})
    assert str(raised.value) == (f"{path}: invalid stack config:\n  mlcanary:endpoint.traffic: live traffic must sum "
                                 "to 100 (or 0 when nothing is live), got 90 (blue=90, green=0, red=0)")


def kubernetes_stage(folder: Path) -> Path:
    """Azure stage 3 on a Kubernetes compute: both deployments on the cluster."""
    shutil.copy(PROJECT_DIR / "Pulumi.yaml", folder / "Pulumi.yaml")
    config = yaml.safe_load((PROJECT_DIR / "stacks" / "stage-3-green-dark.yaml").read_text())["config"]
    endpoint = config["mlcanary:endpoint"]
    blue = {k: v for k, v in endpoint["deployments"]["blue"].items() if k != "instanceType"}
    endpoint.update(compute="azureml:k8s-compute", traffic={"blue": 100, "green": 0},
                    deployments={name: {**blue, "type": "kubernetes"} for name in ("blue", "green")})
    path = folder / "stage.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


def test_a_mirror_phase_on_a_kubernetes_endpoint_is_refused_before_anything_runs(tmp_path):
    """Kubernetes online endpoints take no mirror traffic (design.md): the derived mirror step is invalid."""
    with pytest.raises(PlanError) as raised:
        load_plan(kubernetes_stage(tmp_path), {"to": "green", "mirror": 10, "mirrorFor": "1m"})
    assert str(raised.value) == (
        "a derived stage is invalid:\n  stage.yaml step 'mirror 10 %': mlcanary:endpoint.mirrorTraffic: mirror traffic "
        "is not supported on Kubernetes online endpoints")


def test_advisory_violations_let_the_plan_run_and_are_kept_with_it():
    settings = load_policy_config(None, policy_defaults())
    settings["max-traffic-shift"] = PolicySettings(EnforcementLevel.ADVISORY, {"maxShiftPercent": 40})
    plan = load_plan(STAGE_3, {"to": "green", "steps": [50, 100]})
    assert gate(plan, settings) == []
    moved = "[advisory] max-traffic-shift: this step moves 50 percentage points of live traffic; at most 40 may move in one step"
    assert plan.advisories == [f"stage-3-green-dark.yaml -> step '50 %': {moved}", f"step '50 %' -> step '100 %': {moved}"]


def test_a_stage_file_key_made_wrong_by_a_flag_is_named_where_it_is_written(tmp_path):
    path = stage_in(tmp_path, {"blue": 100, "red": 0, "green": 0}, {"from": "blue"})
    with pytest.raises(PlanError) as raised:
        load_plan(path, {"to": "blue"})
    assert str(raised.value) == ("invalid rollout options:\n"
                                 "  mlcanary:rollout.from: the baseline must be another deployment than the target 'blue'")


def test_a_stage_file_that_cannot_be_read_is_refused_naming_it(tmp_path):
    with pytest.raises(PlanError) as raised:
        load_plan(tmp_path / "missing.yaml", {"to": "green"})
    assert str(raised.value) == f"{tmp_path / 'missing.yaml'}: stage file not found"


@pytest.mark.parametrize("flags, message", [
    ({"interval": [1]}, "  --interval: Input should be a valid string, got [1]\n"
                        "  --interval: Input should be a valid number, got [1]"),
    ({"steps": ["a", 100]}, "  --steps: Input should be a valid integer, got 'a'"),
    ({"compare": {"path": "scores", "maxDisagreement": "x"}},
     "  --max-disagreement: Input should be a valid number, unable to parse string as a number, got 'x'"),
], ids=["either_of_two_types", "an_item_of_a_list", "a_compare_key"])
def test_a_flag_of_the_wrong_type_is_named_as_the_flag_the_user_gave(flags, message):
    with pytest.raises(PlanError) as raised:
        load_plan(STAGE_3, {"to": "green", **flags})
    assert str(raised.value) == "invalid rollout options:\n" + message


def test_comparing_answers_needs_a_step_both_sides_serve_and_1_percent_is_one():
    with pytest.raises(PlanError) as raised:
        load_plan(STAGE_3, {"to": "green", "compare": {"path": "scores"}, "steps": [100]})
    assert str(raised.value) == (
        "invalid rollout options:\n  --compare-path (mlcanary:rollout.compare.path): no step of this plan gives answers "
        "to compare: add a mirror phase (--mirror, --mirror-for), or a step in which 'blue' keeps live traffic (the "
        "steps 100 go straight to 100 %)")
    assert load_plan(STAGE_3, {"to": "green", "compare": {"path": "scores"}, "steps": [1, 100]}).steps[0].percent == 1


def test_a_judgement_line_keeps_each_deployments_mirrored_and_pinned_requests_and_errors_apart():
    world = World(pinned_rps=10)
    _, events = run(world, steps=[50, 100], mirror=10, mirrorFor="2s")
    mirror_window = next(e for e in events if e["event"] == "judgement" and e["mirror"])["window"]["green"]
    mirrored, pinned = mirror_window["mirrored"]["requests"], mirror_window["pinned"]["requests"]
    assert mirrored > 0 and pinned > 0
    assert (mirror_window["mirrored"], mirror_window["pinned"]) == ({"requests": mirrored, "errors": 0},
                                                                    {"requests": pinned, "errors": 0})


def test_a_promotion_read_back_otherwise_records_what_the_endpoint_it_named_runs_and_why():
    world = World()
    asked = []

    def moved_back(endpoint):  # another actor moved traffic back meanwhile
        asked.append(endpoint)
        return {"blue": 100, "green": 0}
    world.live_traffic = moved_back
    said = []
    outcome, events = run(world, lines=said, steps=[50, 100])
    why = "the endpoint now runs live blue 100, not blue 0, green 100 as the last step set"
    assert asked == ["fraud-scorer"]
    line = events[-1]
    assert (line["decision"], line["step"], line["index"], line["readBack"], line["message"]) == (
        "unconfirmed", "100 %", 1, {"blue": 100}, f"green is not promoted: {why}")
    assert said[-1] == f"not promoted: {why}"
    last_window = [e for e in events if e["event"] == "judgement"][-1]
    assert (outcome.step, outcome.message, outcome.target_served) == ("100 %", line["message"], last_window["targetServed"])
    assert outcome.e_values == last_window["eValues"] and outcome.target_served > 0


def test_a_promotion_whose_traffic_cannot_be_read_back_is_not_promoted_saying_why():
    world = World()

    def unreadable(endpoint):
        raise ApplyError("the runtime is not answering")
    world.live_traffic = unreadable
    outcome, events = run(world, steps=[50, 100])
    assert outcome.decision == "not promoted" and events[-1]["readBack"] is None
    assert outcome.message == ("green is not promoted: the endpoint's traffic could not be read back: "
                               "the runtime is not answering")


def interrupted_at_50(world: World, fail_return: bool = False):
    """Ctrl-C in the 50 % step; with `fail_return`, putting the 10 % step back fails."""
    world, apply = interrupted_at(world, 50), world.apply

    def apply_once(step):
        if fail_return and step.label in world.applied:
            raise ApplyError("the runtime is not answering")
        apply(step)
    world.apply = apply_once
    said = []
    outcome, events = run(world, lines=said, steps=[10, 50, 100])
    return outcome, events[-1], said


def test_an_interruption_says_where_it_left_the_traffic_and_records_what_resume_needs():
    outcome, line, said = interrupted_at_50(World())
    assert said[-1] == "interrupted: back to 10 % (live blue 90, green 10)"
    assert outcome.message == "left at the last good step (10 %: live blue 90, green 10); continue with --resume"
    assert (line["step"], line["returned"], line["targetServed"]) == ("10 %", True, outcome.target_served)
    assert outcome.target_served > 0 and outcome.step == "10 %" and outcome.e_values["errors"] > 0


def test_an_interruption_that_cannot_put_the_last_good_step_back_says_the_traffic_is_unknown():
    outcome, line, said = interrupted_at_50(World(), fail_return=True)
    assert said[-1] == "interrupted: could not return to 10 %: the runtime is not answering; the traffic is unknown"
    assert outcome.message == ("could not return to the last good step (10 %: live blue 90, green 10): the runtime "
                               "is not answering\nthe endpoint's traffic is unknown: check it before --resume")
    assert line["returned"] is False and outcome.exit_code == 130


def test_each_step_says_what_it_applied_and_how_many_requests_passed_it():
    said = []
    outcome, events = run(World(), lines=said, steps=[50, 100], mirror=10, mirrorFor="2s")
    promoted = {e["step"]: e for e in events if e.get("decision") == "promoted"}
    judged = {}
    for e in events:
        if e["event"] == "judgement":
            judged[e["step"]] = judged.get(e["step"], 0) + e["window"]["green"]["requests"] + (
                e["window"]["green"]["mirrored"]["requests"] if e["mirror"] else 0)
    assert outcome.exit_code == 0 and set(promoted) == {"mirror 10 %", "50 %", "100 %"}
    assert [line for line in said if line.startswith(("applied", "passed"))] == [
        "applied step 1/4 mirror 10 %: live blue 100, green 0, mirror green 10",
        f"passed step 1/4 mirror 10 %: {judged['mirror 10 %']} requests to green judged",
        "applied step 2/4 mirror off: live blue 100, green 0",
        "applied step 3/4 50 %: live blue 50, green 50",
        f"passed step 3/4 50 %: {judged['50 %']} requests to green judged",
        "applied step 4/4 100 %: live blue 0, green 100",
        f"passed step 4/4 100 %: {judged['100 %']} requests to green judged"]
    assert all(judged.values())


def test_counts_that_restart_are_recorded_with_why():
    world = World()
    restarted_once_when(world, lambda: world.traffic.get("green") == 50)
    _, events = run(world, steps=[50, 100])
    lines = [e for e in events if e["event"] == "counts-restarted"]
    assert len(lines) == 1 and "started again from zero" in lines[0]["message"]
    no_data = [e["noData"] for e in events if e["event"] == "judgement" and "noData" in e]
    assert lines[0]["message"] in no_data


def test_a_step_short_of_requests_is_held_each_interval_saying_how_many_it_has_and_needs():
    said = []
    _, events = run(quiet_after_start(World()), lines=said, steps=[100], maxHold=2)
    held = [e for e in events if e.get("decision") == "held"]
    assert [(e["step"], e["index"], e["reason"], e["requests"], e["needed"], e["holds"], e["noDataWindows"])
            for e in held] == [("100 %", 0, "0 of the 5 requests needed", 0, 5, holds, 0) for holds in (1, 2, 3)]
    assert [line for line in said if line.startswith("held")] == [
        f"held 100 %: 0 of the 5 requests needed (hold {holds}; halts after 2)" for holds in (1, 2, 3)]


def test_a_step_without_data_is_held_saying_how_many_windows_had_none_and_why():
    world = World()
    fail_reads_while(world, lambda: world.traffic.get("green") == 50)
    said = []
    _, events = run(world, lines=said, steps=[50, 100], maxHold=1)
    held = [e for e in events if e.get("decision") == "held"]
    assert held and all(e["noDataWindows"] > 0 for e in held)
    first = held[0]
    assert first["reason"] == (f"no data in {first['noDataWindows']} window(s) of this interval "
                               "(metrics unavailable)")
    assert f"held 50 %: {first['reason']} (hold 1; halts after 1)" in said


def watched_views(world: World, judge=None, **flags):
    """Every view the live table was given: (step, index, status, judge) as it was then."""
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, **flags})
    o = plan.options
    views, recorder = [], Recorder(None, clock=world.clock)
    runner = Runner(plan, world, world, judge or make_judge(o.judge, o.alpha, o.rules, o.failure_limit),
                    recorder, clock=world.clock, sleep=world.sleep,
                    on_update=lambda view: views.append((view.step, view.index, view.steps, view.status, dict(view.judge))))
    return runner.run(), views, recorder.events


def test_the_live_table_shows_the_step_the_requests_judged_so_far_and_the_e_values_to_3_places():
    outcome, views, events = watched_views(World(green_error_rate=0.02), steps=[50, 100])
    judging = [v for v in views if v[3].startswith("judging")]
    assert judging and all(v[3].endswith(" of 5 requests to green") for v in judging)
    assert {(v[0], v[1], v[2]) for v in judging} == {("50 %", 1, 2), ("100 %", 2, 2)}
    assert ("50 %", 1, 2, "applying 50 %", {}) in [(v[0], v[1], v[2], v[3], {}) for v in views]
    shown = [v[4] for v in judging]
    assert all(set(e) == {"judge", "e(errors)", "e(latency)"} and e["judge"] == "sequential" for e in shown)
    recorded = {round(e["eValues"]["errors"], 3) for e in events if e["event"] == "judgement"}
    assert {e["e(errors)"] for e in shown} <= recorded and len(recorded) > 2
    assert any(e["e(errors)"] != round(e["e(errors)"], 2) for e in shown)


def test_the_live_table_shows_the_threshold_judges_failed_checks_of_its_limit():
    _, views, _ = watched_views(World(green_error_rate=0.05), ThresholdJudge((parse_rule("error_rate < 0.01"),), 3),
                                steps=[50, 100])
    shown = [v[4]["failed checks"] for v in views if "failed checks" in v[4]]
    assert shown[0] == "0/3" and set(shown) == {"0/3", "1/3", "2/3", "3/3"}


def test_a_step_whose_first_reading_failed_has_no_earlier_reading_to_count_its_first_window_from():
    world = World()
    reads = []
    fail_reads_while(world, lambda: world.traffic.get("green") == 50 and not reads and not reads.append(world.now))
    _, events = run(world, steps=[50, 100])
    windows = [e for e in events if e["event"] == "judgement" and e["step"] == "50 %"]
    assert windows[0]["noData"] == "no earlier reading in this step to count from"
    assert all("noData" not in e for e in windows[1:])
    promoted = next(e for e in events if e.get("decision") == "promoted" and e["step"] == "50 %")
    applied = next(e for e in events if e["event"] == "step" and e["label"] == "50 %")
    held = [e for e in events if e.get("decision") == "held" and e["step"] == "50 %"]
    assert [e["noDataWindows"] for e in held] == [1]  # its interval is held: promoted one interval later
    assert promoted["time"] - applied["time"] == pytest.approx(4.0)
