"""`mlcanary logs`: the log lines of a local deployment's instances."""

from __future__ import annotations

from pathlib import Path

import click

from mlcanary.cli_support import WholeNumber, fail, runtime_client, runtime_errors, state_dir_option


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
        problems.append(f"--generation: {generation[:100]!r} is not a generation name (e.g. 20250101-120000-042ab)")
    if problems:
        fail("\n".join(str(p) for p in problems), 2)
    client = runtime_client(state_dir)
    running = None
    if client.base_url() is not None:
        try:
            info = client.status()["endpoints"].get(endpoint, {}).get("deployments", {}).get(deployment)
        except runtime_errors():
            info = None
        running = Path(info["logDir"]) if info else None
    else:
        click.echo(f"(no local runtime answers for {client.root}: the log files as the last run left them)", err=True)
    try:
        folder = worker_logs.choose(client.root, endpoint, deployment, generation, running)
    except worker_logs.NoLogs as err:
        fail(str(err))
    if running is None or folder != running:
        click.echo(f"(generation {folder.name})", err=True)
    click.echo(worker_logs.tail(folder, lines), nl=False)
    if follow:
        def running_now() -> Path | None:  # the runtime rolled the deployment over: follow the new instances
            if generation or running is None:
                return None
            try:
                info = client.status()["endpoints"].get(endpoint, {}).get("deployments", {}).get(deployment)
            except runtime_errors():
                return None
            return Path(info["logDir"]) if info else None

        try:
            worker_logs.follow(folder, lambda line: click.echo(line), newer=running_now)
        except KeyboardInterrupt:
            pass

