"""The rollout judges as pure code: the e-value test, rules, the sequential and threshold judges."""

from __future__ import annotations

import math
import random

import pytest

from mlcanary.components.rollout_rules import RuleError, parse_rule
from mlcanary.rollout.counts import LATENCY_BOUNDS, Counts
from mlcanary.rollout.evalue import RatioEValue, sprt, target_probability
from mlcanary.rollout.judges import SequentialJudge, ThresholdJudge
from mlcanary.rollout.rules import observe


def binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def buckets(fast: int, slow: int, fast_bound=0.005, slow_bound=0.25) -> tuple[int, ...]:
    counts = [0] * len(LATENCY_BOUNDS)
    counts[LATENCY_BOUNDS.index(fast_bound)] += fast
    counts[LATENCY_BOUNDS.index(slow_bound)] += slow
    return tuple(counts)


# --- the e-value ------------------------------------------------------------------------------------

def test_target_probability_is_the_share_when_rates_are_equal():
    assert target_probability(0.1, 1.0) == pytest.approx(0.1)
    assert target_probability(0.1, 9.0) == pytest.approx(0.5)


def test_e_value_starts_at_one_and_ignores_windows_without_information():
    test = RatioEValue(1.0, 0.05)
    test.update(0, 0, 0.1)
    test.update(3, 0, 1.0)  # the baseline served nothing
    assert test.e_value == 1.0 and not test.rejected


def test_a_x30_error_rate_is_rejected_after_a_few_errors():
    test = RatioEValue(1.25, 0.05)
    for _ in range(5):
        test.update(1, 0, 0.1)
    assert test.rejected and test.e_value >= 20


def test_errors_at_the_baselines_rate_are_not_rejected():
    test = RatioEValue(1.25, 0.05)
    test.update(10, 90, 0.1)
    assert test.e_value < 1


def test_a_a_e_value_is_a_supermartingale_on_average():
    """Under H0 (r = r0) the mean e-value over many runs stays <= 1 after each window (up to noise)."""
    rng = random.Random(7)
    runs, windows = 2000, 30
    totals = [0.0] * windows
    for _ in range(runs):
        test = RatioEValue(1.0, 0.05)
        for w in range(windows):
            share = rng.choice([0.1, 0.25, 0.5])
            events = 1 + rng.randrange(4)
            target = binomial(rng, events, share)
            test.update(target, events - target, share)
            totals[w] += test.e_value
    means = [t / runs for t in totals]
    assert max(means) < 1.15  # E[E_t] = 1 exactly at r = r0; sampling noise only


def test_a_a_false_rejections_stay_below_alpha_even_checked_every_window():
    rng = random.Random(11)
    rejected = 0
    for _ in range(500):
        test = RatioEValue(1.0, 0.05)
        for _ in range(200):
            events = binomial(rng, 10, 0.2)
            target = binomial(rng, events, 0.25)
            test.update(target, events - target, 0.25)
            if test.rejected:
                rejected += 1
                break
    assert rejected / 500 <= 0.05


def test_the_oracle_sprt_rejects_no_later_than_the_mixture():
    mixture, oracle = RatioEValue(1.25, 0.05), sprt(10.0, 1.25, 0.05)
    steps = {"mixture": None, "oracle": None}
    for i in range(1, 100):
        for name, test in (("mixture", mixture), ("oracle", oracle)):
            test.update(1, 1, 0.1) if i % 2 else test.update(1, 0, 0.1)
            if test.rejected and steps[name] is None:
                steps[name] = i
    assert steps["oracle"] is not None and steps["oracle"] <= steps["mixture"]


def test_state_round_trips():
    test = RatioEValue(1.25, 0.05)
    test.update(3, 1, 0.2)
    again = RatioEValue.from_state(test.state())
    assert again.e_value == test.e_value and again.events == test.events


# --- rules --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, metric, operator, limit", [
    ("error_rate < 0.02", "error_rate", "<", 0.02),
    ("error_5xx_rate<=0.01", "error_5xx_rate", "<=", 0.01),
    ("latency_p99_ms < 500", "latency_p99_ms", "<", 500),
    ("error_rate_ratio < 1.5", "error_rate_ratio", "<", 1.5),
    ("latency_p90_ratio < 1.2", "latency_p90_ratio", "<", 1.2),
])
def test_rules_parse(text, metric, operator, limit):
    rule = parse_rule(text)
    assert (rule.metric, rule.operator, rule.limit) == (metric, operator, limit)


@pytest.mark.parametrize("text, message", [
    ("error_rate", "is not METRIC OPERATOR NUMBER"),
    ("latency_p98_ms < 10", "unknown metric 'latency_p98_ms'"),
    ("error_rate > 0.01", "operator '>' not allowed"),
    ("error_rate < lots", "limit 'lots' is not a number"),
    ("error_rate < 2", "is a fraction of requests"),
    ("latency_p99_ms < -5", "must be a positive number"),
    ("error_rate < nan", "must be a positive number"),
    ("error_rate < 0.01 and latency_p99_ms < 5", "is not METRIC OPERATOR NUMBER"),
], ids=["no_operator", "unknown_metric", "wrong_operator", "not_a_number", "rate_above_one", "negative",
        "nan", "two_rules_in_one"])
def test_bad_rules_are_refused_naming_the_rule(text, message):
    with pytest.raises(RuleError) as raised:
        parse_rule(text)
    assert message in str(raised.value) and repr(text) in str(raised.value)


