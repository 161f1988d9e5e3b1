"""The judges of a canary step: `sequential` (anytime-valid, default) and `threshold` (Flagger's).

A judge sees closed windows of the target's and the baseline's counts (`observe`, as often as the
source closes windows) and, at the end of each interval, the interval's and the step's counts
(`check_interval`). Once it has failed it stays failed: failures are cumulative per rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlcanary.components.rollout_rules import ANSWER_METRICS, Rule, parse_rule
from mlcanary.rollout.counts import LATENCY_BOUNDS, Counts
from mlcanary.rollout.evalue import RatioEValue, RateEValue, reference_rate
from mlcanary.rollout.rules import observe

# The default "not worse than the baseline": H0 is r <= r0, so a target within these ratios of the
# baseline is not rolled back; one clearly above them is, with at most alpha false rollbacks.
ERROR_TOLERANCE = 1.25  # error rate up to 1.25x the baseline's
SLOW_TOLERANCE = 1.25  # share of requests slower than the baseline's p90 up to 1.25x the baseline's (12.5 % vs 10 %)
LATENCY_PERCENTILE = 90
# Flagger's built-in checks: request success rate >= 99 %, request duration p99 < 500 ms.
FLAGGER_DEFAULT_RULES = (parse_rule("error_rate < 0.01"), parse_rule("latency_p99_ms < 500"))


@dataclass(frozen=True)
class Failure:
    judge: str  # "sequential", "threshold" or "rule"
    what: str  # "error rate", "latency", or the rule
    message: str  # observed values
    e_value: float | None = None

    def as_json(self) -> dict:
        return {"judge": self.judge, "what": self.what, "message": self.message, "eValue": self.e_value}


def _ms(value: float | None) -> str:
    return "no data" if value is None else f"{value:.1f} ms"


def _rate(value: float | None) -> str:
    return "no data" if value is None else f"{100 * value:.2f} %"


def check_rules(rules: tuple[Rule, ...], target: Counts, baseline: Counts) -> list[tuple[Rule, float]]:
    """The rules that fail on these counts, with the observed value; a rule without data is not judged."""
    failed = []
    for rule in rules:
        observed = observe(rule, target, baseline)
        if observed is not None and not rule.holds(observed):
            failed.append((rule, observed))
    return failed


def _rule_failure(judge: str, failed: list[tuple[Rule, float]]) -> Failure:
    return Failure(judge, "; ".join(str(rule) for rule, _ in failed),
                   "; ".join(f"{rule.metric} = {value:.4g} (limit {rule.operator} {rule.limit:g})" for rule, value in failed))


class SequentialJudge:
    """Error counts and slow counts of target vs baseline, each an e-value test; rules on top."""

    name = "sequential"

    def __init__(self, alpha: float, rules: tuple[Rule, ...] = ()):
        self.rules = rules
        self.alpha = alpha
        self.errors = RatioEValue(ERROR_TOLERANCE, alpha)
        self.slow = RatioEValue(SLOW_TOLERANCE, alpha)
        # Windows the baseline did not serve: the target's errors alone against the baseline's error rate
        # before the step. Not latency: it moves with load and neighbours, so only a baseline measured
        # at the same time is a fair reference for it.
        self.errors_alone = RateEValue(alpha)
        self.reference_error_rate: float | None = None
        self.slow_bound_s: float | None = None
        self.failure: Failure | None = None
        self.interval_ok = False

    def start_step(self, baseline_before: Counts) -> None:
        """Fix this step's latency threshold: the baseline's p90 (as a histogram bound) so far."""
        bound = baseline_before.bound_at_percentile(LATENCY_PERCENTILE)
        if bound is not None:
            self.slow_bound_s = bound
        self.reference_error_rate = reference_rate(baseline_before.errors, baseline_before.requests, ERROR_TOLERANCE)

    def observe(self, target: Counts, baseline: Counts) -> None:
        if self.failure is not None or not target.requests + baseline.requests:
            return
        share = target.requests / (target.requests + baseline.requests)
        # Only requests with a latency count as slow or not: mirrored copies are not timed by the runtime.
        timed = sum(target.buckets) == target.requests and sum(baseline.buckets) == baseline.requests
        slow_target = target.slower_than(self.slow_bound_s) if self.slow_bound_s is not None and timed else None
        if baseline.requests:
            self.errors.update(target.errors, baseline.errors, share)
            if slow_target is not None:
                self.slow.update(slow_target, baseline.slower_than(self.slow_bound_s), share)
        elif self.reference_error_rate is not None:
            self.errors_alone.update(target.errors, target.requests, self.reference_error_rate)
        values = self.e_values()
        if values["errors"] >= 1 / self.alpha:
            t, b = self.errors.events
            alone = self.errors_alone.events
            self.failure = Failure(self.name, "error rate",
                                   f"target errors {t + alone[0]}, baseline errors {b}"
                                   + (f" (of them {alone[0]} in {alone[1]} requests the baseline did not share)" if alone[1] else "")
                                   + f": the target's error rate is above {ERROR_TOLERANCE:g}x the baseline's", values["errors"])
        elif values["latency"] >= 1 / self.alpha:
            t, b = self.slow.events
            self.failure = Failure(self.name, "latency",
                                   f"requests slower than {1000 * self.slow_bound_s:g} ms (the baseline's p90): "
                                   f"target {t}, baseline {b}; the target's share is above {SLOW_TOLERANCE:g}x "
                                   "the baseline's", values["latency"])

    def check_interval(self, interval: tuple[Counts, Counts], step: tuple[Counts, Counts],
                       rollout_baseline: Counts) -> None:
        """Rules on the step's counts so far; ratios against the baseline over the rollout."""
        if self.failure is not None:
            return
        failed = check_rules(self.rules, step[0], step[1] if step[1].requests else rollout_baseline)
        if failed:
            self.failure = _rule_failure("rule", failed)
        self.interval_ok = self.failure is None

    def e_values(self) -> dict[str, float]:
        return {"errors": self.errors.e_value * self.errors_alone.e_value,
                "latency": self.slow.e_value}

    def step_setup(self) -> dict:
        """What this step's windows are judged against, kept with each judged window of the record."""
        return {"slowBoundS": self.slow_bound_s, "referenceErrorRate": self.reference_error_rate}

    def replay_window(self, fold: dict, target: Counts, baseline: Counts) -> None:
        """Fold a recorded window in again, against the thresholds its step was judged with."""
        bound, reference = fold.get("slowBoundS"), fold.get("referenceErrorRate")
        if bound is not None and bound not in LATENCY_BOUNDS[:-1]:
            raise ValueError(f"slowBoundS {bound!r} is not a latency histogram bound")
        if reference is not None and not (isinstance(reference, float) and 0 < reference <= 0.99):
            raise ValueError(f"referenceErrorRate {reference!r} is not a rate above 0 and at most 0.99")
        self.slow_bound_s, self.reference_error_rate = bound, reference
        self.observe(target, baseline)

    def interval_record(self) -> dict:
        return {}

    def replay_interval(self, entry: dict) -> None:
        pass  # an interval check of this judge only ever fails the rollout (a rule), which then ends

    def restored(self) -> str:
        values = self.e_values()
        return (f"e(errors) {values['errors']:.3g}, e(latency) {values['latency']:.3g} (rolls back at {1 / self.alpha:g}); "
                f"errors folded: target {self.errors.events[0] + self.errors_alone.events[0]}, "
                f"baseline {self.errors.events[1]}")

    def state(self) -> dict:
        return {"errors": self.errors.state(), "slow": self.slow.state(), "slowBoundS": self.slow_bound_s,
                "errorsAlone": self.errors_alone.state()}

    def load_state(self, state: dict) -> None:
        self.errors = RatioEValue.from_state(state["errors"])
        self.slow = RatioEValue.from_state(state["slow"])
        self.errors_alone = RateEValue.from_state(state["errorsAlone"])
        self.slow_bound_s = state["slowBoundS"]


