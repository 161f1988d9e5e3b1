"""`mlcanary local up|status|start|stop|down|keys|metrics`: the local runtime's endpoints from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from mlcanary.cli_support import (
    EXIT_INTERRUPTED, echo_json, fail, format_option, load_local_stage, no_such_endpoint, policy_settings,
    require_running, runtime_client, runtime_errors, state_dir_option,
)
from mlcanary.console import output_console


@click.group()
def local() -> None:
    """Serve endpoints on this machine: the local target, no Azure and no Pulumi CLI needed.

    Deployments run the real Azure ML inference server (azureml-inference-server-http) with their
    scoring script and model, in this project's Python environment: conda files and images of
    Azure environments are not built locally. Everything listens on 127.0.0.1 only.
    """



@local.command("up")
@click.argument("stage_file", type=click.Path(path_type=Path))
@click.option(
    "--policy-pack-config", type=click.Path(path_type=Path),
    help="Policy levels and knobs, as for `mlcanary check` (see policies/policy-config.sample.json).",
)
@click.option("--preview", is_flag=True, help="Print what would change (deployments, traffic) and apply nothing.")
@click.option("--no-wait", is_flag=True, help="Fail at once if another `local up` is changing the runtime, "
              "instead of waiting for it to finish.")
@click.option("--force", is_flag=True, help="Apply even while a rollout holds the endpoint: takes its hold over "
              "(recorded in its history; the rollout stops without changing anything more).")
@format_option
@state_dir_option
def local_up(stage_file: Path, policy_pack_config: Path | None, preview: bool, no_wait: bool, force: bool,
             output_format: str, state_dir: Path | None) -> None:
    """Apply STAGE_FILE (mlcanary:target: local) to the local runtime, starting it if needed.

    First the gate `mlcanary check` applies: the policy pack on the stage, and the transition rules
    on the step from the running endpoint to the stage. A mandatory violation refuses the stage
    (exit 1) before anything changes; advisories are printed. Then, in order: new or changed
    deployments (waiting until every instance is healthy), traffic, removed deployments (drained).
    A deployment whose init() fails refuses the stage and traffic stays as it was.
    One stage change at a time: a second `local up` waits for the first (and says so), or with
    --no-wait fails at once. An endpoint a running `mlcanary rollout` holds is refused at once
    (exit 1, naming the rollout) unless --force; a rollout that died is detected and its hold taken over.
    """
    from mlcanary.local_runtime.interrupts import sigterm_interrupts
    from mlcanary.local_runtime.stage_lock import StageLocked, stage_lock

    stack = load_local_stage(stage_file)
    settings = policy_settings(policy_pack_config)
    client = runtime_client(state_dir)
    if not preview:
        _refuse_if_held(client.root, stack.endpoint.name, force)
    try:
        with sigterm_interrupts():
            # One hold from the gate's judgement to the end of the apply: no other stage lands in between.
            with stage_lock(client.root, str(stage_file), not no_wait, lambda message: click.echo(message, err=True)):
                _gate_and_apply(stage_file, stack, client, settings, preview, output_format, force)
    except StageLocked as err:
        fail(str(err))
    except KeyboardInterrupt:  # before the apply began (waiting for the lock, judging): nothing changed
        fail("cancelled before the stage changed anything", EXIT_INTERRUPTED)


def _refuse_if_held(root: Path, endpoint: str, force: bool) -> None:
    """A running rollout's endpoint is refused at once, before the gate's work (exit 1)."""
    from mlcanary.local_runtime import lease

    try:
        lease.refuse_at_once(root, endpoint, force)
    except lease.EndpointHeld as err:
        fail(str(err))


def _gate_and_apply(stage_file: Path, stack, client, settings, preview: bool, output_format: str,
                    force: bool = False) -> None:
    from mlcanary.local_runtime.apply import ApplyCancelled, apply_stage, plan_of

    name = stack.endpoint.name
    running = _running(client, name)
    violations = _gate(stage_file, stack.endpoint, running, settings)
    refused = any(v.enforcementLevel == "mandatory" for v in violations)
    document = {"stage": str(stage_file), "endpoint": name, "violations": [v.as_json() for v in violations]}
    if output_format == "text":
        from mlcanary.violation_text import echo_violations

        echo_violations(violations)
    if preview or refused:
        plan = plan_of(stack.endpoint, running)
        if output_format == "json":
            echo_json({**document, "result": "refused" if refused else "preview", "changes": plan.as_json()})
        else:
            click.echo(f"refused {stage_file}; it would have changed endpoint {name}:" if refused
                       else f"would apply {stage_file} to endpoint {name}:")
            click.echo("\n".join(plan.lines()))
        if refused:
            fail(f"{stage_file}: refused by a mandatory policy (above); nothing was changed")
        return
    console = output_console()
    try:
        with console.status("starting the local runtime") as status:
            client.ensure_running()
            applied = apply_stage(stack, client, lambda message: status.update(message), judged=running,
                                  stage=str(stage_file), force=force)
    except ApplyCancelled as err:
        if output_format == "json":
            echo_json({**document, "result": "cancelled", "error": str(err)})
        fail(str(err), EXIT_INTERRUPTED)
    except runtime_errors() as err:
        if output_format == "json":
            echo_json({**document, "result": "refused", "error": str(err)})
        fail(str(err))
    endpoint_status = client.status()["endpoints"][name]
    if output_format == "json":
        echo_json({**document, "result": "applied", "scoringUri": applied.scoring_uri,
                    "changes": applied.plan.as_json(), "status": endpoint_status})
        return
    console.print(f"[green]applied[/] {stage_file}: endpoint [bold]{name}[/] at {applied.scoring_uri}")
    console.print("\n".join(applied.plan.lines()), markup=False, highlight=False)
    _print_status(console, {"endpoints": {name: endpoint_status}})


def _recorded_endpoints(client) -> list[str]:
    """Endpoints a stopped runtime's state holds (what `local start` would bring back)."""
    from mlcanary.local_runtime import paths

    if not paths.state_file(client.root).exists():
        return []  # no runtime ever kept state here; reading the state would import its record schemas (pydantic)
    from mlcanary.local_runtime.running import current_endpoints

    try:
        return sorted(current_endpoints(client))
    except runtime_errors() as err:
        fail(str(err))


