"""`mlcanary rollout`: promote a deployment step by step, judged by live metrics, rolled back by itself."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from mlcanary.cli_support import state_dir_option


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _steps(value: str | None) -> list | None:
    if value is None:
        return None
    return [int(p) if p.strip().isdigit() else p.strip() for p in value.split(",")]


@click.command()
@click.argument("stage_file", type=click.Path(path_type=Path))
@click.option("--to", "to", help="The deployment to promote (it must exist in STAGE_FILE).")
@click.option("--from", "from_", help="The baseline (default: the deployment with the most live traffic).")
@click.option("--steps", help="Live % for --to, in order, ending at 100 (default 10,25,50,100).")
@click.option("--interval", help="The least time each step is held and judged: 30s, 2m (default 30s).")
@click.option("--mirror", type=int, help="Mirror this % of live traffic to --to before any live traffic.")
@click.option("--mirror-for", help="How long the mirror phase lasts (judged on the mirrored requests).")
@click.option("--bake", help="Hold at 100 % and keep judging this long before finishing.")
@click.option("--delete-old/--keep-old", "delete_old", default=None, help="Finish by removing the baseline (after --bake).")
@click.option("--rule", "rules", multiple=True,
              help="Repeatable: 'error_rate < 0.02', 'latency_p99_ms < 500', 'error_rate_ratio < 1.5', "
                   "'latency_p90_ratio < 1.2' (ratio = target / baseline).")
@click.option("--judge", type=click.Choice(["sequential", "threshold"]), help="sequential (default): anytime-valid "
              "test of target vs baseline; threshold: Flagger's per-interval check.")
@click.option("--alpha", type=float, help="The sequential judge's false-rollback bound (default 0.05).")
@click.option("--min-requests", type=int, help="A step is not promoted before the target served this many requests in it (default 100).")
@click.option("--max-hold", type=int, help="Intervals a step may wait for enough requests before the rollout halts (default 3).")
@click.option("--failure-limit", type=int, help="threshold judge: failed checks before rollback (Flagger's threshold, default 1).")
@click.option("--load", "load_rps", type=click.FloatRange(min=0.1), help="Send this many requests/s from this process (local target).")
@click.option("--request-file", type=click.Path(path_type=Path), help="JSON body of the --load requests.")
@click.option("--record", type=click.Path(path_type=Path), help="Append one JSON line per judgement and decision here.")
@click.option("--plot", type=click.Path(path_type=Path), help="Draw traffic, error rate and latency over time into this PNG.")
@click.option("--resume", is_flag=True, help="Continue the interrupted rollout of --record.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON document on stdout, the outcome (decision, exitCode, message, step, failure, "
              "eValues, clientRequests, record, plot), or with --plan-only the plan; progress goes to stderr.")
@click.option("--plan-only", is_flag=True, help="Print the derived stages, run them all through the gate, change nothing.")
@click.option("--write-stages", type=click.Path(path_type=Path), help="Write the derived stages as stage files into this folder.")
@click.option("--policy-pack-config", type=click.Path(path_type=Path), help="Policy levels and knobs for the gate (as `check`).")
@click.option("--tick", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="Seconds between judged windows.")
@click.option("--stack", help="azure target: the Pulumi stack to update through the Automation API.")
@click.option("--metrics-region", help="azure target: the region of the endpoint's metrics (default: the endpoint's "
              "own region, or its workspace's, read from Azure).")
@state_dir_option
def rollout(stage_file: Path, to, from_, steps, interval, mirror, mirror_for, bake, delete_old, rules, judge, alpha,
            min_requests, max_hold, failure_limit, load_rps, request_file, record, plot, resume, output_format,
            plan_only, write_stages, policy_pack_config, tick, stack, metrics_region, state_dir) -> None:
    """Promote --to step by step from the stage STAGE_FILE, judged by live metrics, rolled back by itself.

    Every derived step passes the same gate as a hand-made stage (spec, policy pack, transition rules)
    before anything is applied. The plan may also live in the stack config under mlcanary:rollout
    (keys as these options, camelCase); flags override it.

    Exit codes: 0 promoted; 1 rolled back (a rule or the judge failed); 2 refused before any change;
    3 halted as inconclusive (not enough data); 130/143 interrupted (left at the last good step).
    """
    from mlcanary.check import policy_defaults
    from mlcanary.policy_config import PolicyConfigError, load_policy_config
    from mlcanary.rollout.plan import PlanError, gate, load_plan, write_stages as write

    flags = {"to": to, "from": from_, "steps": _steps(steps), "interval": interval, "mirror": mirror,
             "mirrorFor": mirror_for, "bake": bake, "deleteOld": delete_old, "rule": list(rules) or None,
             "judge": judge, "alpha": alpha, "minRequests": min_requests, "maxHold": max_hold,
             "failureLimit": failure_limit}
    try:
        settings = load_policy_config(policy_pack_config, policy_defaults())
        plan = load_plan(stage_file, flags)
    except (PolicyConfigError, PlanError) as err:
        _fail(str(err), 2)
    refused = gate(plan, settings)
    if refused:
        _fail("the gate refuses the plan; nothing was changed:\n" + "\n".join(f"  {r}" for r in refused), 2)
    for advisory in plan.advisories:
        click.echo(f"warning: {advisory}", err=True)
    if plan_only or write_stages:
        written = write(plan, write_stages) if write_stages else []
        azure = _azure_plan(plan, stack, metrics_region) if plan.target == "azure" and stack else None
        _print_plan(plan, written, output_format, azure)
        return
    if load_rps and not request_file:
        _fail("--load needs --request-file (the JSON body to send)", 2)
    body = None
    if request_file:
        from mlcanary.components.user_files import UnusableFile, read_request_body

        try:
            body = read_request_body(request_file)
        except UnusableFile as err:
            _fail(str(err), 2)
    if resume and not record:
        _fail("--resume needs --record (the record of the interrupted rollout)", 2)
    for option, path in (("--record", record), ("--plot", plot)):
        if path is not None and not path.parent.is_dir():
            _fail(f"{option} {path}: the folder {path.parent} does not exist", 2)
        if path is not None and path.is_dir():
            _fail(f"{option} {path}: is a folder; give a file name", 2)
    missing = _missing_modules(plan.target, plot)
    if missing:
        _fail(f"{missing} is not installed: pip install -e '.[local,rollout]'", 2)
    if plan.target == "azure" and load_rps:
        _fail("--load sends traffic on the local target only; on Azure, judge real traffic", 2)
    sys.exit(_run(plan, settings, policy_pack_config, record, plot, resume, output_format, load_rps, body,
                  tick, stack, metrics_region, state_dir))


def _missing_modules(target: str, plot: Path | None) -> str | None:
    import importlib.util

    needed = ["matplotlib"] if plot else []
    needed += ["azure.monitor.querymetrics"] if target == "azure" else ["prometheus_client"]
    return next((name for name in needed if importlib.util.find_spec(name.split(".")[0]) is None
                 or importlib.util.find_spec(name) is None), None)


def _run(plan, settings, policy_pack_config, record, plot, resume, output_format, load_rps, body, tick,
         stack, metrics_region, state_dir) -> int:
    from rich.live import Live

    from mlcanary.console import output_console

    from mlcanary.rollout.judges import make_judge
    from mlcanary.rollout.record import Recorder, RecordError, read_record, resume_point
    from mlcanary.rollout.runner import Runner

    options = plan.options
    plan_json = {"endpoint": plan.endpoint, "stageFile": str(plan.stage_file), "target": plan.target,
                 **options.as_json(), "stages": [{"label": s.label, "traffic": s.traffic, "mirror": s.mirror_traffic}
                                                 for s in plan.steps],
                 "rollback": plan.rollback.traffic}
    start_index, judge_state, served = 0, None, 0
    if resume:
        try:
            start_index, judge_state, served = resume_point(read_record(record), plan_json)
        except RecordError as err:
            _fail(str(err), 2)
    applier, source, client = _edges(plan, policy_pack_config, stack, metrics_region, state_dir)
    recorder = Recorder(record, append=resume)
    recorder.write("plan", plan=plan_json, resumedAt=start_index if resume else None)
    judge = make_judge(options.judge, options.alpha, options.rules, options.failure_limit)
    console = output_console(stderr=output_format == "json")
    load = None

    def start_load() -> None:
        nonlocal load
        if load_rps:
            from mlcanary.rollout.load import Load

            endpoint = client.status()["endpoints"][plan.endpoint]
            load = Load(endpoint["scoringUri"], client.keys(plan.endpoint)["primaryKey"], body, load_rps)
            load.start()

    last_line = [""]

    def print_line(view) -> None:
        line = f"[{view.index}/{view.steps}] {view.step or 'start'}: {view.status}"
        if line != last_line[0] and not view.status.startswith("judging"):
            console.print(line, highlight=False)
            last_line[0] = line

    live = Live(console=console, refresh_per_second=4, transient=False) if console.is_terminal else None
    runner = Runner(plan, applier, source, judge, recorder, tick_s=tick,
                    on_update=(lambda view: live.update(_table(view))) if live else print_line)
    try:
        if live:
            live.start()
        outcome = runner.run(start_index, judge_state, served, on_started=start_load)
    finally:
        if live:
            live.stop()
        report = load.stop() if load else None
        recorder.close()
    if report is not None:
        recorder.events.append({"time": round(time.time(), 3), "event": "load", "sent": report.sent,
                                "failed": report.failed})
    if plot:
        from mlcanary.rollout.plot import plot_record

        events = read_record(record) if record else recorder.events
        try:
            plot_record(events, plot, f"mlcanary rollout {plan.endpoint}: {options.baseline} -> {options.to} "
                                      f"({outcome.decision})")
        except (OSError, ValueError) as err:  # the rollout's outcome stands; only the picture is missing
            click.echo(f"warning: could not draw {plot}: {err}", err=True)
            plot = None
    _print_outcome(console, outcome, runner.view, report, record, plot, output_format, options.alpha)
    return outcome.exit_code


def _edges(plan, policy_pack_config, stack, metrics_region, state_dir):
    """The applier and metric source for the stage's target."""
    from mlcanary.rollout.appliers import ApplyError, LocalApplier, PulumiApplier

    if plan.target == "local":
        from mlcanary.cli_support import runtime_client
        from mlcanary.local_runtime.client import NotRunning
        from mlcanary.rollout.sources import LocalSource

        client = runtime_client(state_dir)
        try:
            client.ensure_running()
        except NotRunning as err:
            _fail(str(err), 1)
        return LocalApplier(client), LocalSource(client, plan.endpoint), client
    from mlcanary.rollout.sources import azure_source

    if not stack:
        _fail("an azure-target rollout runs `pulumi up` through the Automation API: give --stack NAME", 2)
    monitor, arm = _monitor_plan(plan, metrics_region)
    for line in monitor.describe():  # the queries, and the delay the judge works with
        click.echo(line, err=True)
    try:
        applier = PulumiApplier.for_stack(stack, plan.project_dir, plan.project_dir / "policies", policy_pack_config,
                                          on_output=lambda line: click.echo(line, err=True))
    except ApplyError as err:
        _fail(str(err), 2)
    return applier, azure_source(monitor, arm), None