class ThresholdJudge:
    """Flagger's analysis: each interval, every check on that interval's counts; a failed interval is one
    failed check; `failure_limit` failed checks (Flagger's `threshold`, default 1) roll back."""

    name = "threshold"

    def __init__(self, rules: tuple[Rule, ...] = (), failure_limit: int = 1):
        # Rules on the answers (output_agreement, ...) are the answer judge's: Flagger's checks stay unless
        # the user gave rules on the counts.
        counted = tuple(r for r in rules if r.metric not in ANSWER_METRICS)
        self.rules = rules if counted else (*rules, *FLAGGER_DEFAULT_RULES)
        self.failure_limit = failure_limit
        self.failed_checks = 0
        self.failure: Failure | None = None
        self.interval_ok = False

    def start_step(self, baseline_before: Counts) -> None:
        pass

    def observe(self, target: Counts, baseline: Counts) -> None:
        pass

    def check_interval(self, interval: tuple[Counts, Counts], step: tuple[Counts, Counts],
                       rollout_baseline: Counts) -> None:
        target, baseline = interval
        self.interval_ok = False
        if self.failure is not None or not target.requests:
            return
        failed = check_rules(self.rules, target, baseline if baseline.requests else rollout_baseline)
        if not failed:
            self.interval_ok = True
            return
        self.failed_checks += 1
        if self.failed_checks >= self.failure_limit:
            failure = _rule_failure(self.name, failed)
            self.failure = Failure(failure.judge, failure.what,
                                   f"{failure.message}; failed checks {self.failed_checks} of {self.failure_limit}")

    def e_values(self) -> dict[str, float]:
        return {}

    def step_setup(self) -> dict:
        return {}

    def replay_window(self, fold: dict, target: Counts, baseline: Counts) -> None:
        pass  # judged once per interval (replay_interval)

    def interval_record(self) -> dict:
        return {"failedChecks": self.failed_checks}

    def replay_interval(self, entry: dict) -> None:
        """A recorded interval check: one more failed check at most. The check that reached the limit was
        killed before its rollback was recorded: the resumed rollout rolls back."""
        checks = entry.get("failedChecks")
        if not isinstance(checks, int) or isinstance(checks, bool) or checks not in (
                self.failed_checks, self.failed_checks + 1) or checks > self.failure_limit:
            raise ValueError(f"failedChecks {checks!r} does not follow {self.failed_checks} "
                             f"(one failed check more at most, up to the limit {self.failure_limit})")
        self.failed_checks = checks
        if checks >= self.failure_limit:
            self.failure = Failure(self.name, "failed checks", f"failed checks {checks} of {self.failure_limit}, "
                                   "recorded before the rollout stopped")

    def restored(self) -> str:
        return f"failed checks {self.failed_checks}/{self.failure_limit}"

    def state(self) -> dict:
        return {"failedChecks": self.failed_checks}

    def load_state(self, state: dict) -> None:
        self.failed_checks = state["failedChecks"]


Judge = SequentialJudge | ThresholdJudge


def make_judge(kind: str, alpha: float, rules: tuple[Rule, ...], failure_limit: int) -> Judge:
    if kind == "threshold":
        return ThresholdJudge(rules, failure_limit)
    return SequentialJudge(alpha, rules)


def describe(counts: Counts) -> str:
    return f"{counts.requests} requests, error rate {_rate(counts.rate('error_rate'))}, p90 {_ms(counts.percentile_ms(90))}"