def _running(client, endpoint: str) -> dict | None:
    """The endpoint as it runs now (or as a stopped runtime will restore it), or None when it is new."""
    from mlcanary.local_runtime.running import current_endpoints

    try:
        return current_endpoints(client).get(endpoint)
    except runtime_errors() as err:
        fail(str(err))


def _gate(stage_file: Path, spec, running: dict | None, settings) -> list:
    """The same judgement as `mlcanary check RUNNING STAGE`: the pack on the stage, the transition
    rules on the step from the running endpoint (none when the endpoint is new)."""
    from mlcanary.check import judge_stage, load_and_render
    from mlcanary.local_runtime.plan import running_endpoint

    loaded, render, error = load_and_render(stage_file)
    if error is not None:
        fail(error, 2)
    before = (f"{spec.name} as running", running_endpoint(spec.name, running)) if running is not None else None
    return judge_stage(str(stage_file), loaded, render, settings, before=before)


def _print_status(console, status: dict, only: str | None = None) -> None:
    from rich.table import Table

    for name, endpoint in status["endpoints"].items():
        if only and name != only:
            continue
        table = Table(title=f"{name}  {endpoint['scoringUri']}  (auth: {endpoint['authMode']})")
        for column in ("deployment", "state", "instances", "live %", "mirror %", "requests", "errors", "mirrored", "restarts"):
            table.add_column(column, justify="left" if column in ("deployment", "state") else "right")
        for dep, info in endpoint["deployments"].items():
            m = info["metrics"]
            table.add_row(
                dep, info["state"], f"{info['healthy']}/{info['instances']}",
                str(endpoint["traffic"].get(dep, 0)), str(endpoint["mirrorTraffic"].get(dep, 0)),
                str(m["requests"]), str(m["errors"]), str(m["mirrored"]), str(info["restarts"]),
            )
        console.print(table)


