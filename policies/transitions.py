"""Rules for the step from one stage to the next, judged by `mlcanary check A B ...`.

A policy pack sees one stack state at a time, so these cannot be CrossGuard policies; they take
the validated specs of two consecutive stages instead. They are configured like the pack's
policies (`--policy-pack-config`: enforcement level and knobs by policy name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pulumi_policy import EnforcementLevel, PolicyConfigSchema

from mlcanary.components.rules import instance_type_on_azure
from mlcanary.components.spec import EndpointSpec


@dataclass(frozen=True)
class TransitionPolicy:
    name: str
    description: str
    enforcement_level: EnforcementLevel
    check: Callable[[EndpointSpec, EndpointSpec, dict[str, Any]], list[str]]
    config_schema: PolicyConfigSchema | None = None


def _removed_had_no_traffic(before: EndpointSpec, after: EndpointSpec, _config: dict) -> list[str]:
    messages = []
    for name in before.deployments.keys() - after.deployments.keys():
        live, mirror = before.live_traffic[name], before.mirror_traffic.get(name, 0)
        if live or mirror:
            shares = " and ".join(s for s in (f"{live}% live" if live else "", f"{mirror}% mirror" if mirror else "") if s)
            messages.append(
                f"deployment {name!r} is removed but had {shares} traffic in the previous stage; "
                "move its traffic to 0 in a stage of its own first"
            )
    return messages


def _dark_before_live(before: EndpointSpec, after: EndpointSpec, _config: dict) -> list[str]:
    return [
        f"deployment {name!r} takes {share}% live traffic as soon as it is deployed; "
        "deploy it dark (0%) or mirrored in a stage before it goes live"
        for name, share in after.live_traffic.items()
        if share and name not in before.deployments
    ]


MAX_SHIFT_SCHEMA = PolicyConfigSchema(
    {"maxShiftPercent": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100,
                         "description": "Most live traffic (percentage points) one step may move."}}
)


def _max_shift(before: EndpointSpec, after: EndpointSpec, config: dict) -> list[str]:
    old, new = before.live_traffic, after.live_traffic
    moved = sum(max(0, share - old.get(name, 0)) for name, share in new.items())
    limit = config.get("maxShiftPercent", MAX_SHIFT_SCHEMA.properties["maxShiftPercent"]["default"])
    if moved > limit:
        return [f"this step moves {moved} percentage points of live traffic; at most {limit} may move in one step"]
    return []


def _mirror_ends_before_live(before: EndpointSpec, after: EndpointSpec, _config: dict) -> list[str]:
    """Azure's safe-rollout order: mirror to 0 in one step, live traffic in a later one."""
    return [
        f"deployment {name!r} was mirrored ({share}%) and takes {after.live_traffic[name]}% live traffic "
        "in the very next stage; end the mirror in a stage of its own before it goes live"
        for name, share in before.mirror_traffic.items()
        if share and after.live_traffic.get(name)
    ]


def _instance_type_kept(before: EndpointSpec, after: EndpointSpec, _config: dict) -> list[str]:
    """An online deployment keeps the instance type it was created with: Azure ML updates a deployment in
    place (instance count, settings, model) but not its VM size, and replacing it under the same name
    means deleting it, which Azure refuses while it has traffic."""
    messages = []
    for name in before.deployments.keys() & after.deployments.keys():
        was, now = before.deployments[name], after.deployments[name]
        old, new = (instance_type_on_azure(d.type, d.instance_type) for d in (was, now))
        if old is None or new is None:  # not known on one side (a running local state records none)
            continue
        if old.lower() != new.lower():
            live = before.live_traffic.get(name, 0) or before.mirror_traffic.get(name, 0)
            messages.append(
                f"deployment {name!r} changes instanceType from {old} to "
                f"{new}{' while it has traffic' if live else ''}; an online deployment "
                "cannot change its instance type in place: add a new deployment with the new type under another "
                "name, as a stage of its own, and move traffic to it"
            )
    return messages


TRANSITION_POLICIES = [
    TransitionPolicy(
        "removed-deployment-had-no-traffic",
        "A deployment is removed only after a stage in which it had no live or mirror traffic.",
        EnforcementLevel.MANDATORY,
        _removed_had_no_traffic,
    ),
    TransitionPolicy(
        "dark-before-live",
        "A new deployment is deployed dark (0%) or mirrored before it takes live traffic.",
        EnforcementLevel.ADVISORY,
        _dark_before_live,
    ),
    TransitionPolicy(
        "max-traffic-shift",
        "One step moves at most maxShiftPercent of live traffic (disabled unless configured).",
        EnforcementLevel.DISABLED,
        _max_shift,
        MAX_SHIFT_SCHEMA,
    ),
    TransitionPolicy(
        "instance-type-kept",
        "A deployment keeps its instance type; a new type is a new deployment under another name.",
        EnforcementLevel.MANDATORY,
        _instance_type_kept,
    ),
    TransitionPolicy(
        "mirror-ends-before-live",
        "Mirror traffic to a deployment ends in a stage before the one in which it takes live traffic.",
        EnforcementLevel.ADVISORY,
        _mirror_ends_before_live,
    ),
]
