"""Apply one stage to the local runtime, in the order Azure needs and without the Pulumi CLI.

1. deployments that are new or changed, each waited on until every instance is healthy;
2. live and mirror traffic, in one atomic change;
3. deployments the stage no longer has (their traffic is 0 by then), drained before they stop.
A deployment that fails to start refuses the stage: deployments created by this apply are
removed again (and the endpoint too, when this apply created it) and traffic is left as it was.
What changes is planned first from the running state (plan.py), the same plan `--preview` prints.
An interrupt (Ctrl-C; the CLI turns SIGTERM into one) while deployments start does the same: the
starting deployment is stopped in the runtime, not left to finish. Each start waits at most its
start limit (workers.StartLimit: the readiness probe's initialDelay + failureThreshold x period).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlcanary.components.local_payload import deployment_payload
from mlcanary.components.spec import EndpointSpec, StackSpec
from mlcanary.local_runtime.client import RuntimeClient, RuntimeRefusal
from mlcanary.local_runtime.interrupts import interrupts_ignored
from mlcanary.local_runtime.stage_lock import StageLocked, stage_lock
from mlcanary.local_runtime.plan import Plan, plan_stage, transition_view
from mlcanary.local_runtime.workers import StartLimit

PROGRESS_EVERY_S = 0.5
CANCEL_WAIT_S = 120.0


class StageRefused(RuntimeError):
    pass


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


class ApplyCancelled(StageRefused):
    """The apply was interrupted (Ctrl-C, SIGTERM): what it had started is stopped, traffic is as it was."""


def _put_deployment(client: RuntimeClient, endpoint: str, name: str, payload: dict[str, Any], doing: str,
                    progress: Callable[[str], None]) -> None:
    """PUT a deployment, reporting the health wait (elapsed and its limit) while it runs. An interrupt
    (KeyboardInterrupt) cancels the change in the runtime before it propagates."""
    limit = StartLimit.of(payload)
    outcome: dict[str, Any] = {}
    done = threading.Event()  # not Thread.is_alive(): a join() cut short by Ctrl-C can make that lie

    def put() -> None:
        try:
            client.put_deployment(endpoint, name, payload)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = err
        finally:
            done.set()

    started = time.monotonic()
    threading.Thread(target=put, name=f"put {name}", daemon=True).start()
    try:
        while not done.is_set():
            progress(f"{doing}: waiting until healthy, {time.monotonic() - started:.0f} s of {limit.seconds} s "
                     f"({limit.explained()})")
            done.wait(PROGRESS_EVERY_S)
    except KeyboardInterrupt:
        with interrupts_ignored():
            progress(f"cancelling: stopping {name}")
            deadline = time.monotonic() + CANCEL_WAIT_S
            # The request may not have reached the runtime yet: ask until the change is found, or is over.
            while not done.is_set() and time.monotonic() < deadline:
                if client.cancel_change(endpoint, name):
                    done.wait(CANCEL_WAIT_S)
                    break
                done.wait(0.2)
        raise
    if "error" in outcome:
        raise outcome["error"]


def _undo(client: RuntimeClient, endpoint: str, created: list[str], created_endpoint: bool) -> list[str]:
    """Remove what this apply created (no traffic reaches it yet); what was removed, for the message."""
    undone = []
    for name in created:
        client.delete_deployment(endpoint, name)
        undone.append(f"removed {name}")
    if created_endpoint:
        client.delete_endpoint(endpoint)
        undone.append(f"removed endpoint {endpoint}")
    return undone


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
        undone = _undo(client, spec.name, created, not plan.exists)  # a first apply leaves no endpoint behind
        return StageRefused(message + "\nThe stage was refused; traffic is as it was"
                            + (f" ({', '.join(undone)})." if undone else "."))

    for name in [*plan.started, *plan.updated]:
        deployment = spec.deployments[name]
        payload = deployment_payload(deployment)
        verb = "starting" if name in plan.started else "updating"
        doing = f"{verb} {name} ({deployment.instance_count} instance(s))"
        progress(doing)
        try:
            _put_deployment(client, spec.name, name, payload, doing, progress)
        except RuntimeRefusal as err:
            raise undo(f"{err}\n{err.body.get('logTail', '')}".rstrip()) from None
        except KeyboardInterrupt:
            with interrupts_ignored():
                now = client.status()["endpoints"].get(spec.name, {}).get("deployments", {}).get(name)
                finished = now is not None and now["state"] == "ready" and now["spec"] == {**now["spec"], **payload}
                if finished and name in plan.started:
                    created.append(name)  # it became ready before the cancel arrived: removed with the others
                undone = _undo(client, spec.name, created, not plan.exists)
            stopped = [f"{name} was updated before the cancel arrived" if finished and name in plan.updated else
                       f"stopped {name} (it was {verb})", *undone]
            raise ApplyCancelled(f"cancelled: {', '.join(stopped)}; traffic is as it was. "
                                 f"Deployments this apply had not reached were not touched.") from None
        if name in plan.started:
            created.append(name)

    with interrupts_ignored():  # from here the stage completes: traffic and removals are quick
        progress("setting traffic")
        try:
            client.set_traffic(spec.name, spec.live_traffic, dict(spec.mirror_traffic))
        except RuntimeRefusal as err:
            raise undo(str(err)) from None

        for name in plan.removed:
            progress(f"removing {name}")
            client.delete_deployment(spec.name, name)
    return Applied(plan, endpoint["scoringUri"])
