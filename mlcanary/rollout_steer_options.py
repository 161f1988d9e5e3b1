"""The options of `mlcanary rollout STAGE_FILE` that concern holding and steering the endpoint
(--force, --notify, --confirm-promotion), and the steering they make for the runner.

They are added to the rollout command by one decorator and reach the run through the click context,
so the command's own signature does not change.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import click

_META_KEY = "mlcanary.steering"


def _urls(option: str, values: Any) -> Any:
    from mlcanary.components.rollout_spec import webhook_url_problem

    for url in [values] if isinstance(values, str) else values or ():
        problem = webhook_url_problem(url)
        if problem:
            click.echo(f"error: {option}: {problem}", err=True)
            sys.exit(2)
    return values


def steering_options(command):
    """Decorate the rollout command: its callback gets the same arguments as before."""

    @click.option("--force", "steer_force", is_flag=True,
                  help="Take the endpoint over from another rollout that holds it (recorded as a takeover; "
                       "that rollout stops with exit 4 without changing anything).")
    @click.option("--notify", "steer_notify", multiple=True, metavar="URL",
                  callback=lambda _c, _p, v: _urls("--notify", v),
                  help="Repeatable: POST a JSON event per decision here (rollout id, endpoint, step, traffic, "
                       "judge values, outcome). A failing webhook is reported, never stops the rollout.")
    @click.option("--confirm-promotion", "steer_confirm", metavar="URL",
                  callback=lambda _c, _p, v: _urls("--confirm-promotion", v) if v else v,
                  help="POST before each promotion; anything but a 2xx answer holds the step (halted after "
                       "--max-hold intervals).")
    @functools.wraps(command)
    def wrapped(*args, steer_force: bool, steer_notify: tuple[str, ...], steer_confirm: str | None, **kwargs):
        click.get_current_context().meta[_META_KEY] = {
            "force": steer_force, "notify": list(steer_notify), "confirm": steer_confirm}
        return command(*args, **kwargs)

    return wrapped


def steering_for(plan: Any, applier: Any, client: Any, stack: str | None, record: Path | None):
    """The runner's steering: the endpoint's hold (local: in the runtime's state directory; azure: in a
    user state folder keyed by the stack), the webhooks of the flags or of `mlcanary:rollout`."""
    from mlcanary.local_runtime import lease
    from mlcanary.rollout.notify import Confirmer, Notifier
    from mlcanary.rollout.steering import HeldSteering

    ctx = click.get_current_context(silent=True)
    chosen = (ctx.meta.get(_META_KEY) if ctx else None) or {}
    config = plan.start.spec.rollout
    notify = chosen.get("notify") or (config.notify if config else None) or []
    confirm = chosen.get("confirm") or (config.confirm_promotion if config else None)
    if client is not None:
        directory, lock_root = lease.lease_dir(client.root), client.root
    else:
        directory, lock_root = lease.stack_lease_dir(stack or "default"), None
    steering = HeldSteering(directory, plan, applier, record=record, force=bool(chosen.get("force")),
                            lock_root=lock_root, notifier=Notifier(notify) if notify else None,
                            confirmer=Confirmer(confirm) if confirm else None,
                            resources=_resource_watch(plan, client), reader=_azure_reader(plan, client))
    refused = steering.begin(None)  # before the live display: a held endpoint is an error line, exit 1
    if refused is not None:
        click.echo(f"error: {refused.message}", err=True)
        sys.exit(refused.exit_code)
    return steering


def _resource_watch(plan: Any, client: Any):
    """Resource rules: on the local target from the workers' processes, on Azure from the deployments'
    utilisation metrics; a rule that cannot be judged is refused (exit 2) rather than silently passed."""
    import time

    from mlcanary.rollout.resources import LocalResources, ResourceWatch

    rules = tuple(rule for rule in plan.options.rules if rule.is_resource)
    if not rules:
        return None
    options = plan.options
    source = LocalResources(client, plan.endpoint) if client is not None else _azure_resources(plan, rules)
    return ResourceWatch(rules, source, options.to, options.baseline, options.interval_s, time.monotonic)


def _azure_resources(plan: Any, rules: tuple):
    import os

    from mlcanary.rollout.azure_read_back import endpoint_resource_id
    from mlcanary.rollout.resources import AzureResources, azure_resource_problem

    endpoint = plan.start.spec.endpoint
    options = plan.options
    types = {name: endpoint.deployments[name].instance_type for name in (options.to, options.baseline)}
    problem = azure_resource_problem(rules, types)
    if problem:
        click.echo(f"error: {problem}; nothing was changed", err=True)
        sys.exit(2)
    from azure.identity import DefaultAzureCredential
    from azure.monitor.querymetrics import MetricsClient

    ctx = click.get_current_context(silent=True)
    region = (ctx.params.get("metrics_region") if ctx else None) or plan.start.config.get("azure-native:location")
    subscription = os.environ.get("ARM_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID") or ""
    client = MetricsClient(f"https://{region}.metrics.monitor.azure.com", DefaultAzureCredential())
    return AzureResources(client, endpoint_resource_id(subscription, endpoint.resource_group, endpoint.workspace,
                                                       endpoint.name), [options.to, options.baseline])


def _azure_reader(plan: Any, client: Any):
    """On Azure, what runs is read from ARM (the endpoint's traffic, its deployments' instance counts)."""
    import os

    if client is not None:
        return None  # the local applier reads back itself
    from mlcanary.components.arm import ArmClient
    from mlcanary.components.azure_args import cloud_name
    from mlcanary.rollout.azure_read_back import AzureReadBack, endpoint_resource_id

    endpoint = plan.start.spec.endpoint
    subscription = os.environ.get("ARM_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID") or ""
    return AzureReadBack(ArmClient(cloud=cloud_name(plan.start.config.get("azure-native:environment"))),
                         endpoint_resource_id(subscription, endpoint.resource_group, endpoint.workspace, endpoint.name))