def test_absolute_and_ratio_rules_observe_their_metrics():
    target = Counts(requests=100, errors=4, buckets=buckets(90, 10))
    baseline = Counts(requests=100, errors=2, buckets=buckets(100, 0))
    assert observe(parse_rule("error_rate < 0.02"), target, baseline) == pytest.approx(0.04)
    assert observe(parse_rule("error_rate_ratio < 1.5"), target, baseline) == pytest.approx(2.0)
    assert observe(parse_rule("latency_p99_ms < 500"), target, baseline) > 100
    assert observe(parse_rule("error_rate < 0.02"), Counts(), baseline) is None  # no data is not a pass


def test_a_ratio_against_a_baseline_without_errors():
    clean = Counts(requests=100)
    assert observe(parse_rule("error_rate_ratio < 1.5"), clean, clean) == 1.0
    assert math.isinf(observe(parse_rule("error_rate_ratio < 1.5"), Counts(requests=10, errors=1), clean))


# --- the judges -----------------------------------------------------------------------------------

def test_sequential_judge_rolls_back_a_slower_target_against_the_baselines_p90():
    judge = SequentialJudge(0.05)
    judge.start_step(Counts(requests=1000, buckets=buckets(950, 50, slow_bound=0.01)))
    assert judge.slow_bound_s == 0.005
    for _ in range(10):
        judge.observe(Counts(requests=10, buckets=buckets(0, 10)), Counts(requests=90, buckets=buckets(85, 5, slow_bound=0.01)))
    assert judge.failure is not None and judge.failure.what == "latency" and judge.failure.e_value >= 20


def test_sequential_judge_fails_once_and_stays_failed():
    judge = SequentialJudge(0.05)
    for _ in range(5):
        judge.observe(Counts(requests=10, errors=3), Counts(requests=90))
    first = judge.failure
    judge.observe(Counts(requests=1000), Counts(requests=9000, errors=100))
    assert first is not None and judge.failure is first


def test_sequential_judge_checks_rules_on_the_step_so_far():
    judge = SequentialJudge(0.05, (parse_rule("error_rate < 0.02"),))
    step = (Counts(requests=100, errors=3), Counts(requests=900, errors=27))
    judge.check_interval(step, step, Counts())
    assert judge.failure.judge == "rule" and "error_rate = 0.03" in judge.failure.message


def test_threshold_judge_counts_failed_intervals_up_to_its_limit():
    judge = ThresholdJudge((parse_rule("error_rate < 0.05"),), failure_limit=2)
    bad = (Counts(requests=100, errors=10), Counts(requests=100))
    judge.check_interval(bad, bad, Counts())
    assert judge.failure is None and not judge.interval_ok
    good = (Counts(requests=100), Counts(requests=100))
    judge.check_interval(good, good, Counts())
    assert judge.interval_ok  # a good interval does not reset the failed checks
    judge.check_interval(bad, bad, Counts())
    assert judge.failure is not None and "failed checks 2 of 2" in judge.failure.message


def test_threshold_judge_never_passes_an_interval_without_data():
    judge = ThresholdJudge()
    empty = (Counts(), Counts(requests=100))
    judge.check_interval(empty, empty, Counts())
    assert not judge.interval_ok and judge.failure is None


def test_histogram_percentiles():
    counts = Counts(requests=100, buckets=buckets(90, 10))
    assert counts.percentile_ms(50) == pytest.approx(2.5 + 2.5 * 50 / 90)
    assert 100 < counts.percentile_ms(99) <= 250
    assert counts.bound_at_percentile(90) == 0.005 and counts.bound_at_percentile(95) == 0.25


def test_mirrored_copies_without_latency_do_not_count_as_fast():
    """The runtime does not time mirror copies: a window of them says nothing about slow requests."""
    judge = SequentialJudge(0.05)
    judge.start_step(Counts(requests=1000, buckets=buckets(900, 100, slow_bound=0.01)))
    for _ in range(50):
        judge.observe(Counts(requests=20), Counts(requests=80, buckets=buckets(70, 10, slow_bound=0.01)))
    assert judge.slow.e_value == 1.0 and judge.slow.events == (0, 0)


def test_at_100_percent_the_target_is_judged_against_the_baselines_rate_before_the_step():
    judge = SequentialJudge(0.05)
    judge.start_step(Counts(requests=2000, errors=20, buckets=buckets(1800, 200, slow_bound=0.01)))
    for _ in range(20):
        judge.observe(Counts(requests=50, errors=1, buckets=buckets(45, 5, slow_bound=0.01)), Counts())
    assert judge.failure is None  # the baseline's own 1 % errors and 10 % slow requests are fine
    for _ in range(10):
        judge.observe(Counts(requests=50, errors=10, buckets=buckets(45, 5, slow_bound=0.01)), Counts())
    assert judge.failure is not None and judge.failure.what == "error rate"
    assert "the baseline did not share" in judge.failure.message


def test_a_a_at_100_percent_stays_below_alpha():
    rng = random.Random(5)
    rejected = 0
    for _ in range(300):
        judge = SequentialJudge(0.05)
        history = 3000
        judge.start_step(Counts(requests=history, errors=binomial(rng, history, 0.02)))
        for _ in range(60):
            judge.observe(Counts(requests=50, errors=binomial(rng, 50, 0.02)), Counts())
        rejected += judge.failure is not None
    assert rejected / 300 <= 0.05
