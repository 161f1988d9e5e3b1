"""Policy violations as `pulumi preview` shows them, for `check` and the gate of `local up`."""

from __future__ import annotations

from collections.abc import Sequence

import click

from mlcanary.check import Violation


def resource_text(resource: str) -> str:
    """`type: name` of a URN, as `pulumi preview` shows a resource; other labels as they are."""
    if not resource.startswith("urn:pulumi:"):
        return resource
    qualified_type, name = resource.split("::")[2:4]
    return f"{qualified_type.rsplit('$', 1)[-1]}: {name}"


def echo_violations(violations: Sequence[Violation]) -> None:
    """Each stage (or step) once, then its violations with level, policy, resource and message."""
    stages = list(dict.fromkeys(v.stage for v in violations))
    for stage in stages:
        click.echo(stage)
        for v in (v for v in violations if v.stage == stage):
            marker = click.style(f"[{v.enforcementLevel}]", fg="red" if v.enforcementLevel == "mandatory" else "yellow")
            click.echo(f"    - {marker}  {v.policy}  ({resource_text(v.resource)})")
            click.echo(f"      {v.description}")
            click.echo(f"      {v.message}")
