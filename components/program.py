"""The Pulumi program: this stack's `mlcanary:*` config -> one OnlineEndpoint component.

`__main__.py` (what `pulumi up` runs) calls `main`; `mlcanary check` runs the same function under
mocks. The whole config is validated before any resource is registered; an invalid config stops
the program with every problem listed by config path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env

from mlcanary.components.endpoint import OnlineEndpoint
from mlcanary.components.spec import NAMESPACE, SpecError, load_stack_config

if TYPE_CHECKING:
    from mlcanary.components.local_target import LocalRuntime


def stack_config() -> dict:
    """Every `mlcanary:*` value of this stack (object values arrive as JSON text)."""
    prefix = f"{NAMESPACE}:"
    keys = {k for k in {**get_config_env(), **CONFIG.get()} if k.startswith(prefix)}
    config = pulumi.Config(NAMESPACE)
    values = {}
    for key in sorted(keys):
        name = key[len(prefix):]
        text = config.get(name)
        try:
            values[name] = json.loads(text)
        except (TypeError, ValueError):
            values[name] = text
    return values


def main(project_dir: Path, local_runtime: LocalRuntime | None = None) -> None:
    """Build the stack; relative paths in the config resolve from `project_dir`. `local_runtime`:
    how local-target stacks reach the runtime (mlcanary.local_runtime.pulumi_access.RuntimeAccess)."""
    try:
        spec = load_stack_config(stack_config(), project_dir)
    except SpecError as err:
        raise pulumi.RunError(f"invalid stack config:\n{err}") from None

    endpoint = OnlineEndpoint(spec.endpoint.name, spec.endpoint, spec.target, local_runtime=local_runtime)

    pulumi.export("scoringUri", endpoint.scoring_uri)
    pulumi.export("swaggerUri", endpoint.swagger_uri)
    pulumi.export("deployments", endpoint.deployment_names)
    pulumi.export("traffic", endpoint.traffic)
    pulumi.export("mirrorTraffic", endpoint.mirror_traffic)
    pulumi.export("primaryKey", endpoint.primary_key)
    pulumi.export("secondaryKey", endpoint.secondary_key)
