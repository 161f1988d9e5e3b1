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

Then the answer judges (rollout/answer_judge.py) on targets that are healthy and fast but answer wrong
(a constant; 5 % of answers off by 50 %; every output +10 %) and on targets that should pass (A/A; off
by at most 0.5 % with a 1 % tolerance). The baseline's output is a regression value, log-normal
(median 100, sigma 0.3):

- with a mirror phase (--mirror % mirrored for --mirror-for s, then the live steps): how often the
  disagreement test rolls back while the target is still dark, the mirrored pairs it needed, the client
  requests the target served (0 when caught in the mirror); oracle: the SPRT of a disagreement rate
  that knows the true rate;
- live steps only: the distribution test (answer judge), a two-sample Kolmogorov-Smirnov test at
  each interval end at level alpha (the fixed-sample alternative), and an oracle SPRT that knows both
  output densities (the floor for any test on the outputs).
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

from mlcanary.components.answer_compare import Tolerance, settings_from  # noqa: E402
from mlcanary.rollout.answer_judge import AnswerJudge, AnswerOptions, AnswerWindow  # noqa: E402
from mlcanary.rollout.counts import LATENCY_BOUNDS, Counts  # noqa: E402
from mlcanary.rollout.evalue import RateEValue, sprt  # noqa: E402
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


# --- the answer judges ----------------------------------------------------------------------------------

OUTPUT_MEDIAN, OUTPUT_SIGMA = 100.0, 0.3
ANSWER_TOLERANCE = Tolerance(0.01, 0.0)
MAX_DISAGREEMENT = 0.01


@dataclass
class AnswerScenario:
    name: str
    kind: str  # same | within | constant | off | shift
    bad: bool


ANSWER_SCENARIOS = (
    AnswerScenario("A/A (same answers)", "same", False),
    AnswerScenario("within 1 % tolerance", "within", False),
    AnswerScenario("constant answer", "constant", True),
    AnswerScenario("5 % off by 50 %", "off", True),
    AnswerScenario("output +10 %", "shift", True),
)


def baseline_outputs(rng, n: int) -> np.ndarray:
    return OUTPUT_MEDIAN * np.exp(OUTPUT_SIGMA * rng.standard_normal(n))


def target_answers(rng, kind: str, y: np.ndarray) -> np.ndarray:
    """The target's answers to the inputs whose right answers are `y`."""
    if kind == "within":
        return y * (1 + rng.uniform(-0.005, 0.005, len(y)))
    if kind == "constant":
        return np.full(len(y), OUTPUT_MEDIAN)
    if kind == "off":
        return np.where(rng.random(len(y)) < 0.05, y * 1.5, y)
    if kind == "shift":
        return y * 1.1
    return y


