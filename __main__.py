"""The Pulumi program: this stack's `mlcanary:*` config -> one OnlineEndpoint component.

The whole config is validated before any resource is registered; an invalid config stops the
program with every problem listed by config path.
"""

import json
from pathlib import Path

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env

from components.endpoint import OnlineEndpoint
from components.spec import NAMESPACE, SpecError, load_stack_config

PROJECT_DIR = Path(__file__).resolve().parent


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


try:
    spec = load_stack_config(stack_config(), PROJECT_DIR)
except SpecError as err:
    raise pulumi.RunError(f"invalid stack config:\n{err}") from None

endpoint = OnlineEndpoint(spec.endpoint.name, spec.endpoint)

pulumi.export("scoringUri", endpoint.scoring_uri)
pulumi.export("swaggerUri", endpoint.swagger_uri)
pulumi.export("deployments", endpoint.deployment_names)
pulumi.export("traffic", endpoint.traffic)
pulumi.export("mirrorTraffic", endpoint.mirror_traffic)
pulumi.export("primaryKey", endpoint.primary_key)
pulumi.export("secondaryKey", endpoint.secondary_key)
