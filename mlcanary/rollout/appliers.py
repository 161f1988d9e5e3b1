"""How a step reaches the endpoint: the local runtime directly, or Azure through Pulumi's Automation API.

Both take a derived stage (a `Step`) that already passed the gate. A rollback is a step like any
other (the baseline live, the target dark, no mirror) and takes the same path, at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcanary.components.spec import NAMESPACE
from mlcanary.rollout.plan import Step

ENDPOINT_KEY = f"{NAMESPACE}:endpoint"


class ApplyError(RuntimeError):
    pass


class LocalApplier:
    kind = "local runtime"

    def __init__(self, client: Any, progress: Callable[[str], None] = lambda _: None):
        self.client = client
        self.progress = progress

    def in_state(self, step: Step) -> bool:
        """True when the runtime already serves exactly this stage (deployments ready, same traffic)."""
        from mlcanary.components.local_payload import deployment_payload

        endpoint = step.spec.endpoint
        status = self.client.status().get("endpoints", {}).get(endpoint.name)
        if status is None or set(status["deployments"]) != set(endpoint.deployments):
            return False
        for name, deployment in endpoint.deployments.items():
            current = status["deployments"][name]
            if current["state"] != "ready" or current.get("spec") not in (None, deployment_payload(deployment)):
                return False
        live = {n: s for n, s in status["traffic"].items() if s}
        return live == {n: s for n, s in endpoint.live_traffic.items() if s} and \
            {n: s for n, s in status["mirrorTraffic"].items() if s} == dict(endpoint.mirror_traffic)

    def read_back(self, endpoint: str) -> dict[str, Any] | None:
        """What runs now, to compare with what a step set: live and mirror traffic, and per deployment
        its instance count and the spec it serves; None when the endpoint is gone. Raises when the
        runtime cannot be read (NotRunning, RuntimeRefusal, OSError)."""
        status = self.client.status().get("endpoints", {}).get(endpoint)
        if status is None:
            return None
        return {"traffic": dict(status["traffic"]), "mirror": dict(status["mirrorTraffic"]),
                "deployments": {name: {"instanceCount": (d.get("spec") or {}).get("instanceCount"), "spec": d.get("spec")}
                                for name, d in status["deployments"].items()}}

    def preview(self, step: Step) -> list[str]:
        """What applying `step` would change, as `local up --preview` prints it."""
        from mlcanary.local_runtime.apply import plan_of
        from mlcanary.local_runtime.running import current_endpoints

        running = current_endpoints(self.client).get(step.spec.endpoint.name)
        return plan_of(step.spec.endpoint, running).lines()

    def live_traffic(self, endpoint: str) -> dict[str, int]:
        """The endpoint's live traffic as the runtime reports it now."""
        from mlcanary.local_runtime.client import NotRunning, RuntimeRefusal

        try:
            status = self.client.status(start=False).get("endpoints", {}).get(endpoint)
        except (NotRunning, RuntimeRefusal) as err:
            raise ApplyError(str(err)) from None
        if status is None:
            raise ApplyError(f"endpoint {endpoint!r} is not on the local runtime")
        return {name: int(share) for name, share in status["traffic"].items()}

    def apply(self, step: Step) -> None:
        from mlcanary.local_runtime.apply import StageRefused, apply_stage
        from mlcanary.local_runtime.client import NotRunning, RuntimeRefusal

        try:
            apply_stage(step.spec, self.client, self.progress)
        except (StageRefused, NotRunning, RuntimeRefusal) as err:
            raise ApplyError(str(err)) from None


def stage_config_json(config: dict[str, Any]) -> str:
    """The stage's `mlcanary:*` values in the shape `pulumi config --json` prints, for
    `pulumi config set-all --json` (`Stack.set_all_config_json`).

    An object goes whole, as `objectValue` with its JSON text in `value`: the CLI stores it as that
    object, types and keys kept. `set-all --path` would split `tags.app.kubernetes.io/name` on every
    dot and coerce "42" and "true" into a number and a boolean (pulumi `config/object.go`, `coerce`),
    so a stage with such values would no longer load.
    """
    entries: dict[str, dict[str, Any]] = {}
    for key, value in config.items():
        if not key.startswith(f"{NAMESPACE}:"):
            continue
        if isinstance(value, str):
            entries[key] = {"value": value, "secret": False}
        else:
            entries[key] = {"value": json.dumps(value), "objectValue": value, "secret": False}
    return json.dumps(entries)


def as_live(traffic: Any) -> dict[str, int]:
    """A traffic map as Azure keeps it: no zero shares, lowercase names (wire floats made ints)."""
    return {str(name).lower(): int(share) for name, share in (traffic or {}).items() if int(share)}


