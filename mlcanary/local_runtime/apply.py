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

from mlcanary.components.spec import StackSpec
from mlcanary.local_runtime.client import RuntimeClient, RuntimeRefusal
from mlcanary.local_runtime.plan import Plan, deployment_payload, plan_stage

__all__ = ["Applied", "StageRefused", "apply_stage", "deployment_payload"]


class StageRefused(RuntimeError):
    pass


@dataclass
class Applied:
    plan: Plan  # what this apply changed
    scoring_uri: str

    @property
    def endpoint(self) -> str:
        return self.plan.endpoint


def apply_stage(
    stack: StackSpec, client: RuntimeClient, progress: Callable[[str], None] = lambda _: None
) -> Applied:
    if stack.target != "local":
        raise StageRefused(f"this stage targets {stack.target!r}; `mlcanary local up` applies local-target stages "
                           "(mlcanary:target: local)")
    spec = stack.endpoint
    plan = plan_stage(spec, client.status(start=True)["endpoints"].get(spec.name))
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
