"""The rules of Azure ML online endpoints, as pure functions over plain values.

This is the one place these rules live. The spec (stack config), the policy pack, `mlcanary check`
and the local runtime all call these functions; none of them restates a limit.

Every function takes the field it is judging (a dotted path the caller chooses, so messages can
name a config path or a resource property) and returns a list of `Problem`; empty means allowed.
Numbers may arrive as floats (Pulumi sends numbers over the wire as floats), so whole floats count
as integers, and booleans never do.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Matched with fullmatch: `$` would let a trailing newline through ("blue\n").
NAME_PATTERN = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
NAME_MIN_LENGTH = 3
NAME_MAX_LENGTH = 32
MAX_DEPLOYMENTS = 20
# The instance type Azure ML creates on every attached cluster and uses when a Kubernetes deployment
# names none (azure-native would fill in Standard_F4s_v2, a VM size, instead).
KUBERNETES_DEFAULT_INSTANCE_TYPE = "defaultinstancetype"
MIN_INSTANCE_COUNT = 1
MAX_INSTANCE_COUNT = 50
MAX_MIRROR_PERCENT = 50
MAX_REQUEST_TIMEOUT_MS = 180_000
# Config spelling -> the ARM/azure-native spelling.
AUTH_MODES = {"key": "Key", "aml_token": "AMLToken", "aad_token": "AADToken"}
DEPLOYMENT_TYPES = ("managed", "kubernetes")


SHOWN_CHARACTERS = 60


class _ShortRepr(reprlib.Repr):
    """repr with every string, list and mapping cut short, at any depth."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxtuple, self.maxset = 3, 3, 3, 3, 3
        self.maxother = SHOWN_CHARACTERS

    def repr_str(self, value: str, level: int) -> str:
        limit = SHOWN_CHARACTERS if level == self.maxlevel else SHOWN_CHARACTERS // 3  # inside a container
        return shown_text(value, repr, limit)


_SHORT_REPR = _ShortRepr()


def shown_text(text: str, form=str, limit: int = SHOWN_CHARACTERS) -> str:
    """`text` (in `form`: str or repr) cut to about `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return form(text)
    return f"{form(text[:limit])}… ({len(text)} characters)"


def shown(value: object) -> str:
    """A user's value as messages echo it: its repr, cut short (a 100 KB name is not echoed in full)."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= 3 * SHOWN_CHARACTERS else text[: 3 * SHOWN_CHARACTERS] + "…"


@dataclass(frozen=True)
class Problem:
    """One broken rule: where (a dotted field path) and what is wrong, including what is allowed."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def join(field: str, *keys: str) -> str:
    """`field` and `keys` as a dotted path, skipping empty ones. Keys may be the user's own (a
    deployment name), so each is cut short: a 100 KB name does not make a 100 KB path."""
    return ".".join(p for p in (field, *(shown_text(str(key)) for key in keys)) if p)


def whole_number(value: object) -> int | None:
    """The integer a config or wire value stands for, or None if it is not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def name_problems(field: str, name: object, what: str = "name") -> list[Problem]:
    allowed = (
        f"{NAME_MIN_LENGTH}-{NAME_MAX_LENGTH} characters, starting with a letter, "
        "only letters, digits and hyphens, not ending in a hyphen"
    )
    if not isinstance(name, str):
        return [Problem(field, f"{what} must be a string ({allowed}), got {shown(name)}")]
    if not (NAME_MIN_LENGTH <= len(name) <= NAME_MAX_LENGTH) or not NAME_PATTERN.fullmatch(name):
        return [Problem(field, f"{shown(name)} is not a valid {what}: {allowed}")]
    return []


def integer_range_problems(field: str, value: object, low: int, high: int, what: str) -> list[Problem]:
    number = whole_number(value)
    if number is None or not low <= number <= high:
        got = shown(value) if number is None else number  # 2.0 off the wire reads as 2
        return [Problem(field, f"{what} must be a whole number from {low} to {high}, got {got}")]
    return []


def instance_count_problems(
    field: str, value: object, minimum: int = MIN_INSTANCE_COUNT
) -> list[Problem]:
    return integer_range_problems(field, value, minimum, MAX_INSTANCE_COUNT, "instance count")


def deployment_count_problems(field: str, count: int, maximum: int = MAX_DEPLOYMENTS) -> list[Problem]:
    maximum = min(maximum, MAX_DEPLOYMENTS)
    if count > maximum:
        return [Problem(field, f"an endpoint has at most {maximum} deployments, got {count}")]
    return []


def request_timeout_problems(
    field: str, timeout_ms: object, maximum_ms: int = MAX_REQUEST_TIMEOUT_MS
) -> list[Problem]:
    return integer_range_problems(
        field, timeout_ms, 1, min(maximum_ms, MAX_REQUEST_TIMEOUT_MS), "request timeout (ms) on a managed endpoint"
    )


def auth_mode_problems(
    field: str, mode: object, *, arm_spelling: bool = False, allowed: Iterable[str] = tuple(AUTH_MODES)
) -> list[Problem]:
    """`allowed` is in config spelling; `arm_spelling` judges the azure-native value (Key, AMLToken, AADToken)."""
    names = [AUTH_MODES[m] if arm_spelling else m for m in AUTH_MODES if m in set(allowed)]
    if mode not in names:
        return [Problem(field, f"auth mode must be one of {', '.join(names)}, got {shown(mode)}")]
    return []