@local.command("status")
@click.argument("endpoint", required=False)
@format_option
@state_dir_option
def local_status(endpoint: str | None, output_format: str, state_dir: Path | None) -> None:
    """Show endpoints, deployments, traffic and request counts."""
    client = runtime_client(state_dir)
    if client.base_url() is None:
        recorded = _recorded_endpoints(client)
        if output_format == "json":
            echo_json({"running": False, "endpoints": {}, "recorded": recorded})
        elif recorded:
            click.echo(f"no local runtime is running; its state holds endpoint(s) {', '.join(recorded)}: "
                       "`mlcanary local start` brings them back, `mlcanary local down` deletes them")
        else:
            click.echo("no local runtime is running (start one with `mlcanary local up STAGE_FILE`)")
        return
    try:
        status = client.status()
    except runtime_errors() as err:
        fail(str(err))
    if endpoint and endpoint not in status["endpoints"]:
        fail(no_such_endpoint(endpoint, status))
    info = client.info()
    if output_format == "json":
        shown = {n: e for n, e in status["endpoints"].items() if not endpoint or n == endpoint}
        echo_json({"running": True, "endpoints": shown, "metricsAddress": info.get("metricsAddress"),
                   "metricsAddressTaken": info.get("metricsAddressTaken")})
        return
    if not status["endpoints"]:
        click.echo("the local runtime is running with no endpoints")
    _print_status(output_console(), status, endpoint)
    if info.get("metricsAddress"):
        click.echo(_metrics_line(info))


@local.command("start")
@click.option("--metrics-address", envvar="MLCANARY_METRICS_ADDRESS",
              help="HOST:PORT on loopback where GET /metrics is served without a token, or `off` "
              "(default: $MLCANARY_METRICS_ADDRESS, else 127.0.0.1:9577).")
@state_dir_option
def local_start(metrics_address: str | None, state_dir: Path | None) -> None:
    """Start the local runtime from its state, without applying a stage, and say what it restored.

    The runtime brings back every endpoint (same keys and scoring URIs), deployment and traffic
    split of its state directory before it answers; a deployment that cannot start again shows as
    failed with the reason.
    """
    from mlcanary.local_runtime import metrics_address as metrics

    if metrics_address is not None:
        try:
            metrics.parse(metrics_address)
        except metrics.BadMetricsAddress as err:
            fail(f"--metrics-address / {metrics.ENV_VAR}: {err}", 2)
    client = runtime_client(state_dir)
    client.metrics_address = metrics_address
    if client.base_url() is not None:
        info = client.info()
        click.echo(f"the local runtime for {client.root} is already running (pid {info.get('pid')})")
        asked = metrics.parse(metrics_address) if metrics_address else None
        serving = metrics.parse(info["metricsAddress"]) if info.get("metricsAddress") else None
        if metrics_address and asked != serving and not (asked and serving and asked[1] == 0):
            click.echo(f"it serves metrics at {info.get('metricsAddress') or 'no address (off)'}, not "
                       f"{metrics_address}: `mlcanary local stop`, then start it again, to change that", err=True)
    else:
        try:
            with output_console().status("restoring the local runtime from its state"):
                client.ensure_running()
        except runtime_errors() as err:
            fail(str(err))
        info = client.info()
        endpoints = client.status()["endpoints"]
        click.echo(f"started the local runtime for {client.root} (pid {info.get('pid')}): restored "
                   f"{len(endpoints)} endpoint(s)" + (":" if endpoints else ""))
        for name, endpoint in endpoints.items():
            deployments = ", ".join(f"{dep} {d['state']} {d['healthy']}/{d['instances']}"
                                    for dep, d in endpoint["deployments"].items()) or "no deployments"
            traffic = ", ".join(f"{k} {v}%" for k, v in endpoint["traffic"].items() if v) or "none"
            mirror = ", ".join(f"{k} {v}%" for k, v in endpoint["mirrorTraffic"].items() if v)
            click.echo(f"  {name} at {endpoint['scoringUri']}: {deployments}; live traffic: {traffic}"
                       + (f"; mirror: {mirror}" if mirror else ""))
            for dep, d in endpoint["deployments"].items():
                if d["state"] == "failed":
                    click.echo(f"    {dep}: {d['error'].splitlines()[0] if d['error'] else 'failed'}")
    if info.get("metricsAddress"):
        click.echo(_metrics_line(info))


