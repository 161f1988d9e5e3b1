"""Apply one stage to the local runtime, in the order Azure needs and without the Pulumi CLI.

1. deployments that are new or changed, each waited on until every instance is healthy;
2. live and mirror traffic, in one atomic change;
3. deployments the stage no longer has (their traffic is 0 by then), drained before they stop.
A deployment that fails to start refuses the stage: deployments created by this apply are
removed again and traffic is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlcanary.components.spec import DeploymentSpec, StackSpec
from mlcanary.components.uploads import content_hash
from mlcanary.local_runtime.client import RuntimeClient, RuntimeRefusal
from mlcanary.local_runtime.snapshots import PINNED
from mlcanary.local_runtime.stage_lock import StageLocked, stage_lock


class StageRefused(RuntimeError):
    pass


def deployment_payload(spec: DeploymentSpec) -> dict[str, Any]:
    """What the runtime needs to serve one deployment (environment and instance type do not apply).

    The code and model carry the digest Azure registers them under: the runtime serves that pinned
    version, and changed content is a changed deployment (snapshots.py).
    """
    payload: dict[str, Any] = {
        "code": spec.code,
        "scoringScript": spec.scoring_script,
        "model": spec.model,
        "instanceCount": spec.instance_count,
        "environmentVariables": dict(spec.environment_variables),
    }
    for key, digest_key in PINNED.items():
        if payload[key]:
            payload[digest_key] = content_hash(payload[key])
    if spec.request_settings and spec.request_settings.request_timeout_ms:
        payload["requestTimeoutMs"] = spec.request_settings.request_timeout_ms
    probe = spec.readiness_probe
    if probe and (probe.period or probe.failure_threshold or probe.timeout):
        payload["readinessProbe"] = {key: value for key, value in (
            ("period", probe.period), ("failureThreshold", probe.failure_threshold), ("timeout", probe.timeout)) if value}
    return payload


@dataclass
class Applied:
    endpoint: str
    scoring_uri: str
    started: list[str] = field(default_factory=list)  # new deployments
    updated: list[str] = field(default_factory=list)  # scaled, or replaced with new settings
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)  # updated deployment -> what changed

    def updated_text(self) -> list[str]:
        """'green (model changed)' for each updated deployment."""
        return [f"{name} ({self.why[name]})" if self.why.get(name) else name for name in self.updated]


def what_changed(running: dict[str, Any], wanted: dict[str, Any]) -> str:
    """Why a running deployment is updated, in a user's words: 'model changed', 'instances 1 -> 2'."""
    reasons = [f"{key} changed" for key in PINNED if running.get(PINNED[key]) != wanted.get(PINNED[key])
               or running.get(key) != wanted.get(key)]
    if running.get("instanceCount") != wanted.get("instanceCount"):
        reasons.append(f"instances {running.get('instanceCount')} -> {wanted.get('instanceCount')}")
    compared = {*PINNED, *PINNED.values(), "instanceCount"}
    if any(running.get(k) != wanted.get(k) for k in {*running, *wanted} - compared):
        reasons.append("settings changed")
    return ", ".join(reasons)


def apply_stage(
    stack: StackSpec, client: RuntimeClient, progress: Callable[[str], None] = lambda _: None,
    wait: bool = True, stage: str = "a stage", on_wait: Callable[[str], None] | None = None,
) -> Applied:
    """Apply `stack` as one change: other applies to the same state directory wait (telling
    `on_wait` what for), or with wait=False this one is refused at once."""
    if stack.target != "local":
        raise StageRefused(f"this stage targets {stack.target!r}; `mlcanary local up` applies local-target stages "
                           "(mlcanary:target: local)")
    try:
        with stage_lock(client.root, stage, wait, on_wait or progress):
            return _apply(stack, client, progress)
    except StageLocked as err:
        raise StageRefused(str(err)) from None


def _apply(stack: StackSpec, client: RuntimeClient, progress: Callable[[str], None]) -> Applied:
    spec = stack.endpoint
    endpoint = client.put_endpoint(spec.name, spec.auth_mode)
    current = endpoint["deployments"]
    applied = Applied(spec.name, endpoint["scoringUri"])

    created: list[str] = []
    for name, deployment in spec.deployments.items():
        payload = deployment_payload(deployment)
        existing = current.get(name)
        if existing and existing["state"] == "ready" and existing["spec"] == payload:
            applied.unchanged.append(name)
            continue
        verb = "starting" if existing is None else "updating"
        progress(f"{verb} {name} ({deployment.instance_count} instance(s))")
        try:
            client.put_deployment(spec.name, name, payload)
        except RuntimeRefusal as err:
            for new in created:
                client.delete_deployment(spec.name, new)
            tail = err.body.get("logTail", "")
            raise StageRefused(f"{err}\n{tail}".rstrip() + "\nThe stage was refused; traffic is as it was.") from None
        if existing is None:
            applied.started.append(name)
            created.append(name)
        else:
            applied.updated.append(name)
            applied.why[name] = what_changed(existing["spec"], payload) if existing["state"] == "ready" else (
                f"was {existing['state']}")

    progress("setting traffic")
    try:
        client.set_traffic(spec.name, spec.live_traffic, dict(spec.mirror_traffic))
    except RuntimeRefusal as err:
        raise StageRefused(str(err)) from None

    for name in current:
        if name not in spec.deployments:
            progress(f"removing {name}")
            client.delete_deployment(spec.name, name)
            applied.removed.append(name)
    return applied
