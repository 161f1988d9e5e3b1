"""How a step reaches the endpoint: the local runtime directly, or Azure through Pulumi's Automation API.

Both take a derived stage (a `Step`) that already passed the gate. A rollback is a step like any
other (the baseline live, the target dark, no mirror) and takes the same path, at once.
"""

from __future__ import annotations

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

    def apply(self, step: Step) -> None:
        from mlcanary.local_runtime.apply import StageRefused, apply_stage
        from mlcanary.local_runtime.client import NotRunning, RuntimeRefusal

        try:
            apply_stage(step.spec, self.client, self.progress)
        except (StageRefused, NotRunning, RuntimeRefusal) as err:
            raise ApplyError(str(err)) from None


def flatten(value: Any, prefix: str) -> dict[str, str]:
    """A config object as `pulumi config set --path` keys: {'mlcanary:endpoint.traffic.blue': '90', ...}."""
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}"))
        return flat
    if isinstance(value, list):
        flat = {}
        for index, item in enumerate(value):
            flat.update(flatten(item, f"{prefix}[{index}]"))
        return flat
    if isinstance(value, bool):
        return {prefix: "true" if value else "false"}
    return {prefix: str(value)}


class PulumiApplier:
    """Each step sets the traffic in the stack's config and runs `pulumi up` with the policy pack, so the
    stack's config and state always equal what is live. Needs the Pulumi CLI (Automation API)."""

    kind = "Pulumi (Automation API)"

    def __init__(self, stack: Any, policy_pack: Path, policy_pack_config: Path | None = None,
                 on_output: Callable[[str], None] | None = None):
        self.stack = stack
        self.policy_pack = policy_pack
        self.policy_pack_config = policy_pack_config
        self.on_output = on_output
        self.current: Step | None = None

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

    def apply(self, step: Step) -> None:
        from pulumi.automation import ConfigValue

        if self.current is None:
            # The stage file itself: replace the stack's endpoint config with it, key by key.
            try:
                self.stack.remove_config(ENDPOINT_KEY, path=False)
            except Exception:  # noqa: BLE001 - a stack without the key yet: nothing to remove
                pass
            values = {}
            for key, value in step.config.items():
                if key.startswith(f"{NAMESPACE}:"):
                    values.update(flatten(value, key) if isinstance(value, dict) else {key: str(value)})
            self.stack.set_all_config({k: ConfigValue(v) for k, v in values.items()}, path=True)
        else:
            before = self.current.spec.endpoint
            after = step.spec.endpoint
            for name in before.deployments.keys() - after.deployments.keys():
                self.stack.remove_config(f"{ENDPOINT_KEY}.traffic.{name}", path=True)
                self.stack.remove_config(f"{ENDPOINT_KEY}.deployments.{name}", path=True)
            for name in before.mirror_traffic.keys() - after.mirror_traffic.keys():
                self.stack.remove_config(f"{ENDPOINT_KEY}.mirrorTraffic.{name}", path=True)
            values = {f"{ENDPOINT_KEY}.traffic.{n}": str(s) for n, s in after.live_traffic.items()}
            values.update({f"{ENDPOINT_KEY}.mirrorTraffic.{n}": str(s) for n, s in after.mirror_traffic.items()})
            self.stack.set_all_config({k: ConfigValue(v) for k, v in values.items()}, path=True)
        packs = {"policy_packs": [str(self.policy_pack)]}
        if self.policy_pack_config is not None:
            packs["policy_pack_configs"] = [str(self.policy_pack_config)]
        self.current = step  # the config now says this step, whether or not `up` gets it live
        try:
            self.stack.up(message=f"mlcanary rollout: {step.label}", on_output=self.on_output, **packs)
        except Exception as err:  # CommandError: the update failed or a policy refused it
            raise ApplyError(f"pulumi up for step {step.label!r} failed: {err}") from None
