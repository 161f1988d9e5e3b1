"""What a rule's metric measures (the rule grammar is components/rollout_rules.py): request metrics on a
window's counts, resource metrics on per-instance usage (mlcanary/rollout/resources.py)."""

from __future__ import annotations

import math

from mlcanary.components.rollout_rules import ANSWER_METRICS, RATES, Rule
from mlcanary.rollout.counts import Counts


def observe(rule: Rule, target: Counts, baseline: Counts) -> float | None:
    """The rule's metric for these counts; None when there is no data to judge it on (a resource rule
    is never judged on counts, nor an answer metric: the answer judge observes those)."""
    if rule.is_resource or rule.metric in ANSWER_METRICS:
        return None
    name = rule.metric.removesuffix("_ratio")
    return _ratio(rule, _metric(name, target), lambda: _metric(name, baseline))


def observe_resources(rule: Rule, target: dict[str, float], baseline: dict[str, float]) -> float | None:
    """A resource rule on per-instance usage ({'memory_mb': ..., 'cpu_percent': ...}); None without data."""
    name = rule.metric.removesuffix("_ratio")
    return _ratio(rule, target.get(name), lambda: baseline.get(name))


def _ratio(rule: Rule, value: float | None, baseline) -> float | None:
    if not rule.is_ratio or value is None:
        return value
    base = baseline()
    if base is None:
        return None
    if base == 0:
        return 1.0 if value == 0 else math.inf  # nothing to scale by: any error against none fails
    return value / base


def _metric(name: str, counts: Counts) -> float | None:
    if name in RATES:
        return counts.rate(name)
    if not counts.requests:
        return None
    return counts.percentile_ms(int(name.removeprefix("latency_p").removesuffix("_ms")))
