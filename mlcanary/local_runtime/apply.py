"""Apply one stage to the local runtime, in the order Azure needs and without the Pulumi CLI.

1. deployments that are new or changed, each waited on until every instance is healthy;
2. live and mirror traffic, in one atomic change;
3. deployments the stage no longer has (their traffic is 0 by then), drained before they stop.
A deployment that fails to start refuses the stage: deployments created by this apply are
removed again (and the endpoint too, when this apply created it) and traffic is left as it was.
What changes is planned first from the running state (plan.py), the same plan `--preview` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlcanary.components.spec import DeploymentSpec, EndpointSpec, StackSpec
from mlcanary.local_runtime.client import RuntimeClient, RuntimeRefusal
from mlcanary.local_runtime.stage_lock import StageLocked, stage_lock
from mlcanary.local_runtime.plan import Plan, plan_stage, transition_view


class StageRefused(RuntimeError):
    pass


def deployment_payload(spec: DeploymentSpec) -> dict[str, Any]:
    """What the runtime needs to serve one deployment (environment and instance type do not apply)."""
    payload: dict[str, Any] = {
        "code": spec.code,
        "scoringScript": spec.scoring_script,
        "model": spec.model,
        "instanceCount": spec.instance_count,
        "environmentVariables": dict(spec.environment_variables),
    }
    if spec.request_settings and spec.request_settings.request_timeout_ms:
        payload["requestTimeoutMs"] = spec.request_settings.request_timeout_ms
    probe = spec.readiness_probe
    if probe and (probe.period or probe.failure_threshold or probe.timeout):
        payload["readinessProbe"] = {key: value for key, value in (
            ("period", probe.period), ("failureThreshold", probe.failure_threshold), ("timeout", probe.timeout)) if value}
    return payload


def plan_of(spec: EndpointSpec, running: dict[str, Any] | None) -> Plan:
    """What applying `spec` changes on `running` (the endpoint's status, or None when it is new)."""
    return plan_stage(spec, running, {name: deployment_payload(d) for name, d in spec.deployments.items()})


@dataclass
class Applied:
    plan: Plan  # what this apply changed
    scoring_uri: str

    @property
    def endpoint(self) -> str:
        return self.plan.endpoint


NOT_JUDGED = object()


def apply_stage(
    stack: StackSpec, client: RuntimeClient, progress: Callable[[str], None] = lambda _: None,
    judged: Any = NOT_JUDGED, wait: bool = True, stage: str = "a stage",
    on_wait: Callable[[str], None] | None = None,
) -> Applied:
    """Apply `stack` as one change: other applies to the same state directory wait (telling
    `on_wait` what for), or with wait=False this one is refused at once. `judged`: the endpoint's
    status (or None) on which the gate passed this stage; if what the transition rules read of it
    changed since (another apply in between), the stage is refused."""
    if stack.target != "local":
        raise StageRefused(f"this stage targets {stack.target!r}; `mlcanary local up` applies local-target stages "
                           "(mlcanary:target: local)")
    try:
        with stage_lock(client.root, stage, wait, on_wait or progress):
            return _apply(stack, client, progress, judged)
    except StageLocked as err:
        raise StageRefused(str(err)) from None


def _apply(stack: StackSpec, client: RuntimeClient, progress: Callable[[str], None], judged: Any) -> Applied:
    spec = stack.endpoint
    running = client.status(start=True)["endpoints"].get(spec.name)
    if judged is not NOT_JUDGED and transition_view(running) != transition_view(judged):
        raise StageRefused(f"endpoint {spec.name!r} changed after the stage was judged (another apply?); "
                           "nothing was changed: run it again to judge the step from the new state")
    plan = plan_of(spec, running)
    endpoint = client.put_endpoint(spec.name, spec.auth_mode)
    created: list[str] = []

    def undo(message: str) -> StageRefused:
        """Refuse the stage, leaving the runtime as this apply found it."""
        for name in created:
            client.delete_deployment(spec.name, name)
        if not plan.exists:
            client.delete_endpoint(spec.name)  # a first apply leaves no empty endpoint behind
        return StageRefused(message + "\nThe stage was refused; traffic is as it was.")

    for name in [*plan.started, *plan.updated]:
        deployment = spec.deployments[name]
        verb = "starting" if name in plan.started else "updating"
        progress(f"{verb} {name} ({deployment.instance_count} instance(s))")
        try:
            client.put_deployment(spec.name, name, deployment_payload(deployment))
        except RuntimeRefusal as err:
            raise undo(f"{err}\n{err.body.get('logTail', '')}".rstrip()) from None
        if name in plan.started:
            created.append(name)

    progress("setting traffic")
    try:
        client.set_traffic(spec.name, spec.live_traffic, dict(spec.mirror_traffic))
    except RuntimeRefusal as err:
        raise undo(str(err)) from None

    for name in plan.removed:
        progress(f"removing {name}")
        client.delete_deployment(spec.name, name)
    return Applied(plan, endpoint["scoringUri"])
