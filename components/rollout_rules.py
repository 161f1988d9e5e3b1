"""The grammar of `--rule` (and `rule:` in `mlcanary:rollout`): an absolute or a ratio (target / baseline)
limit on one metric. What a rule's metric measures on a window's counts is mlcanary/rollout/rules.py.

    error_rate < 0.02        error_5xx_rate <= 0.01     latency_p99_ms < 500
    error_rate_ratio < 1.5   latency_p90_ratio < 1.2
    output_agreement >= 0.99 output_shift < 0.1      (what the model answers: rollout/answer_judge.py)
    memory_mb < 2048         memory_mb_ratio < 1.5      cpu_percent < 150    cpu_percent_ratio < 2

Resource metrics are per instance of a deployment (resident memory in MB; CPU in % of a core over the
last interval), measured by mlcanary/rollout/resources.py, not on request counts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

RATES = ("error_rate", "error_5xx_rate")
PERCENTILES = (50, 90, 95, 99)
RESOURCES = ("memory_mb", "cpu_percent")
ABSOLUTE = (*RATES, *(f"latency_p{q}_ms" for q in PERCENTILES), *RESOURCES)
RATIOS = (*(f"{m}_ratio" for m in RATES), *(f"latency_p{q}_ratio" for q in PERCENTILES),
          *(f"{m}_ratio" for m in RESOURCES))
# Judged on what the models answer, not on counts: the share of mirrored pairs that agreed (higher is
# better) and the shift of the target's output distribution from the baseline's (0..1).
ANSWER_METRICS = ("output_agreement", "output_shift")
HIGHER_IS_BETTER = ("output_agreement",)
METRICS = (*ABSOLUTE, *RATIOS, *ANSWER_METRICS)
OPERATORS = ("<", "<=")
_RULE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|<|>=|>|==|=)\s*([^\s]+)\s*$")


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    metric: str
    operator: str
    limit: float

    def __str__(self) -> str:
        return f"{self.metric} {self.operator} {self.limit:g}"

    @property
    def is_ratio(self) -> bool:
        return self.metric.endswith("_ratio")

    @property
    def is_resource(self) -> bool:
        """Judged on the deployments' processes or utilisation metrics, not on request counts."""
        return self.metric.removesuffix("_ratio") in RESOURCES

    def holds(self, observed: float) -> bool:
        return {"<": observed < self.limit, "<=": observed <= self.limit,
                ">": observed > self.limit, ">=": observed >= self.limit}[self.operator]


def parse_rule(text: str) -> Rule:
    """A rule, or RuleError naming the rule and what is allowed."""
    allowed = (f"METRIC < NUMBER or METRIC <= NUMBER (output_agreement > or >= NUMBER), "
               f"METRIC one of {', '.join(METRICS)}")
    match = _RULE.match(text) if isinstance(text, str) else None
    if match is None:
        raise RuleError(f"rule {text!r} is not METRIC OPERATOR NUMBER; allowed: {allowed}")
    metric, operator, number = match.groups()
    metric_name = metric
    if metric_name not in METRICS:
        raise RuleError(f"rule {text!r}: unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if metric_name in HIGHER_IS_BETTER:
        if operator not in (">", ">="):
            raise RuleError(f"rule {text!r}: {metric_name} is a share that should be high: use > or >=")
    elif operator not in OPERATORS:
        raise RuleError(f"rule {text!r}: operator {operator!r} not allowed; a rule states what is good: < or <=")
    try:
        limit = float(number)
    except ValueError:
        raise RuleError(f"rule {text!r}: limit {number!r} is not a number") from None
    if not math.isfinite(limit) or limit <= 0:
        raise RuleError(f"rule {text!r}: the limit must be a positive number, got {number}")
    if metric_name in (*RATES, *ANSWER_METRICS) and limit > 1:
        what = "a distance between distributions" if metric_name == "output_shift" else "a fraction of requests"
        raise RuleError(f"rule {text!r}: {metric_name} is {what} (0..1), got {number}")
    return Rule(metric_name, operator, limit)