def _monitor_plan(plan, metrics_region):
    """Azure Monitor's queries, prepared once at start: the endpoint's region (unless given) and the
    metric definitions, read from Azure with the ARM_* credentials azure-native uses."""
    from mlcanary.components.arm import ArmClient, ArmError
    from mlcanary.rollout.sources import SourceError, monitor_plan

    endpoint = plan.start.spec.endpoint
    subscription = os.environ.get("ARM_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID")
    if not subscription:
        _fail("Azure Monitor needs the subscription: set ARM_SUBSCRIPTION_ID (as for azure-native)", 2)
    endpoint_id = (f"/subscriptions/{subscription}/resourceGroups/{endpoint.resource_group}/providers/"
                   f"Microsoft.MachineLearningServices/workspaces/{endpoint.workspace}/onlineEndpoints/{endpoint.name}")
    try:
        arm = ArmClient()
        return monitor_plan(arm, endpoint_id, metrics_region), arm
    except (ArmError, SourceError) as err:
        _fail(str(err), 2)


def _azure_plan(plan, stack, metrics_region) -> dict:
    """What an Azure rollout will do, read-only: the metric queries and the config each step writes."""
    from mlcanary.rollout.appliers import stage_config_json

    monitor, _ = _monitor_plan(plan, metrics_region)
    steps = [(plan.start.label, plan.start), *((s.label, s) for s in plan.steps), ("rollback", plan.rollback)]
    return {"stack": stack, "metrics": monitor.as_json(), "metricLines": monitor.describe(),
            "config": [{"step": label, "setAllJson": json.loads(stage_config_json(step.config))}
                       for label, step in steps]}


