"""What a rule's metric measures on a window's counts (the rule grammar is components/rollout_rules.py)."""

from __future__ import annotations

import math

from mlcanary.components.rollout_rules import ANSWER_METRICS, RATES, Rule
from mlcanary.rollout.counts import Counts


def observe(rule: Rule, target: Counts, baseline: Counts) -> float | None:
    """The rule's metric for these counts; None when there is no data to judge it on (always for an
    answer metric: the answer judge observes those)."""
    if rule.metric in ANSWER_METRICS:
        return None
    value = _metric(rule.metric.removesuffix("_ratio"), target)
    if not rule.is_ratio or value is None:
        return value
    base = _metric(rule.metric.removesuffix("_ratio"), baseline)
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
