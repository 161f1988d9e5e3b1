"""`mlcanary local ...`, `invoke`, `logs`, `rehearse`: the local target from the command line.

Heavy imports (rich, the runtime client) happen inside the commands, so `mlcanary check` does not
pay for them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


class WholeNumber(click.IntRange):
    """click's INT takes any Unicode digits ("１００" is 100): here only ASCII digits are numbers."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not (value.strip().lstrip("+-").isascii()):
            self.fail(f"{value!r} is not a whole number (ASCII digits 0-9).", param, ctx)
        return super().convert(value, param, ctx)


STATE_DIR_HELP = "Where the local runtime keeps its state (default: $MLCANARY_STATE_DIR, else ~/.mlcanary/local)."
state_dir_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), envvar="MLCANARY_STATE_DIR", help=STATE_DIR_HELP
)


def _client(state_dir: Path | None):
    try:
        import aiohttp  # noqa: F401 - the runtime's router
        import azureml_inference_server_http  # noqa: F401 - the workers
    except ImportError as err:
        _fail(f"the local target needs the `local` extra ({err.name} is missing): pip install -e '.[local]'", 2)
    from mlcanary.local_runtime.client import RuntimeClient
    from mlcanary.local_runtime.paths import state_dir as resolve

    try:
        root = resolve(state_dir)
    except (RuntimeError, OSError):  # resolve() on a symlink loop
        _fail(f"--state-dir {state_dir}: is a symlink loop (too many levels of symbolic links)", 2)
    problem = _state_dir_problem(root)
    if problem:
        _fail(f"--state-dir {root}: {problem}", 2)
    return RuntimeClient(root)


def _state_dir_problem(root: Path) -> str | None:
    """Why `root` cannot be (or become) the state directory: it, or the nearest part of it that
    exists, must be a directory."""
    import stat

    for existing in (root, *root.parents):
        try:
            mode = existing.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):  # not there yet, or under a file: look higher
            continue
        except OSError as err:
            return f"cannot use {existing}: {err.strerror}"
        if stat.S_ISDIR(mode):
            return None
        return "is not a directory" if existing == root else f"{existing} is not a directory"
    return None


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load(path: Path):
    from mlcanary.components.spec import SpecError
    from mlcanary.components.stage_file import StageFileError
    from mlcanary.local_runtime.rehearse import load_stage

    try:
        stage = load_stage(path)
    except StageFileError as err:
        _fail(str(err), 2)
    except SpecError as err:
        _fail(f"{path}: invalid stack config:\n" + "\n".join(f"  {p}" for p in err.problems), 2)
    if stage.target != "local":  # unusable here, like an invalid stage: refused before anything starts
        _fail(f"{path}: this stage targets {stage.target!r}; the local target applies local-target stages "
              "(mlcanary:target: local)", 2)
    return stage


def _request_body(path: Path) -> bytes:
    """A request file, read with a bound (a device or FIFO is refused, not read forever)."""
    from mlcanary.components.user_files import UnusableFile, read_request_body

    try:
        return read_request_body(path)
    except UnusableFile as err:
        _fail(str(err), 2)


def _no_such_endpoint(endpoint: str, status: dict) -> str:
    from mlcanary.components.rules import shown

    return f"endpoint {shown(endpoint)} not found; endpoints: {', '.join(status['endpoints']) or 'none'}"


def _console():
    """A terminal's own width; off a terminal (a file, a pipe) no line is wrapped: lines and tables are
    as wide as their content, so scripts can grep whole lines."""
    from mlcanary.console import output_console

    return output_console()


format_option = click.option(
    "--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json: one JSON document on stdout, for scripts.",
)


def _echo_json(document) -> None:
    click.echo(json.dumps(document, indent=2))


def _errors():
    """The runtime's refusals and a runtime that is not there, as clean errors."""
    from mlcanary.local_runtime.apply import StageRefused
    from mlcanary.local_runtime.client import NotRunning, RuntimeRefusal
    from mlcanary.local_runtime.running import StateUnreadable

    return (StageRefused, NotRunning, RuntimeRefusal, StateUnreadable)