def _shares(traffic: dict) -> str:
    """{'blue': 90, 'green': 10} as a user reads it: 'blue 90, green 10'."""
    return ", ".join(f"{name} {share}" for name, share in traffic.items()) or "none"


def _table(view):
    from rich.table import Table

    table = Table(title=f"step {view.index}/{view.steps}: {view.step}   live {_shares(view.traffic)}"
                        + (f"   mirror {_shares(view.mirror)}" if view.mirror else "") + f"   {view.elapsed_s:.0f} s",
                  caption=f"{view.status}   " + "  ".join(f"{k}: {v}" for k, v in view.judge.items()))
    for column in ("deployment", "requests", "errors", "error rate", "p90 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "deployment" else "right")
    for name, counts in sorted(view.counts.items()):
        rate = counts.rate("error_rate")
        p90, p99 = counts.percentile_ms(90), counts.percentile_ms(99)
        table.add_row(name, str(counts.requests), str(counts.errors), "-" if rate is None else f"{100 * rate:.2f} %",
                      "-" if p90 is None else f"{p90:.1f}", "-" if p99 is None else f"{p99:.1f}")
    return table


def _print_plan(plan, written: list[Path], output_format: str, azure: dict | None = None) -> None:
    stages = [{"step": i, "label": s.label, "traffic": s.traffic, "mirror": s.mirror_traffic,
               "deployments": list(s.spec.endpoint.deployments)} for i, s in enumerate(plan.steps, start=1)]
    if output_format == "json":
        click.echo(json.dumps({"endpoint": plan.endpoint, "options": plan.options.as_json(), "stages": stages,
                               "gate": "passed", "advisories": plan.advisories,
                               "written": [str(p) for p in written],
                               **({"azure": {k: v for k, v in azure.items() if k != "metricLines"}} if azure else {})},
                              indent=2))
        return
    o = plan.options
    click.echo(f"rollout of {o.to} on {plan.endpoint} from {plan.stage_file} (baseline {o.baseline}, judge {o.judge}, "
               f"interval {o.interval_s:g} s, min requests {o.min_requests})")
    for stage in stages:
        mirror = f", mirror {_shares(stage['mirror'])}" if stage["mirror"] else ""
        click.echo(f"  {stage['step']}. {stage['label']:>12}: live {_shares(stage['traffic'])}{mirror}")
    click.echo(f"  rollback: live {_shares(plan.rollback.traffic)}")
    click.echo(f"gate: all {len(stages) + 1} stages and {len(stages)} transitions pass (spec, policy pack, transition rules)")
    for path in written:
        click.echo(f"wrote {path}")
    if azure:
        for line in azure["metricLines"]:
            click.echo(line)
        click.echo(f"stack {azure['stack']}: each step writes the stage into the stack config "
                   "(`pulumi config set-all --json`, objects whole), then runs `pulumi up --refresh` with the policy pack:")
        for entry in azure["config"]:
            written_config = {key: value.get("objectValue", value["value"]) for key, value in entry["setAllJson"].items()}
            click.echo(f"  {entry['step']}: {json.dumps(written_config, sort_keys=True)}")


def _by_deployment(counts: dict) -> str:
    return ", ".join(f"{name or 'no deployment'}: {count}" for name, count in sorted(counts.items()))


def _print_outcome(console, outcome, view, report, record, plot, output_format, alpha: float) -> None:
    client_requests: dict[str, Any] | None = None
    if report is not None:
        client_requests = {"sent": report.sent, "failed": report.failed,
                           "byDeployment": dict(report.by_deployment), "failedByDeployment": dict(report.failed_by_deployment)}
    if output_format == "json":
        click.echo(json.dumps({
            "decision": outcome.decision, "exitCode": outcome.exit_code, "message": outcome.message,
            "step": outcome.step, "failure": outcome.failure.as_json() if outcome.failure else None,
            "eValues": outcome.e_values, "targetServed": outcome.target_served, "clientRequests": client_requests,
            "record": str(record) if record else None, "plot": str(plot) if plot else None}, indent=2))
        return
    colour = {0: "green", 1: "red", 3: "yellow"}.get(outcome.exit_code, "magenta")
    console.print(f"[bold {colour}]{outcome.decision}[/]: {outcome.message}", highlight=False)
    if view.counts:
        console.print(_table(view))
    if outcome.failure and outcome.failure.e_value is not None:
        console.print(f"e-value {outcome.failure.e_value:.1f} (rollback at 1/alpha = {1 / alpha:g})", highlight=False)
    console.print(f"the target served {outcome.target_served} request(s) during the rollout", highlight=False)
    if client_requests:
        console.print(f"client requests (--load): {report.sent} sent, {report.failed} failed"
                      + (f" ({_by_deployment(report.failed_by_deployment)})" if report.failed else ""), highlight=False)
    if record:
        console.print(f"record: {record}")
    if plot:
        console.print(f"plot: {plot}")