class PulumiApplier:
    """Each step writes the whole stage into the stack's config and runs `pulumi up --refresh` with the
    policy pack, so the stack's config and state always equal what is live. Needs the Pulumi CLI
    (Automation API).

    Another update of the stack (a person, a pipeline) holds the stack's lock: `up` fails with
    `ConcurrentUpdateError`. The applier waits for it, up to `lock_wait_s`, and never cancels an
    update it did not start. Its own update cut short by Ctrl-C or SIGTERM needs no cancel: `up` runs
    in a thread of its own and an interrupt waits for it to end (`_to_its_end`), so the return to the
    last good step starts after it.
    After `up`, the traffic the stack reports (read from Azure by the refresh and the traffic
    resource's confirmed PUT) must be the step's, or the step fails.
    """

    kind = "Pulumi (Automation API)"

    def __init__(self, stack: Any, policy_pack: Path, policy_pack_config: Path | None = None,
                 on_output: Callable[[str], None] | None = None, *, lock_wait_s: float = 900.0,
                 retry_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.stack = stack
        self.policy_pack = policy_pack
        self.policy_pack_config = policy_pack_config
        self.on_output = on_output
        self.lock_wait_s, self.retry_s = lock_wait_s, retry_s
        self.clock, self.sleep = clock, sleep

    @classmethod
    def for_stack(cls, stack_name: str, project_dir: Path, policy_pack: Path, policy_pack_config: Path | None,
                  on_output: Callable[[str], None] | None = None) -> PulumiApplier:
        from pulumi import automation as auto

        try:
            stack = auto.select_stack(stack_name=stack_name, work_dir=str(project_dir))
        except Exception as err:  # no Pulumi CLI, no such stack, not logged in
            raise ApplyError(f"cannot select Pulumi stack {stack_name!r} in {project_dir}: {err}") from None
        return cls(stack, policy_pack, policy_pack_config, on_output)

    def in_state(self, step: Step) -> bool:
        return False  # `up` of an unchanged stack changes nothing: let it confirm

    def preview(self, step: Step) -> list[str]:
        return [f"  pulumi up of stack {self.stack.name} with {step.label}'s config "
                "(the stack's state cannot be compared with the stage file without an update)"]

    def live_traffic(self, endpoint: str) -> dict[str, int]:
        """The live traffic the stack's traffic resource read back from Azure at its last update."""
        try:
            return as_live(_output(self.stack.outputs(), "traffic"))
        except Exception as err:  # noqa: BLE001 - no Pulumi CLI, no such output: not confirmed
            raise ApplyError(f"cannot read the stack's `traffic` output: {err}") from None

    def apply(self, step: Step) -> None:
        from pulumi.automation.errors import CommandError

        try:
            self.stack.set_all_config_json(stage_config_json(step.config))
        except CommandError as err:
            raise ApplyError(f"cannot write step {step.label!r} into the stack config: {err}") from None
        outputs = self._up(step)
        self._confirm(step, outputs)

    def _up(self, step: Step) -> dict[str, Any]:
        from pulumi.automation.errors import CommandError, ConcurrentUpdateError

        packs: dict[str, Any] = {"policy_packs": [str(self.policy_pack)]}
        if self.policy_pack_config is not None:
            packs["policy_pack_configs"] = [str(self.policy_pack_config)]
        deadline = self.clock() + self.lock_wait_s
        while True:
            try:
                result = _to_its_end(lambda: self.stack.up(message=f"mlcanary rollout: {step.label}",
                                                           on_output=self.on_output, refresh=True, **packs))
            except ConcurrentUpdateError:
                if self.clock() < deadline:
                    self.sleep(self.retry_s)
                    continue
                raise ApplyError(f"pulumi up for step {step.label!r}: another update of the stack is still running "
                                 f"after {self.lock_wait_s:g} s, so this step's update did not run (its config is written; if "
                                 "that update is stale, `pulumi cancel` ends it)") from None
            except CommandError as err:  # the update failed or a policy refused it
                raise ApplyError(f"pulumi up for step {step.label!r} failed: {err}") from None
            return dict(result.outputs or {})

    def _confirm(self, step: Step, outputs: dict[str, Any]) -> None:
        """What the stack reports live after `up --refresh` must be what the step asked for."""
        got = {key: as_live(_output(outputs, key)) for key in ("traffic", "mirrorTraffic")}
        want = {"traffic": as_live(step.traffic), "mirrorTraffic": as_live(step.mirror_traffic)}
        if got != want:
            raise ApplyError(f"after pulumi up for step {step.label!r} the endpoint reports live {got['traffic']} "
                             f"and mirror {got['mirrorTraffic']}, not {want['traffic']} and {want['mirrorTraffic']}")


def _to_its_end(call: Callable[[], Any]) -> Any:
    """`call()` in a thread of its own; an interrupt (Ctrl-C, the runner's SIGTERM) of this thread waits
    for it to end, then is raised. Interrupted in the Automation API's own thread, its `Popen` context
    closed the CLI's pipes under its reader threads, which printed "Exception in thread ... ValueError:
    I/O operation on closed file" to the user's terminal (pulumi/automation/_cmd.py, `consumer`)."""
    outcome: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: an interrupted join can mark a running thread stopped

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # handed to the caller's thread below
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name="pulumi-up", daemon=True).start()
    interrupt: BaseException | None = None
    while not done.is_set():
        try:
            done.wait(0.5)
        except BaseException as err:  # the update runs on to its end (the CLI child ends it on its own signal)
            interrupt = interrupt or err
    if interrupt is not None:
        raise interrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _output(outputs: dict[str, Any], key: str) -> Any:
    value = outputs.get(key)
    return getattr(value, "value", value)