@click.group()
def local() -> None:
    """Serve endpoints on this machine: the local target, no Azure and no Pulumi CLI needed.

    Deployments run the real Azure ML inference server (azureml-inference-server-http) with their
    scoring script and model, in this project's Python environment: conda files and images of
    Azure environments are not built locally. Everything listens on 127.0.0.1 only.
    """


EXIT_INTERRUPTED = 130  # as a shell reports a Ctrl-C; SIGTERM during an apply is handled the same way


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

    stack = _load(stage_file)
    settings = _policy_settings(policy_pack_config)
    client = _client(state_dir)
    try:
        with sigterm_interrupts():
            # One hold from the gate's judgement to the end of the apply: no other stage lands in between.
            with stage_lock(client.root, str(stage_file), not no_wait, lambda message: click.echo(message, err=True)):
                _gate_and_apply(stage_file, stack, client, settings, preview, output_format, force)
    except StageLocked as err:
        _fail(str(err))
    except KeyboardInterrupt:  # before the apply began (waiting for the lock, judging): nothing changed
        _fail("cancelled before the stage changed anything", EXIT_INTERRUPTED)


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
            _echo_json({**document, "result": "refused" if refused else "preview", "changes": plan.as_json()})
        else:
            click.echo(f"refused {stage_file}; it would have changed endpoint {name}:" if refused
                       else f"would apply {stage_file} to endpoint {name}:")
            click.echo("\n".join(plan.lines()))
        if refused:
            _fail(f"{stage_file}: refused by a mandatory policy (above); nothing was changed")
        return
    console = _console()
    try:
        with console.status("starting the local runtime") as status:
            client.ensure_running()
            applied = apply_stage(stack, client, lambda message: status.update(message), judged=running,
                                  stage=str(stage_file), force=force)
    except ApplyCancelled as err:
        if output_format == "json":
            _echo_json({**document, "result": "cancelled", "error": str(err)})
        _fail(str(err), EXIT_INTERRUPTED)
    except _errors() as err:
        if output_format == "json":
            _echo_json({**document, "result": "refused", "error": str(err)})
        _fail(str(err))
    endpoint_status = client.status()["endpoints"][name]
    if output_format == "json":
        _echo_json({**document, "result": "applied", "scoringUri": applied.scoring_uri,
                    "changes": applied.plan.as_json(), "status": endpoint_status})
        return
    console.print(f"[green]applied[/] {stage_file}: endpoint [bold]{name}[/] at {applied.scoring_uri}")
    console.print("\n".join(applied.plan.lines()), markup=False, highlight=False)
    _print_status(console, {"endpoints": {name: endpoint_status}})


def _recorded_endpoints(client) -> list[str]:
    """Endpoints a stopped runtime's state holds (what `local start` would bring back)."""
    from mlcanary.local_runtime.running import current_endpoints

    try:
        return sorted(current_endpoints(client))
    except _errors() as err:
        _fail(str(err))


def _policy_settings(path: Path | None):
    from mlcanary.check import policy_defaults
    from mlcanary.policy_config import PolicyConfigError, load_policy_config

    try:
        return load_policy_config(path, policy_defaults())
    except PolicyConfigError as err:
        _fail(str(err), 2)


def _running(client, endpoint: str) -> dict | None:
    """The endpoint as it runs now (or as a stopped runtime will restore it), or None when it is new."""
    from mlcanary.local_runtime.running import current_endpoints

    try:
        return current_endpoints(client).get(endpoint)
    except _errors() as err:
        _fail(str(err))


