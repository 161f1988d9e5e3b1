"""The `mlcanary` command line.

A command imports what it uses, inside the command: `--version`, `local status` or `invoke` must not
pay for pulumi, pulumi_policy or azure-ai-ml (tests/test_cli_imports.py, bench/cli_latency.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mlcanary.cli_support import LazyGroup

# Commands defined in modules of their own, imported only when run (or listed by --help).
LAZY_COMMANDS = {
    "local": "mlcanary.local_cli:local",
    "invoke": "mlcanary.invoke_cli:invoke",
    "logs": "mlcanary.logs_cli:logs",
    "rehearse": "mlcanary.rehearse_cli:rehearse",
    "rollout": "mlcanary.rollout_steer_cli:rollout",  # run (the default, rollout_cli.py), status, pause, ... history
}


# click's lazily loading group: `mlcanary check` does not import the local runtime's commands, nor
# `local status` the rollout's.
@click.group(cls=LazyGroup, lazy_commands=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlcanary", prog_name="mlcanary", message="%(prog)s %(version)s")
def main() -> None:
    """Safe, staged rollouts of ML models to Azure ML online endpoints."""


@main.command()
@click.argument("stage_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--policy-pack-config",
    type=click.Path(path_type=Path),
    help="Policy levels and knobs, in the JSON format of `pulumi preview --policy-pack-config` "
    "(see policies/policy-config.sample.json).",
)
@click.option(
    "--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json: an array with one object per violation (stage, policy, enforcementLevel, resource, message) "
    "and one per unusable input (input, error).",
)
def check(stage_files: tuple[Path, ...], policy_pack_config: Path | None, output_format: str) -> None:
    """Check stage files offline, without the Pulumi CLI and without Azure.

    Each STAGE_FILE (a Pulumi stack config file) is validated, run through the real Pulumi
    program under mocks, and judged by every policy of the pack in policies/, as
    `pulumi preview --policy-pack policies` would. Given several files, in rollout order, each
    step from one stage to the next is judged too (a removed deployment had no traffic, a new
    deployment goes dark or mirrored before live, ...). Nothing is applied anywhere.

    Exit codes: 0 no mandatory violation; 1 a mandatory violation; 2 an input could not be read
    or is invalid (a missing file, a YAML error, an invalid config, a bad policy config). In
    --format json, each unusable input is an object {input, error} in the array.
    """
    from mlcanary.check import InputError, check_stages, policy_defaults
    from mlcanary.policy_config import PolicyConfigError, load_policy_config
    try:
        settings = load_policy_config(policy_pack_config, policy_defaults())
    except PolicyConfigError as err:
        click.echo(f"error: {err}", err=True)
        if output_format == "json":
            click.echo(json.dumps([InputError(str(policy_pack_config), str(err)).as_json()], indent=2))
        sys.exit(2)
    report = check_stages(list(stage_files), settings)
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    if output_format == "json":
        click.echo(json.dumps([*(v.as_json() for v in report.violations), *(e.as_json() for e in report.errors)],
                              indent=2))
    else:
        _print_text(report)
    sys.exit(report.exit_code)


def _print_text(report) -> None:
    from mlcanary.violation_text import echo_violations

    echo_violations(report.violations)
    mandatory, advisory = report.count("mandatory"), report.count("advisory")
    click.echo(
        f"Checked {report.stages} stage(s) ({report.resources} resources) and {report.transitions} "
        f"transition(s): {mandatory} mandatory, {advisory} advisory violation(s)"
        + (f"; {len(report.errors)} input error(s)" if report.errors else "")
        + "."
    )


if __name__ == "__main__":
    main()
