"""`mlcanary:rollout`: the plan of `mlcanary rollout`, kept in the stack config and reviewed like a stage.

The keys are the command's options in camelCase (`--min-requests` -> `minRequests`, `--rule` -> `rule`,
a list), except what the answers are compared on, one object `compare: {path, tolerance,
maxDisagreement}` (the flags --compare-path, --output-tolerance, --max-disagreement: COMPARE_OPTIONS);
command-line flags override them. The same model and checks validate both, so a bad value is refused
the same way whether it came from the config or a flag.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from mlcanary.components import answer_compare, rules
from mlcanary.components.rollout_rules import RuleError, parse_rule
from mlcanary.components.rules import Problem

DEFAULT_STEPS = (10, 25, 50, 100)
DEFAULTS = {"steps": DEFAULT_STEPS, "interval": "30s", "judge": "sequential", "alpha": 0.05, "minRequests": 100,
            "maxHold": 3, "failureLimit": 1, "deleteOld": False}
# The plan's numbers, bounded (inclusive): outside them a rollout cannot judge what it claims to (an alpha of
# 1e-300 never rolls back; a 1 ms interval with 1 request promotes on nothing; 1e9 holds never halt).
BOUNDS: dict[str, tuple[float, float, str]] = {
    "interval": (1.0, 86_400.0, "seconds"),
    "mirrorFor": (1.0, 86_400.0, "seconds"),
    "bake": (1.0, 7 * 86_400.0, "seconds"),
    "alpha": (0.001, 0.2, ""),
    "minRequests": (3, 1_000_000, ""),
    "maxHold": (0, 100, ""),
    "failureLimit": (1, 100, ""),
}
TICK_BOUNDS = (0.05, 60.0)  # seconds between readings of the metrics (`--tick`, no more than the interval)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h)?$")


def duration_seconds(value: Any) -> float | None:
    """`30s`, `2m`, `1h`, or a bare number of seconds -> seconds; None when it is none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not match:
        return None
    seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return seconds if seconds > 0 else None


def _listed(value: Any) -> Any:
    """A single rule (or step) may be given without a list."""
    return [value] if isinstance(value, str | int) and not isinstance(value, bool) else value


def _whole(value: Any) -> Any:
    number = rules.whole_number(value)
    return value if number is None else number


Whole = Annotated[int, Strict(), BeforeValidator(_whole)]


# `compare`'s keys -> the command-line options that set them.
COMPARE_OPTIONS = {"path": "--compare-path", "tolerance": "--output-tolerance", "maxDisagreement": "--max-disagreement"}