def disagree(y: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.abs(t - y) > np.maximum(ANSWER_TOLERANCE.absolute, ANSWER_TOLERANCE.relative * np.maximum(np.abs(t), np.abs(y)))


def lognormal_pdf(v: np.ndarray, scale: float = 1.0) -> np.ndarray:
    z = (np.log(v / (OUTPUT_MEDIAN * scale))) / OUTPUT_SIGMA
    return np.exp(-z * z / 2) / (v * OUTPUT_SIGMA * math.sqrt(2 * math.pi))


def target_pdf(kind: str, v: np.ndarray) -> np.ndarray:
    """The true density of the target's outputs (the oracle's knowledge); a constant has none."""
    if kind == "off":
        return 0.95 * lognormal_pdf(v) + 0.05 * lognormal_pdf(v, 1.5)
    if kind == "shift":
        return lognormal_pdf(v, 1.1)
    if kind == "within":  # y * U(0.995, 1.005): close enough to the baseline's for the oracle's purpose
        return lognormal_pdf(v)
    return lognormal_pdf(v)


def ks_rejects(a: np.ndarray, b: np.ndarray, alpha: float) -> bool:
    """Two-sample Kolmogorov-Smirnov test, asymptotic p-value (Kolmogorov's distribution)."""
    if len(a) < 5 or len(b) < 5:
        return False
    both = np.sort(np.concatenate([a, b]))
    d = np.max(np.abs(np.searchsorted(np.sort(a), both, "right") / len(a) - np.searchsorted(np.sort(b), both, "right") / len(b)))
    n = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(1.0, max(0.0, p)) < alpha


@dataclass
class AnswerOutcome:
    rolled_back: bool = False
    in_mirror: bool = False
    mirrored: int = 0  # mirrored pairs compared before the rollback (mirror phase)
    served: int = 0  # client requests the target served before the rollback


def simulate_answers(rng, scenario: AnswerScenario, args, with_mirror: bool, p_disagree: float) -> dict[str, AnswerOutcome]:
    judge = AnswerJudge(AnswerOptions(settings_from("$", str(ANSWER_TOLERANCE.relative)), MAX_DISAGREEMENT, args.alpha))
    outcomes = {name: AnswerOutcome() for name in ("sequential", "KS/interval", "oracle")}
    oracle_mirror = RateEValue(args.alpha, (p_disagree / MAX_DISAGREEMENT,)) if p_disagree > MAX_DISAGREEMENT else None
    oracle_log_lr = 0.0
    if with_mirror:
        judge.start_step(mirror_step=True)
        mirrored = 0
        for _ in range(args.mirror_for):
            y = baseline_outputs(rng, rng.poisson(args.rps))  # every live answer is the baseline's
            pairs = y[rng.random(len(y)) < args.mirror / 100]
            bad = int(disagree(pairs, target_answers(rng, scenario.kind, pairs)).sum())
            mirrored += len(pairs)
            if not outcomes["sequential"].rolled_back:
                judge.observe(AnswerWindow(len(pairs), len(pairs) - bad, baseline_outputs=tuple(y)))
                if judge.failure:
                    outcomes["sequential"] = AnswerOutcome(True, True, mirrored)
            if oracle_mirror is not None and not outcomes["oracle"].rolled_back:
                oracle_mirror.update(bad, len(pairs), MAX_DISAGREEMENT)
                if oracle_mirror.e_value >= 1 / args.alpha:
                    outcomes["oracle"] = AnswerOutcome(True, True, mirrored)
        outcomes["KS/interval"] = AnswerOutcome()  # no pairs for it: it starts at the live steps
    served = 0
    for percent in STEPS:
        share = percent / 100
        if share < 1:
            judge.start_step(mirror_step=False)
        interval_t, interval_b = [], []
        for _ in range(args.interval):
            n_t, n_b = rng.poisson(args.rps * share), rng.poisson(args.rps * (1 - share))
            t = target_answers(rng, scenario.kind, baseline_outputs(rng, n_t))
            b = baseline_outputs(rng, n_b)
            served += n_t
            interval_t.append(t)
            interval_b.append(b)
            if not outcomes["sequential"].rolled_back:
                judge.observe(AnswerWindow(target_outputs=tuple(t), baseline_outputs=tuple(b)))
                if judge.failure:
                    outcomes["sequential"] = AnswerOutcome(True, False, 0, served)
            if not outcomes["oracle"].rolled_back and scenario.bad and n_t and n_b:
                rho = n_t / (n_t + n_b)
                if scenario.kind == "constant":
                    oracle_log_lr = math.inf  # an output the baseline never gives: certain
                else:
                    ft_t, fb_t = target_pdf(scenario.kind, t), lognormal_pdf(t)
                    ft_b, fb_b = target_pdf(scenario.kind, b), lognormal_pdf(b)
                    oracle_log_lr += float(np.sum(np.log(ft_t / (rho * ft_t + (1 - rho) * fb_t))))
                    oracle_log_lr += float(np.sum(np.log(fb_b / (rho * ft_b + (1 - rho) * fb_b))))
                if oracle_log_lr >= math.log(1 / args.alpha):
                    outcomes["oracle"] = AnswerOutcome(True, False, 0, served)
            if all(o.rolled_back for o in outcomes.values()):
                return outcomes
        if share < 1 and not outcomes["KS/interval"].rolled_back:
            if ks_rejects(np.concatenate(interval_t), np.concatenate(interval_b), args.alpha):
                outcomes["KS/interval"] = AnswerOutcome(True, False, 0, served)
    for outcome in outcomes.values():
        if not outcome.rolled_back:
            outcome.served = served
    return outcomes


def answer_benchmark(rng, args) -> None:
    print(f"\nanswer judges: {args.answer_runs} rollouts per scenario; baseline output log-normal (median "
          f"{OUTPUT_MEDIAN:g}, sigma {OUTPUT_SIGMA}); tolerance {ANSWER_TOLERANCE}, max disagreement "
          f"{100 * MAX_DISAGREEMENT:g} %; alpha {args.alpha}")
    started = time.perf_counter()
    for with_mirror in (True, False):
        title = (f"with a mirror phase ({args.mirror} % mirrored for {args.mirror_for} s), then live steps"
                 if with_mirror else "live steps only (no mirror phase)")
        print(f"\n{title}")
        columns = (("rolled back in mirror", "mirrored pairs", "client requests", "oracle pairs", "seq / oracle")
                   if with_mirror else ("sequential", "KS/interval", "oracle", "seq / oracle", "seq / KS"))
        print(f"{'scenario':24}" + "".join(f"{c:>26}" for c in columns))
        for scenario in ANSWER_SCENARIOS:
            y = baseline_outputs(rng, 200_000)
            p_disagree = float(disagree(y, target_answers(rng, scenario.kind, y)).mean())
            results = [simulate_answers(rng, scenario, args, with_mirror, p_disagree) for _ in range(args.answer_runs)]
            rate = lambda name: np.mean([r[name].rolled_back for r in results])  # noqa: E731
            mean = lambda name, attr: float(np.mean([getattr(r[name], attr) for r in results]))  # noqa: E731
            if not scenario.bad:
                cells = ([f"false {100 * np.mean([r['sequential'].in_mirror for r in results]):.1f} %",
                          "-", f"false in all {100 * rate('sequential'):.1f} %", "-", "-"] if with_mirror else
                         [f"false {100 * rate('sequential'):.1f} %", f"false {100 * rate('KS/interval'):.1f} %", "-", "-", "-"])
            elif with_mirror:
                in_mirror = np.mean([r["sequential"].in_mirror for r in results])
                caught = [r["sequential"].mirrored for r in results if r["sequential"].in_mirror]
                oracle = [r["oracle"].mirrored for r in results if r["oracle"].in_mirror]
                seq_pairs, oracle_pairs = (np.mean(caught) if caught else math.nan), (np.mean(oracle) if oracle else math.nan)
                cells = [f"{100 * in_mirror:.0f} %", f"{seq_pairs:.0f}", f"{mean('sequential', 'served'):.0f}",
                         f"{oracle_pairs:.0f}", f"{seq_pairs / oracle_pairs:.2f}"]
            else:
                seq, ks, orc = mean("sequential", "served"), mean("KS/interval", "served"), mean("oracle", "served")
                cells = [f"{seq:.0f} req ({100 * rate('sequential'):.0f} %)", f"{ks:.0f} req ({100 * rate('KS/interval'):.0f} %)",
                         f"{orc:.0f} req", f"{seq / max(orc, 1):.2f}", f"{seq / max(ks, 1):.2f}"]
            print(f"{scenario.name:24}" + "".join(f"{c:>26}" for c in cells))
    print("\n(mirrored pairs / client requests: means over the runs caught; a run never caught counts everything it served)")
    print(f"answer rollouts in {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="rollouts per scenario")
    parser.add_argument("--rps", type=int, default=50)
    parser.add_argument("--interval", type=int, default=30, help="seconds per step")
    parser.add_argument("--error-rate", type=float, default=0.01, help="the baseline's error rate")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--answer-runs", type=int, default=200, help="rollouts per answer scenario")
    parser.add_argument("--mirror", type=int, default=10, help="answer judges: %% of live traffic mirrored")
    parser.add_argument("--mirror-for", type=int, default=60, help="answer judges: seconds of the mirror phase")
    parser.add_argument("--only", choices=("errors", "answers"), help="run one of the two benchmarks")
    args = parser.parse_args()
    if args.only == "answers":
        answer_benchmark(np.random.default_rng(args.seed), args)
        return
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
    if args.only != "errors":
        answer_benchmark(rng, args)


if __name__ == "__main__":
    main()