def traffic_problems(
    traffic: Mapping[str, object],
    mirror_traffic: Mapping[str, object],
    deployments: Iterable[str],
    *,
    field: str = "",
    max_mirror_percent: int = MAX_MIRROR_PERCENT,
) -> list[Problem]:
    """Live and mirror traffic maps of one endpoint against the deployments it has."""
    return traffic_target_problems(traffic, mirror_traffic, deployments, field=field) + traffic_share_problems(
        traffic, mirror_traffic, field=field, max_mirror_percent=max_mirror_percent
    )


def traffic_target_problems(
    traffic: Mapping[str, object],
    mirror_traffic: Mapping[str, object],
    deployments: Iterable[str],
    *,
    field: str = "",
) -> list[Problem]:
    """Traffic and mirror keys must name deployments of this endpoint that exist."""
    known = set(deployments)
    known_text = ", ".join(shown_text(str(name)) for name in sorted(known, key=str)) or "none"
    problems = []
    for kind, shares in (("traffic", traffic), ("mirrorTraffic", mirror_traffic)):
        what = "live traffic" if kind == "traffic" else "mirror traffic"
        for name in shares:
            if name not in known:
                problems.append(
                    Problem(join(field, kind, name), f"{what} names unknown deployment {shown(name)}; deployments: {known_text}")
                )
    return problems


def traffic_share_problems(
    traffic: Mapping[str, object],
    mirror_traffic: Mapping[str, object],
    *,
    field: str = "",
    max_mirror_percent: int = MAX_MIRROR_PERCENT,
) -> list[Problem]:
    """Live: whole numbers 0..100 summing to exactly 100, or 0 when nothing is live. Mirror: at most
    one deployment, at most `max_mirror_percent` (never above 50), never one with live traffic."""
    max_mirror_percent = min(max_mirror_percent, MAX_MIRROR_PERCENT)
    live_field, mirror_field = join(field, "traffic"), join(field, "mirrorTraffic")
    problems: list[Problem] = []

    live: dict[str, int] = {}
    for name, value in traffic.items():
        found = integer_range_problems(join(live_field, name), value, 0, 100, "live traffic percent")
        problems += found
        if not found:
            live[name] = whole_number(value) or 0
    if len(live) == len(traffic):
        total = sum(live.values())
        if total not in (0, 100):
            shares = ", ".join(f"{shown_text(str(k))}={v}" for k, v in live.items())
            problems.append(
                Problem(live_field, f"live traffic must sum to 100 (or 0 when nothing is live), got {total} ({shares})")
            )

    mirrored: dict[str, int] = {}
    for name, value in mirror_traffic.items():
        found = integer_range_problems(join(mirror_field, name), value, 0, max_mirror_percent, "mirror traffic percent")
        problems += found
        if not found and whole_number(value):
            mirrored[name] = whole_number(value) or 0
    if len(mirrored) > 1:
        problems.append(
            Problem(
                mirror_field,
                f"mirror traffic may go to at most one deployment, got {len(mirrored)} ({', '.join(map(shown_text, mirrored))})",
            )
        )
    for name in mirrored:
        if live.get(name):
            problems.append(
                Problem(
                    join(mirror_field, name),
                    f"deployment {shown(name)} has live traffic ({live[name]}%) and mirror traffic "
                    f"({mirrored[name]}%); a deployment takes one or the other",
                )
            )
    return problems


def kubernetes_mirror_problems(field: str, mirror_traffic: Mapping[str, object]) -> list[Problem]:
    """Kubernetes online endpoints do not support mirror traffic at all."""
    if any(whole_number(v) != 0 for v in mirror_traffic.values()):
        return [Problem(field, "mirror traffic is not supported on Kubernetes online endpoints")]
    return []


ENVIRONMENT_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSET_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def environment_variable_problems(field: str, variables: Mapping[str, object]) -> list[Problem]:
    """Names are identifiers (a `=` would be mangled into the value), values hold no NUL."""
    problems = []
    for name, value in variables.items():
        if not ENVIRONMENT_VARIABLE_NAME.fullmatch(name):
            problems.append(
                Problem(join(field, name), f"{shown(name)} is not a valid environment variable name: letters, digits and "
                        "underscores, not starting with a digit")
            )
        if isinstance(value, str) and "\0" in value:
            problems.append(Problem(join(field, name), "an environment variable value cannot contain a NUL character"))
    return problems


def asset_name_problems(field: str, name: str) -> list[Problem]:
    """Azure ML asset names: letters, digits, `-`, `_`, `.`, starting with a letter or digit, at most 255."""
    if not ASSET_NAME_PATTERN.fullmatch(name):
        return [Problem(field, f"{shown(name)} is not a valid asset name: up to 255 letters, digits, '-', '_' and '.', "
                        "starting with a letter or digit")]
    return []


def instance_type_on_azure(deployment_type: str, instance_type: str | None) -> str | None:
    """The instance type a deployment runs on: a Kubernetes one without its own runs on the cluster's
    default; a managed one without one is not known (the local target needs none)."""
    if instance_type:
        return instance_type
    return KUBERNETES_DEFAULT_INSTANCE_TYPE if deployment_type == "kubernetes" else None
