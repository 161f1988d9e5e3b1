"""What applying a stage would change on the local runtime, computed from the running state.

Pure functions over the runtime's `/status` view of one endpoint (or None when it does not exist):
`local up --preview` prints the plan, `apply_stage` follows it, and the gate judges the step from
the running state with the same transition rules `mlcanary check` uses between two stage files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlcanary.components.spec import DeploymentSpec, EndpointSpec
from mlcanary.local_runtime.deployment_changes import why_updated


@dataclass
class Plan:
    endpoint: str
    exists: bool  # the endpoint is already on the runtime
    started: list[str] = field(default_factory=list)  # new deployments
    updated: dict[str, str] = field(default_factory=dict)  # deployment -> why (scaled, settings changed, ...)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    traffic_before: dict[str, int] = field(default_factory=dict)
    traffic_after: dict[str, int] = field(default_factory=dict)
    mirror_before: dict[str, int] = field(default_factory=dict)
    mirror_after: dict[str, int] = field(default_factory=dict)

    @property
    def traffic_changes(self) -> bool:
        return self.traffic_before != self.traffic_after or self.mirror_before != self.mirror_after

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint, "endpointExists": self.exists, "started": self.started,
            "updated": self.updated, "unchanged": self.unchanged, "removed": self.removed,
            "traffic": {"before": self.traffic_before, "after": self.traffic_after},
            "mirrorTraffic": {"before": self.mirror_before, "after": self.mirror_after},
        }

    def lines(self) -> list[str]:
        """The plan as a user reads it: one line per kind of change, then live and mirror traffic."""
        out = [f"  started: {', '.join(self.started)}"] if self.started else []
        if self.updated:
            out.append("  updated: " + ", ".join(f"{n} ({why})" for n, why in self.updated.items()))
        out += [f"  {label}: {', '.join(names)}" for label, names in
                (("unchanged", self.unchanged), ("removed", self.removed)) if names]
        for label, before, after in (("live traffic", self.traffic_before, self.traffic_after),
                                     ("mirror traffic", self.mirror_before, self.mirror_after)):
            if before == after:
                out.append(f"  {label}: {_text(after)} (unchanged)")
            else:
                out.append(f"  {label}: {_text(before)} -> {_text(after)}")
        return out


def plan_stage(spec: EndpointSpec, running: dict[str, Any] | None, payloads: dict[str, dict[str, Any]]) -> Plan:
    """The changes that bring `running` (the runtime's status of this endpoint, or None) to `spec`, whose
    deployments the runtime would be given as `payloads` (name -> `components.local_payload.deployment_payload`)."""
    current = (running or {}).get("deployments", {})
    plan = Plan(
        spec.name, running is not None,
        traffic_before=_shares((running or {}).get("traffic", {})), traffic_after=_shares(spec.live_traffic),
        mirror_before=_shares((running or {}).get("mirrorTraffic", {})), mirror_after=_shares(spec.mirror_traffic),
    )
    for name in spec.deployments:
        payload = payloads[name]
        existing = current.get(name)
        if existing is None:
            plan.started.append(name)
        elif existing["state"] == "ready" and existing["spec"] == payload:
            plan.unchanged.append(name)
        else:
            plan.updated[name] = why_updated(existing, payload)
    plan.removed = [name for name in current if name not in spec.deployments]
    return plan


def transition_view(running: dict[str, Any] | None) -> tuple | None:
    """What the transition rules read of a running endpoint: its deployments, live and mirror traffic.
    Equal views get the same verdict from the gate."""
    if running is None:
        return None
    return (sorted(running.get("deployments", {})), _shares(running.get("traffic", {})),
            _shares(running.get("mirrorTraffic", {})))


def running_endpoint(name: str, running: dict[str, Any]) -> EndpointSpec:
    """The running endpoint as the transition rules see a stage: its deployments and their traffic.

    Built without validation: the runtime's state was validated when it was applied, and the rules
    read only deployment names, live and mirror traffic.
    """
    return EndpointSpec.model_construct(
        name=name,
        deployments={n: DeploymentSpec.model_construct() for n in running.get("deployments", {})},
        traffic=dict(running.get("traffic", {})),
        mirror_traffic=dict(running.get("mirrorTraffic", {})),
    )


def _shares(traffic: dict[str, Any]) -> dict[str, int]:
    """Traffic without the zero entries: {blue: 100, green: 0} and {blue: 100} route the same."""
    return {name: int(share) for name, share in traffic.items() if share}


def _text(traffic: dict[str, int]) -> str:
    return ", ".join(f"{name} {share}" for name, share in traffic.items()) or "none"