def _gate(stage_file: Path, spec, running: dict | None, settings) -> list:
    """The same judgement as `mlcanary check RUNNING STAGE`: the pack on the stage, the transition
    rules on the step from the running endpoint (none when the endpoint is new)."""
    from mlcanary.check import judge_stage, load_and_render
    from mlcanary.local_runtime.plan import running_endpoint

    loaded, render, error = load_and_render(stage_file)
    if error is not None:
        _fail(error, 2)
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
    client = _client(state_dir)
    if client.base_url() is None:
        recorded = _recorded_endpoints(client)
        if output_format == "json":
            _echo_json({"running": False, "endpoints": {}, "recorded": recorded})
        elif recorded:
            click.echo(f"no local runtime is running; its state holds endpoint(s) {', '.join(recorded)}: "
                       "`mlcanary local start` brings them back, `mlcanary local down` deletes them")
        else:
            click.echo("no local runtime is running (start one with `mlcanary local up STAGE_FILE`)")
        return
    try:
        status = client.status()
    except _errors() as err:
        _fail(str(err))
    if endpoint and endpoint not in status["endpoints"]:
        _fail(_no_such_endpoint(endpoint, status))
    if output_format == "json":
        shown = {n: e for n, e in status["endpoints"].items() if not endpoint or n == endpoint}
        _echo_json({"running": True, "endpoints": shown})
        return
    if not status["endpoints"]:
        click.echo("the local runtime is running with no endpoints")
    _print_status(_console(), status, endpoint)


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
            _fail(f"--metrics-address / {metrics.ENV_VAR}: {err}", 2)
    client = _client(state_dir)
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
            with _console().status("restoring the local runtime from its state"):
                client.ensure_running()
        except _errors() as err:
            _fail(str(err))
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
        click.echo(f"metrics: http://{info['metricsAddress']}/metrics")


@local.command("stop")
@state_dir_option
def local_stop(state_dir: Path | None) -> None:
    """Stop the local runtime and its workers, keeping its state: `mlcanary local start` (or any
    command that needs the runtime) brings back the same endpoints, keys, deployments and traffic."""
    client = _client(state_dir)
    if client.base_url() is None:
        click.echo("no local runtime is running")
        return
    try:
        client.shutdown()
    except _errors() as err:
        _fail(str(err))
    click.echo(f"stopped the local runtime for {client.root}; its state is kept (`mlcanary local start` restores it)")


@local.command("down")
@click.argument("endpoint", required=False)
@state_dir_option
def local_down(endpoint: str | None, state_dir: Path | None) -> None:
    """Delete ENDPOINT, or without it every endpoint, and stop the runtime."""
    client = _client(state_dir)
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
    except _errors() as err:
        _fail(str(err))


@local.command("keys")
@click.argument("endpoint")
@format_option
@state_dir_option
def local_keys(endpoint: str, output_format: str, state_dir: Path | None) -> None:
    """Print ENDPOINT's primary and secondary keys (send one as `Authorization: Bearer <key>`)."""
    try:
        keys = _client(state_dir).keys(endpoint)
    except _errors() as err:
        _fail(str(err))
    if output_format == "json":
        _echo_json({"primaryKey": keys["primaryKey"], "secondaryKey": keys["secondaryKey"]})
        return
    click.echo(f"primaryKey: {keys['primaryKey']}\nsecondaryKey: {keys['secondaryKey']}")


@local.command("metrics")
@state_dir_option
def local_metrics(state_dir: Path | None) -> None:
    """Print the runtime's per-deployment metrics in the Prometheus text format.

    Requests by deployment and status code, mirrored requests, and a latency histogram; the same
    text is served without a token at http://127.0.0.1:9577/metrics for a Prometheus scraper (see
    `mlcanary local start --help` to move or turn off that address).
    """
    try:
        click.echo(_client(state_dir).metrics(), nl=False)
    except _errors() as err:
        _fail(str(err))