def _tolerance(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PydanticCustomError("tolerance_type", "must be a number (relative: 0.01 = 1 %) or a string: abs:0.5 "
                                                    "(absolute), 0.01,abs:1e-6 (both)")
    return value


class CompareSpec(BaseModel):
    """What of the answers is compared (rollout/answer_judge.py); comparing is on when `path` is set."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=False)

    path: str | None = None  # `$`, `predictions`, `$.result[0].score`
    tolerance: Annotated[str | float, BeforeValidator(_tolerance)] | None = None  # 0.01, "abs:0.5", "0.01,abs:1e-6"
    max_disagreement: float | None = None


class RolloutSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=False)

    to: str | None = None
    from_: str | None = Field(default=None, alias="from")
    steps: Annotated[list[Whole], BeforeValidator(_listed)] | None = None
    interval: str | float | None = None
    mirror: Whole | None = None
    mirror_for: str | float | None = None
    bake: str | float | None = None
    delete_old: bool | None = None
    rule: Annotated[list[str], BeforeValidator(_listed)] | None = None
    judge: Literal["sequential", "threshold"] | None = None
    alpha: float | None = None
    min_requests: Whole | None = None
    max_hold: Whole | None = None
    failure_limit: Whole | None = None
    compare: CompareSpec | None = None  # what the answers are judged on
    notify: Annotated[list[str], BeforeValidator(_listed)] | None = None  # webhooks told of every decision
    confirm_promotion: str | None = None  # a webhook that must answer 2xx before each promotion

    def get(self, key: str) -> Any:
        """A value by its camelCase key, else the command's default."""
        for name, info in type(self).model_fields.items():
            if info.alias == key:
                value = getattr(self, name)
                return DEFAULTS.get(key) if value is None else value
        raise KeyError(key)


def rollout_problems(
    plan: RolloutSpec, deployments: dict[str, Any], field: Callable[[str], str]
) -> list[Problem]:
    """Every rule of a rollout plan the types cannot express; `field` names a key for the message
    (a config path, or a command-line option)."""
    problems = []
    known = ", ".join(deployments) or "none"
    for key in ("to", "from"):
        name = plan.get(key)
        if name is not None and name not in deployments:
            problems.append(Problem(field(key), f"deployment {name!r} is not in this stage; deployments: {known}"))
    if plan.to is not None and plan.to == plan.from_:
        problems.append(Problem(field("from"), f"the baseline must be another deployment than the target {plan.to!r}"))
    steps = plan.get("steps")
    if not steps or any(not 1 <= s <= 100 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])) or steps[-1] != 100:
        problems.append(Problem(field("steps"), f"live percentages 1-100 for the target, increasing, ending at 100 "
                                               f"(e.g. 10,25,50,100), got {','.join(map(str, steps or []))}"))
    for key in ("interval", "mirrorFor", "bake"):
        value = plan.get(key)
        if value is not None and duration_seconds(value) is None:
            problems.append(Problem(field(key), f"a duration such as 30s, 2m or 1h (seconds if no unit), got {value!r}"))
        elif value is not None and not _within(key, duration_seconds(value)):
            problems.append(Problem(field(key), f"{_range(key)}, got {value!r}"))
    if (plan.mirror is None) != (plan.mirror_for is None):
        problems.append(Problem(field("mirror"), "mirror and mirrorFor go together: a share to mirror and for how long"))
    if plan.mirror is not None:
        problems += rules.integer_range_problems(field("mirror"), plan.mirror, 1, rules.MAX_MIRROR_PERCENT, "mirror share")
    alpha = plan.get("alpha")
    if not _within("alpha", alpha):
        problems.append(Problem(field("alpha"), f"the false-rollback bound is a probability, {_range('alpha')}, got {alpha}"))
    for key in ("minRequests", "maxHold", "failureLimit"):
        if not _within(key, plan.get(key)):
            problems.append(Problem(field(key), f"a whole number {_range(key)}, got {plan.get(key)}"))
    problems += _compare_problems(plan, field)
    for key, urls in (("notify", plan.notify or ()), ("confirmPromotion", [plan.confirm_promotion] if plan.confirm_promotion else ())):
        problems += [Problem(field(key), problem) for problem in map(webhook_url_problem, urls) if problem]
    for text in plan.get("rule") or ():
        try:
            parse_rule(text)
        except RuleError as err:
            problems.append(Problem(field("rule"), str(err)))
    return problems


def webhook_url_problem(url: str) -> str | None:
    """None for an http(s) URL with a host; else what is wrong, without the URL's path or query (a
    webhook URL often carries a token there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "must be an http:// or https:// URL; got something that is not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return f"must be an http:// or https:// URL with a host; got scheme {parts.scheme or 'none'!r}"
    return None


def _within(key: str, value: float) -> bool:
    low, high, _ = BOUNDS[key]
    return low <= value <= high


def _range(key: str) -> str:
    low, high, unit = BOUNDS[key]
    return f"from {_number(low)} to {_number(high)}" + (f" {unit}" if unit else "")


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def bounds_text() -> str:
    """The ranges, as the docs and --help state them."""
    return "; ".join(f"{key} {_range(key)}" for key in BOUNDS)


def _compare_problems(plan: RolloutSpec, field: Callable[[str], str]) -> list[Problem]:
    """`field` names `compare.path`, `compare.tolerance`, `compare.maxDisagreement`."""
    compare = plan.compare
    if compare is None:
        return []
    if compare.path is None:
        given = [key for key in ("tolerance", "maxDisagreement") if compare.model_dump(by_alias=True)[key] is not None]
        if not given:
            return [Problem(field("compare.path"), "required: what of the answers to compare ($ for the whole answer, "
                                                   "or a key such as predictions)")]
        return [Problem(field(f"compare.{key}"), f"needs a compare path ({COMPARE_OPTIONS['path']} or compare.path): "
                                                 "what of the answers to compare, $ for the whole answer") for key in given]
    problems = []
    for key, value, parse in (("path", compare.path, answer_compare.parse_path),
                              ("tolerance", compare.tolerance, answer_compare.parse_tolerance)):
        if value is not None:
            try:
                parse(value)
            except answer_compare.CompareError as err:
                problems.append(Problem(field(f"compare.{key}"), str(err)))
    share = compare.max_disagreement
    if share is not None and not 0 <= share < 1:
        problems.append(Problem(field("compare.maxDisagreement"), f"the share of compared answers allowed to disagree, "
                                                                  f"from 0 up to (not including) 1, got {share}"))
    return problems