def _metrics_line(info: dict) -> str:
    """Where a running runtime serves /metrics, and why not at the address asked for if it was taken."""
    line = f"metrics: http://{info['metricsAddress']}/metrics"
    if info.get("metricsAddressTaken"):
        line += f" (the address asked for, {info['metricsAddressTaken']}, is held by another program or runtime)"
    return line


@local.command("stop")
@state_dir_option
def local_stop(state_dir: Path | None) -> None:
    """Stop the local runtime and its workers, keeping its state: `mlcanary local start` (or any
    command that needs the runtime) brings back the same endpoints, keys, deployments and traffic."""
    client = runtime_client(state_dir)
    if client.base_url() is None:
        click.echo("no local runtime is running")
        return
    try:
        client.shutdown()
    except runtime_errors() as err:
        fail(str(err))
    click.echo(f"stopped the local runtime for {client.root}; its state is kept (`mlcanary local start` restores it)")


@local.command("down")
@click.argument("endpoint", required=False)
@state_dir_option
def local_down(endpoint: str | None, state_dir: Path | None) -> None:
    """Delete ENDPOINT, or without it every endpoint, and stop the runtime."""
    client = runtime_client(state_dir)
    if client.base_url() is None:
        recorded = _recorded_endpoints(client)
        if not recorded:
            click.echo("no local runtime is running")
            return
        # A stopped (or crashed) runtime's endpoints are still in its state: bring it back to delete them.
        click.echo(f"no local runtime is running; its state holds endpoint(s) {', '.join(recorded)}: restoring to delete them",
                   err=True)
    try:
        client.ensure_running()
        if endpoint:
            client.delete_endpoint(endpoint)
            click.echo(f"deleted endpoint {endpoint}")
            return
        for name in client.status()["endpoints"]:
            client.delete_endpoint(name)
            click.echo(f"deleted endpoint {name}")
        client.shutdown()
        click.echo("stopped the local runtime")
    except runtime_errors() as err:
        fail(str(err))


@local.command("keys")
@click.argument("endpoint")
@format_option
@state_dir_option
def local_keys(endpoint: str, output_format: str, state_dir: Path | None) -> None:
    """Print ENDPOINT's primary and secondary keys (send one as `Authorization: Bearer <key>`)."""
    client = runtime_client(state_dir)
    require_running(client)
    try:
        keys = client.keys(endpoint)
    except runtime_errors() as err:
        fail(str(err))
    if output_format == "json":
        echo_json({"primaryKey": keys["primaryKey"], "secondaryKey": keys["secondaryKey"]})
        return
    click.echo(f"primaryKey: {keys['primaryKey']}\nsecondaryKey: {keys['secondaryKey']}")


@local.command("metrics")
@state_dir_option
def local_metrics(state_dir: Path | None) -> None:
    """Print the runtime's per-deployment metrics in the Prometheus text format.

    Requests by deployment and status code, mirrored requests, and a latency histogram; the same
    text is served without a token at http://127.0.0.1:9577/metrics for a Prometheus scraper (see
    `mlcanary local start --help` to move or turn off that address; when another program or
    runtime holds it, the runtime serves on a free port and this command says which, on stderr).
    """
    client = runtime_client(state_dir)
    require_running(client)
    try:
        text = client.metrics()
        info = client.info()
    except runtime_errors() as err:
        fail(str(err))
    click.echo(text, nl=False)
    if info.get("metricsAddressTaken"):
        click.echo(_metrics_line(info), err=True)
