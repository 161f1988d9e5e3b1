"""The rollout judges on simulated request streams: thousands of rollouts in seconds, no servers.

A rollout: steps 10/25/50/100 % of --rps requests/s, each held --interval seconds. The baseline fails
--error-rate of its requests and answers in a log-normal latency (median 50 ms); its p90 is measured
over five minutes before the rollout. Every judge sees the same streams:

- sequential: the default judge, fed a closed window every second (checked every second);
- threshold: Flagger's check once per interval, rolling back at the first failed check (Flagger's
  default threshold of 1), with limits a user would write (error_rate < 2x the baseline's, p99 < 1.25x
  the baseline's);
- threshold/1s: the same check every second, to show what looking often does to it;
- calibrated: the same per-interval check with limits raised until its A/A false rollbacks are at
  most alpha (found by simulation first): the fair comparison for the sequential judge;
- oracle SPRT: a one-sided SPRT that knows the true effect (the floor for any test of it).

Printed: false rollbacks of an A/A rollout (target = baseline) per judge, and requests served to a bad
target before rollback (x2, x5, x30 error rate, +50 % latency), with ratios against threshold and oracle.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlcanary.rollout.counts import LATENCY_BOUNDS, Counts  # noqa: E402
from mlcanary.rollout.evalue import sprt  # noqa: E402
from mlcanary.rollout.judges import ERROR_TOLERANCE, SLOW_TOLERANCE, SequentialJudge, ThresholdJudge  # noqa: E402
from mlcanary.components.rollout_rules import parse_rule  # noqa: E402

STEPS = (10, 25, 50, 100)
JUDGES = ("sequential", "threshold", "threshold/1s", "calibrated", "oracle SPRT")
MEDIAN_S, SIGMA = 0.050, 0.5


def bucket_probabilities(scale: float) -> np.ndarray:
    """P(latency in each histogram bucket) for log-normal latency with median MEDIAN_S * scale."""
    from statistics import NormalDist

    cdf = [NormalDist().cdf(math.log(b / (MEDIAN_S * scale)) / SIGMA) if math.isfinite(b) else 1.0 for b in LATENCY_BOUNDS]
    return np.diff([0.0, *cdf])


def slow_share(scale: float, bound: float) -> float:
    from statistics import NormalDist

    return 1 - NormalDist().cdf(math.log(bound / (MEDIAN_S * scale)) / SIGMA)


@dataclass
class Scenario:
    name: str
    error_ratio: float = 1.0
    latency_scale: float = 1.0


@dataclass
class Outcome:
    rolled_back: bool = False
    served: int = 0  # target requests up to and including the window of the rollback


def simulate(rng, scenario: Scenario, args, base_probs, target_probs, slow_bound, p99_ms,
             calibrated: tuple[float, float]) -> dict[str, Outcome]:
    history = args.rps * 300
    baseline_history = Counts(history, rng.binomial(history, args.error_rate), 0,
                              tuple(rng.multinomial(history, base_probs)))
    sequential = SequentialJudge(args.alpha)
    sequential.start_step(baseline_history)
    rules = (parse_rule(f"error_rate < {2 * args.error_rate}"), parse_rule(f"latency_p99_ms < {1.25 * p99_ms:.1f}"))
    threshold, threshold_1s = ThresholdJudge(rules), ThresholdJudge(rules)
    fair = ThresholdJudge(tuple(parse_rule(r) for r in (f"error_rate < {calibrated[0]}",
                                                           f"latency_p99_ms < {calibrated[1]:.1f}") if r))
    true_error_ratio = scenario.error_ratio
    true_slow_ratio = slow_share(scenario.latency_scale, slow_bound) / slow_share(1.0, slow_bound)
    oracle = None
    if true_error_ratio > ERROR_TOLERANCE:
        oracle = ("errors", sprt(true_error_ratio, ERROR_TOLERANCE, args.alpha))
    elif true_slow_ratio > SLOW_TOLERANCE:
        oracle = ("slow", sprt(true_slow_ratio, SLOW_TOLERANCE, args.alpha))
    outcomes = {name: Outcome() for name in JUDGES}
    target_error = min(1.0, args.error_rate * scenario.error_ratio)
    served = 0
    for percent in STEPS:
        share = percent / 100
        interval_t, interval_b = Counts(), Counts()
        for second in range(args.interval):
            n_t, n_b = rng.poisson(args.rps * share), rng.poisson(args.rps * (1 - share))
            t = Counts(n_t, rng.binomial(n_t, target_error), 0, tuple(rng.multinomial(n_t, target_probs)))
            b = Counts(n_b, rng.binomial(n_b, args.error_rate), 0, tuple(rng.multinomial(n_b, base_probs)))
            served += n_t
            interval_t, interval_b = interval_t + t, interval_b + b
            live = [name for name, o in outcomes.items() if not o.rolled_back]
            if not live:
                return outcomes
            if "sequential" in live:
                sequential.observe(t, b)
                if sequential.failure:
                    outcomes["sequential"] = Outcome(True, served)
            if "threshold/1s" in live:
                threshold_1s.check_interval((t, b), (t, b), baseline_history)
                if threshold_1s.failure:
                    outcomes["threshold/1s"] = Outcome(True, served)
            if "oracle SPRT" in live and oracle is not None and n_t + n_b and n_b:
                kind, test = oracle
                if kind == "errors":
                    test.update(t.errors, b.errors, n_t / (n_t + n_b))
                else:
                    test.update(t.slower_than(slow_bound), b.slower_than(slow_bound), n_t / (n_t + n_b))
                if test.rejected:
                    outcomes["oracle SPRT"] = Outcome(True, served)
        for name, judge in (("threshold", threshold), ("calibrated", fair)):
            if not outcomes[name].rolled_back:
                judge.check_interval((interval_t, interval_b), (interval_t, interval_b), baseline_history)
                if judge.failure:
                    outcomes[name] = Outcome(True, served)
    for outcome in outcomes.values():
        if not outcome.rolled_back:
            outcome.served = served
    return outcomes


def calibrate(rng, args, base_probs, p99_ms) -> tuple[float, float]:
    """The smallest per-interval limits whose A/A false-rollback rate is at most alpha/2 each (so at
    most alpha together), found on A/A rollouts of their own."""
    error_limits = (0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)
    p99_multiples = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)
    runs = max(200, args.runs // 2)
    error_fails, latency_fails = [0] * len(error_limits), [0] * len(p99_multiples)
    for _ in range(runs):
        error_judges = [ThresholdJudge((parse_rule(f"error_rate < {limit}"),)) for limit in error_limits]
        latency_judges = [ThresholdJudge((parse_rule(f"latency_p99_ms < {m * p99_ms:.1f}"),)) for m in p99_multiples]
        for percent in STEPS:
            n_t = rng.poisson(args.rps * percent / 100 * args.interval)
            t = Counts(n_t, rng.binomial(n_t, args.error_rate), 0, tuple(rng.multinomial(n_t, base_probs)))
            for judge in (*error_judges, *latency_judges):
                if judge.failure is None:
                    judge.check_interval((t, Counts()), (t, Counts()), Counts())
        for i, judge in enumerate(error_judges):
            error_fails[i] += judge.failure is not None
        for i, judge in enumerate(latency_judges):
            latency_fails[i] += judge.failure is not None
    error = next((l for l, f in zip(error_limits, error_fails) if f / runs <= args.alpha / 2), error_limits[-1])
    multiple = next((m for m, f in zip(p99_multiples, latency_fails) if f / runs <= args.alpha / 2), p99_multiples[-1])
    return error, multiple * p99_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="rollouts per scenario")
    parser.add_argument("--rps", type=int, default=50)
    parser.add_argument("--interval", type=int, default=30, help="seconds per step")
    parser.add_argument("--error-rate", type=float, default=0.01, help="the baseline's error rate")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    base_probs = bucket_probabilities(1.0)
    slow_bound = Counts(requests=10**6, buckets=tuple(np.round(base_probs * 10**6).astype(int))).bound_at_percentile(90)
    p99_ms = Counts(requests=10**6, buckets=tuple(np.round(base_probs * 10**6).astype(int))).percentile_ms(99)
    scenarios = [Scenario("A/A (target = baseline)"), Scenario("errors x2", 2.0), Scenario("errors x5", 5.0),
                 Scenario("errors x30", 30.0), Scenario("latency +50 %", latency_scale=1.5)]
    started = time.perf_counter()
    print(f"{args.runs} rollouts per scenario; steps {'/'.join(map(str, STEPS))} % of {args.rps} req/s, "
          f"{args.interval} s each; baseline errors {100 * args.error_rate:g} %, p90 bound {1000 * slow_bound:g} ms, "
          f"p99 {p99_ms:.0f} ms; alpha {args.alpha}")
    calibrated = calibrate(rng, args, base_probs, p99_ms)
    print(f"calibrated threshold limits (A/A false rollbacks <= alpha): error_rate < {calibrated[0]:g}, "
          f"latency_p99_ms < {calibrated[1]:.0f}")
    judges = JUDGES
    print(f"\n{'scenario':24}" + "".join(f"{j:>25}" for j in judges))
    summary = {}
    for scenario in scenarios:
        target_probs = bucket_probabilities(scenario.latency_scale)
        results = {j: [] for j in judges}
        for _ in range(args.runs):
            outcomes = simulate(rng, scenario, args, base_probs, target_probs, slow_bound, p99_ms, calibrated)
            for name, outcome in outcomes.items():
                results[name].append(outcome)
        cells, summary[scenario.name] = [], {}
        for j in judges:
            rolled = [o for o in results[j] if o.rolled_back]
            rate = len(rolled) / args.runs
            if scenario.error_ratio == 1.0 and scenario.latency_scale == 1.0:
                cell = "-" if j == "oracle SPRT" else f"false rollbacks {100 * rate:.1f} %"
            else:
                mean = np.mean([o.served for o in results[j]])
                cell = f"{mean:.0f} req ({100 * rate:.0f} % caught)"
                summary[scenario.name][j] = mean
            cells.append(cell)
        print(f"{scenario.name:24}" + "".join(f"{c:>25}" for c in cells))
    print("\nrequests served to a bad target before rollback (mean; a run never caught counts everything it served):")
    for name, means in summary.items():
        if not means:
            continue
        line = (f"  {name:16} sequential / threshold = {means['sequential'] / means['threshold']:.2f}"
                f"   sequential / calibrated threshold = {means['sequential'] / means['calibrated']:.2f}")
        if "oracle SPRT" in means:
            line += f"   sequential / oracle SPRT = {means['sequential'] / means['oracle SPRT']:.2f}"
        print(line)
    print(f"\n{len(scenarios) * args.runs} rollouts in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
