"""The one rich console every command prints through."""

from __future__ import annotations

import sys

UNWRAPPED_WIDTH = 100_000


def output_console(stderr: bool = False):
    """A terminal's own width; off a terminal (a file, a pipe) no line is wrapped: lines and tables are
    as wide as their content, so scripts can grep whole lines."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNWRAPPED_WIDTH, soft_wrap=True)
