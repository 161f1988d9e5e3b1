"""`mlcanary rehearse`: apply local stages in order, with probe traffic and a comparison at each."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlcanary.cli_support import (
    WholeNumber, echo_json, fail, load_local_stage, policy_settings, request_body, runtime_client,
    runtime_errors,
)
from mlcanary.console import output_console


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
@click.option("--compare-path", default="$", show_default=True,
              help="Mirrored stages: compare the mirror's answers with the live ones at this part of the JSON "
              "answer (docs/answers.md); the table shows how many agreed.")
@click.option("--output-tolerance", help="Numbers agree within this: 0.01 = 1 % relative, abs:0.5 absolute "
              "(default rel:1e-9).")
def rehearse(stage_files: tuple[Path, ...], count: int, request_file: Path, keep: bool, output_format: str,
             state_dir: Path | None, policy_pack_config: Path | None, compare_path: str,
             output_tolerance: str | None) -> None:
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

    stages = [(path, load_local_stage(path)) for path in stage_files]  # refuse an invalid stage before anything changes
    from mlcanary.components.answer_compare import CompareError, settings_from

    try:
        compare = settings_from(compare_path, output_tolerance).as_json()
    except CompareError as err:
        fail(f"{'--output-tolerance' if str(err).startswith('output tolerance') else '--compare-path'}: {err}", 2)
    if keep and state_dir is None:
        fail("--keep needs --state-dir: a private rehearsal runtime is removed when the rehearsal ends", 2)
    _gate_rehearsal(list(stage_files), policy_settings(policy_pack_config), output_format)
    body = request_body(request_file)
    console = output_console()
    reports: list = []

    def completed(report) -> None:
        reports.append(report)
        if output_format == "text":
            _print_report(console, report)

    def run(client) -> None:
        from mlcanary.local_runtime.rehearse import rehearse as run_rehearsal

        with console.status("starting the local runtime") as status:
            client.ensure_running()
            run_rehearsal(stages, client, body, count, status.update, completed, compare)

    endpoints = {stack.endpoint.name for _, stack in stages}
    try:
        with sigterm_interrupts():
            if state_dir is None:
                runtime_client(None)  # the `local` extra is installed
                with private_runtime() as client:
                    run(client)
            else:
                _rehearse_in(runtime_client(state_dir), endpoints, keep, run)
    except (KeyboardInterrupt, ApplyCancelled):  # an apply turns an interrupt into ApplyCancelled
        _finish_reports(console, reports, count, output_format)
        where = (f"deleted endpoint(s) {', '.join(sorted(endpoints))} it created" if state_dir
                 else "stopped its private runtime and removed its state directory")
        fail(f"interrupted: the rehearsal {where}", 130)
    except runtime_errors() as err:
        _finish_reports(console, reports, count, output_format)
        fail(f"{err}\nThe rehearsal stopped after {len(reports)} of {len(stages)} stage(s) and removed what it started.")
    if _finish_reports(console, reports, count, output_format):
        sys.exit(1)


def _gate_rehearsal(stage_files: list[Path], settings, output_format: str) -> None:
    """The stages and the steps between them, judged as `mlcanary check STAGE_FILES` judges them."""
    from mlcanary.check import check_stages
    from mlcanary.violation_text import echo_violations

    report = check_stages(stage_files, settings)
    if report.errors:
        fail(str(report.errors[0]), 2)
    if output_format == "text":
        echo_violations(report.violations)
    if report.count("mandatory"):
        refused = [f"{v.stage}: {v.policy}: {v.message}" for v in report.violations if v.enforcementLevel == "mandatory"]
        fail("the rehearsal is refused by the gate `mlcanary check` applies; nothing was started:\n"
              + "\n".join(f"  {line}" for line in refused))


def _rehearse_in(client, endpoints: set[str], keep: bool, run) -> None:
    """Rehearse in a runtime of the user's: only endpoints that are not there yet, removed again afterwards
    (unless --keep and the rehearsal succeeded); a runtime started for the rehearsal is stopped again."""
    from mlcanary.local_runtime.interrupts import interrupts_ignored
    from mlcanary.local_runtime.sandbox import existing_endpoints

    try:
        taken = endpoints & existing_endpoints(client)
    except runtime_errors() as err:
        fail(str(err))
    if taken:
        fail(f"endpoint(s) {', '.join(sorted(taken))} already exist in {client.root}; a rehearsal only touches "
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
        echo_json([_report_json(r) for r in reports])
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
                **({"compared": d.compared, "agreed": d.agreed} if d.configured_mirror else {}),
            }
            for d in report.deployments
        },
    }


def _print_report(console, report) -> None:
    from rich.table import Table

    table = Table(title=f"{report.stage}  ({report.requests} requests)")
    mirrored_stage = any(d.configured_mirror for d in report.deployments)
    columns = ("deployment", "live set", "live seen", "mirror set", "mirrored", "errors", "p50 ms", "p99 ms")
    for column in (*columns, *(("answers agreed",) if mirrored_stage else ())):
        table.add_column(column, justify="left" if column == "deployment" else "right")
    ms = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for d in report.deployments:
        agreed = (f"{d.agreed}/{d.compared}" if d.configured_mirror else "",) if mirrored_stage else ()
        table.add_row(
            d.name, f"{d.configured_live}%", f"{d.observed_live(report.requests):.1f}%", f"{d.configured_mirror}%",
            str(d.mirrored), str(d.errors), ms(d.percentile(50)), ms(d.percentile(99)), *agreed,
        )
    if report.unrouted:
        table.add_row("(no deployment)", "", f"{100 * report.unrouted / report.requests:.1f}", "", "", str(report.unrouted),
                      "", "", *(("",) if mirrored_stage else ()))
    console.print(table)