@click.command()
@click.argument("endpoint")
@click.option("--request-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="JSON request body, e.g. samples/request.json.")
@click.option("--deployment", help="Send to this deployment (the azureml-model-deployment header), whatever its traffic.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: the answer's body on stdout, the answering deployment, status and latency on stderr; "
              "json: {status, deployment, latencyMs, body} on stdout.")
@state_dir_option
def invoke(endpoint: str, request_file: Path, deployment: str | None, output_format: str,
           state_dir: Path | None) -> None:
    """Score a request on a local ENDPOINT and print the response, like `az ml online-endpoint invoke`.

    Shows which deployment answered (the azureml-model-deployment header of the answer).
    """
    import time

    import requests

    from mlcanary.local_runtime.protocol import PIN_HEADER

    body = _request_body(request_file)
    client = _client(state_dir)
    try:
        status = client.status()
        if endpoint not in status["endpoints"]:
            _fail(_no_such_endpoint(endpoint, status))
        key = client.keys(endpoint)["primaryKey"]
    except _errors() as err:
        _fail(str(err))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if deployment:
        headers[PIN_HEADER] = deployment
    started = time.perf_counter()
    try:
        answer = requests.post(status["endpoints"][endpoint]["scoringUri"], data=body,
                               headers=headers, timeout=300)
    except requests.RequestException as err:
        from mlcanary.components.rules import shown

        _fail(f"no answer from endpoint {shown(endpoint)} ({type(err).__name__}): is the local runtime still running? "
              "See `mlcanary local status`")
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    answered_by = answer.headers.get(PIN_HEADER)
    if output_format == "json":
        try:
            answer_body = answer.json()
        except ValueError:
            answer_body = answer.text
        _echo_json({"status": answer.status_code, "deployment": answered_by, "latencyMs": latency_ms,
                    "body": answer_body})
    else:
        click.echo(answer.text)
        click.echo(f"answered by: {answered_by or '(no deployment)'}, HTTP {answer.status_code}, {latency_ms} ms",
                   err=True)
    if answer.status_code != 200:
        _fail(f"HTTP {answer.status_code} from {answered_by or endpoint}")


@click.command()
@click.argument("endpoint")
@click.option("--deployment", required=True, help="The deployment whose worker logs to show.")
@click.option("--lines", type=WholeNumber(min=1), default=50, show_default=True, help="Lines per instance.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as the instances write them (Ctrl-C ends).")
@click.option("--generation", help="A set of instances the deployment started earlier (a replaced version, "
              "a run before a restart); default: the one running, else the newest.")
@state_dir_option
def logs(endpoint: str, deployment: str, lines: int, follow: bool, generation: str | None,
         state_dir: Path | None) -> None:
    """Show the last log lines of each instance of a local deployment (init(), run(), errors).

    Read from the state directory's log files, so they are there when the runtime is not running
    too: each set of instances the deployment started has its own folder (a generation).
    """
    from mlcanary.components.rules import name_problems
    from mlcanary.local_runtime import worker_logs

    problems = name_problems("ENDPOINT", endpoint, "endpoint name") + name_problems(
        "--deployment", deployment, "deployment name")
    if generation is not None and (not generation.isascii() or not generation.replace("-", "").isalnum()):
        problems.append(f"--generation: {generation[:100]!r} is not a generation name (e.g. 20250101-120000-ab12)")
    if problems:
        _fail("\n".join(str(p) for p in problems), 2)
    client = _client(state_dir)
    running = None
    if client.base_url() is not None:
        try:
            info = client.status()["endpoints"].get(endpoint, {}).get("deployments", {}).get(deployment)
        except _errors():
            info = None
        running = Path(info["logDir"]) if info else None
    else:
        click.echo(f"(no local runtime answers for {client.root}: the log files as the last run left them)", err=True)
    try:
        folder = worker_logs.choose(client.root, endpoint, deployment, generation, running)
    except worker_logs.NoLogs as err:
        _fail(str(err))
    if running is None or folder != running:
        click.echo(f"(generation {folder.name})", err=True)
    click.echo(worker_logs.tail(folder, lines), nl=False)
    if follow:
        def running_now() -> Path | None:  # the runtime rolled the deployment over: follow the new instances
            if generation or running is None:
                return None
            try:
                info = client.status()["endpoints"].get(endpoint, {}).get("deployments", {}).get(deployment)
            except _errors():
                return None
            return Path(info["logDir"]) if info else None

        try:
            worker_logs.follow(folder, lambda line: click.echo(line), newer=running_now)
        except KeyboardInterrupt:
            pass


@click.command()
@click.argument("stage_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--requests", "count", type=WholeNumber(min=1), default=200, show_default=True,
              help="Probe requests sent at each stage.")
@click.option("--request-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=Path("samples/request.json"), show_default=True, help="JSON body of the probe requests.")
@click.option("--keep/--down", default=False, show_default=True,
              help="With --state-dir: keep the endpoint running after the last stage, or delete it.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object per stage with its deployments' configured and observed numbers.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Rehearse in the runtime of this state directory; refused if a stage's endpoint already exists "
              "there. Default: a private runtime in a temporary directory, removed when the rehearsal ends "
              "(also when it fails or is interrupted).")
@click.option(
    "--policy-pack-config", type=click.Path(path_type=Path),
    help="Policy levels and knobs, as for `mlcanary check` (see policies/policy-config.sample.json).",
)
def rehearse(stage_files: tuple[Path, ...], count: int, request_file: Path, keep: bool, output_format: str,
             state_dir: Path | None, policy_pack_config: Path | None) -> None:
    """Apply local STAGE_FILES in order and, at each stage, send probe traffic and compare.

    For every stage, a table per deployment, printed as the stage completes: configured vs observed
    live share, configured mirror share and mirrored requests, errors, and p50/p99 latency of the
    requests it answered. All stage files are validated before the first is applied. A rehearsal
    never touches an endpoint it did not create. Before anything starts, the stages pass the gate
    `mlcanary check` applies (policy pack on each stage, transition rules on each step): a mandatory
    violation refuses the rehearsal (exit 1), as it would refuse `local up` of that step.
    """
    from mlcanary.local_runtime.apply import ApplyCancelled
    from mlcanary.local_runtime.interrupts import sigterm_interrupts
    from mlcanary.local_runtime.sandbox import private_runtime

    stages = [(path, _load(path)) for path in stage_files]  # refuse an invalid stage before anything changes
    if keep and state_dir is None:
        _fail("--keep needs --state-dir: a private rehearsal runtime is removed when the rehearsal ends", 2)
    _gate_rehearsal(list(stage_files), _policy_settings(policy_pack_config), output_format)
    body = _request_body(request_file)
    console = _console()
    reports: list = []

    def completed(report) -> None:
        reports.append(report)
        if output_format == "text":
            _print_report(console, report)

    def run(client) -> None:
        from mlcanary.local_runtime.rehearse import rehearse as run_rehearsal

        with console.status("starting the local runtime") as status:
            client.ensure_running()
            run_rehearsal(stages, client, body, count, status.update, completed)

    endpoints = {stack.endpoint.name for _, stack in stages}
    try:
        with sigterm_interrupts():
            if state_dir is None:
                _client(None)  # the `local` extra is installed
                with private_runtime() as client:
                    run(client)
            else:
                _rehearse_in(_client(state_dir), endpoints, keep, run)
    except (KeyboardInterrupt, ApplyCancelled):  # an apply turns an interrupt into ApplyCancelled
        _finish_reports(console, reports, count, output_format)
        where = (f"deleted endpoint(s) {', '.join(sorted(endpoints))} it created" if state_dir
                 else "stopped its private runtime and removed its state directory")
        _fail(f"interrupted: the rehearsal {where}", 130)
    except _errors() as err:
        _finish_reports(console, reports, count, output_format)
        _fail(f"{err}\nThe rehearsal stopped after {len(reports)} of {len(stages)} stage(s) and removed what it started.")
    if _finish_reports(console, reports, count, output_format):
        sys.exit(1)


def _gate_rehearsal(stage_files: list[Path], settings, output_format: str) -> None:
    """The stages and the steps between them, judged as `mlcanary check STAGE_FILES` judges them."""
    from mlcanary.check import check_stages
    from mlcanary.violation_text import echo_violations

    report = check_stages(stage_files, settings)
    if report.errors:
        _fail(str(report.errors[0]), 2)
    if output_format == "text":
        echo_violations(report.violations)
    if report.count("mandatory"):
        refused = [f"{v.stage}: {v.policy}: {v.message}" for v in report.violations if v.enforcementLevel == "mandatory"]
        _fail("the rehearsal is refused by the gate `mlcanary check` applies; nothing was started:\n"
              + "\n".join(f"  {line}" for line in refused))


def _rehearse_in(client, endpoints: set[str], keep: bool, run) -> None:
    """Rehearse in a runtime of the user's: only endpoints that are not there yet, removed again afterwards
    (unless --keep and the rehearsal succeeded); a runtime started for the rehearsal is stopped again."""
    from mlcanary.local_runtime.interrupts import interrupts_ignored
    from mlcanary.local_runtime.sandbox import existing_endpoints

    from mlcanary.local_runtime.lease import EndpointHeld, refuse_if_held

    try:
        refuse_if_held(client.root, endpoints, "a rehearsal")
        taken = endpoints & existing_endpoints(client)
    except (*_errors(), EndpointHeld) as err:
        _fail(str(err))
    if taken:
        _fail(f"endpoint(s) {', '.join(sorted(taken))} already exist in {client.root}; a rehearsal only touches "
              "endpoints it creates: rehearse without --state-dir (a private runtime), or delete them first", 1)
    started_here = client.base_url() is None
    succeeded = False
    try:
        run(client)
        succeeded = True
    finally:
        if not (keep and succeeded) and client.base_url() is not None:
            with interrupts_ignored():
                for name in endpoints & set(client.status()["endpoints"]):
                    client.delete_endpoint(name)
                if started_here and not client.status()["endpoints"]:
                    client.shutdown()  # leave the machine as the rehearsal found it


def _finish_reports(console, reports: list, count: int, output_format: str) -> int:
    """JSON of the stages rehearsed so far, or the summary line (the tables are already printed);
    the number of failed or unrouted probe requests."""
    failed = sum(d.errors for r in reports for d in r.deployments) + sum(r.unrouted for r in reports)
    if output_format == "json":
        _echo_json([_report_json(r) for r in reports])
    elif reports:
        console.print(f"Rehearsed {len(reports)} stage(s), {count} probe requests each: "
                      + ("[green]no errors[/]" if not failed else f"[red]{failed} failed or unrouted request(s)[/]"))
    return failed


def _report_json(report) -> dict:
    return {
        "stage": report.stage,
        "requests": report.requests,
        "unrouted": report.unrouted,
        "deployments": {
            d.name: {
                "liveConfigured": d.configured_live, "liveObserved": round(d.observed_live(report.requests), 2),
                "mirrorConfigured": d.configured_mirror, "mirrored": d.mirrored, "errors": d.errors,
                "p50Ms": d.percentile(50), "p99Ms": d.percentile(99),
            }
            for d in report.deployments
        },
    }


def _print_report(console, report) -> None:
    from rich.table import Table

    table = Table(title=f"{report.stage}  ({report.requests} requests)")
    for column in ("deployment", "live set", "live seen", "mirror set", "mirrored", "errors", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "deployment" else "right")
    ms = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for d in report.deployments:
        table.add_row(
            d.name, f"{d.configured_live}%", f"{d.observed_live(report.requests):.1f}%", f"{d.configured_mirror}%",
            str(d.mirrored), str(d.errors), ms(d.percentile(50)), ms(d.percentile(99)),
        )
    if report.unrouted:
        table.add_row("(no deployment)", "", f"{100 * report.unrouted / report.requests:.1f}", "", "", str(report.unrouted), "", "")
    console.print(table)


def register(group: click.Group) -> None:
    for command in (local, invoke, logs, rehearse):
        group.add_command(command)
