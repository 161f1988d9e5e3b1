"""What the commands of the local target share: the --state-dir and --format options, the runtime
client, loading a local stage, and clean `error:` exits.

Heavy imports (rich, the runtime client) happen inside the functions, so `mlcanary check` does not
pay for them.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import click
from click_default_group import DefaultGroup

EXIT_INTERRUPTED = 130  # as a shell reports a Ctrl-C; SIGTERM during an apply is handled the same way

class LazyGroup(click.Group):
    """click's lazily loading group (click docs, "Lazily Loading Subcommands"): `lazy_commands` maps a
    command's name to "module:attribute", imported only when the command runs or help lists it, so a
    command does not pay for the imports of the others (tests/test_cli_imports.py)."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module, attribute = self.lazy_commands[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name=cmd_name)
        return super().get_command(ctx, cmd_name)


class LazyDefaultGroup(LazyGroup, DefaultGroup):
    """A LazyGroup with click-default-group's default command: a name that is no command (a stage file)
    runs the default one, loaded first if it is lazy."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name not in self.lazy_commands:
            LazyGroup.get_command(self, ctx, self.default_cmd_name)
        return super().get_command(ctx, cmd_name)


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


def runtime_client(state_dir: Path | None):
    from importlib.util import find_spec

    # aiohttp runs the router, azureml_inference_server_http the workers: both in the runtime's own
    # processes, so looking them up is enough here (importing them would cost every command ~0.2 s).
    missing = next((name for name in ("aiohttp", "azureml_inference_server_http") if find_spec(name) is None), None)
    if missing:
        fail(f"the local target needs the `local` extra ({missing} is missing): pip install -e '.[local]'", 2)
    from mlcanary.local_runtime.client import RuntimeClient
    from mlcanary.local_runtime.paths import state_dir as resolve

    try:
        root = resolve(state_dir)
    except (RuntimeError, OSError):  # resolve() on a symlink loop
        fail(f"--state-dir {state_dir}: is a symlink loop (too many levels of symbolic links)", 2)
    problem = _state_dir_problem(root)
    if problem:
        fail(f"--state-dir {root}: {problem}", 2)
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


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def load_local_stage(path: Path):
    from mlcanary.components.spec import SpecError
    from mlcanary.components.stage_file import StageFileError
    from mlcanary.local_runtime.rehearse import load_stage

    try:
        stage = load_stage(path)
    except StageFileError as err:
        fail(str(err), 2)
    except SpecError as err:
        fail(f"{path}: invalid stack config:\n" + "\n".join(f"  {p}" for p in err.problems), 2)
    if stage.target != "local":  # unusable here, like an invalid stage: refused before anything starts
        fail(f"{path}: this stage targets {stage.target!r}; the local target applies local-target stages "
              "(mlcanary:target: local)", 2)
    return stage


def request_body(path: Path) -> bytes:
    """A request file, read with a bound (a device or FIFO is refused, not read forever)."""
    from mlcanary.components.user_files import UnusableFile, read_request_body

    try:
        return read_request_body(path)
    except UnusableFile as err:
        fail(str(err), 2)


def no_such_endpoint(endpoint: str, status: dict) -> str:
    from mlcanary.components.rules import shown

    return f"endpoint {shown(endpoint)} not found; endpoints: {', '.join(status['endpoints']) or 'none'}"


format_option = click.option(
    "--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json: one JSON document on stdout, for scripts.",
)


def echo_json(document) -> None:
    click.echo(json.dumps(document, indent=2))


def runtime_errors():
    """The runtime's refusals and a runtime that is not there, as clean errors."""
    from mlcanary.local_runtime.client import NotRunning, RuntimeRefusal
    from mlcanary.local_runtime.running import StateUnreadable

    # A stage refusal can only come from the apply module, which imports the spec and the Pulumi
    # program: commands that never apply a stage (status, keys, ...) must not import it to catch it.
    apply = sys.modules.get("mlcanary.local_runtime.apply")
    return (NotRunning, RuntimeRefusal, StateUnreadable) + ((apply.StageRefused,) if apply else ())


def require_running(client) -> None:
    """Fail unless the runtime runs (for commands that never start it), saying what a start brings back."""
    if client.base_url() is not None:
        return
    from mlcanary.local_runtime.running import current_endpoints

    try:
        recorded = sorted(current_endpoints(client))
    except runtime_errors():
        recorded = []
    if recorded:
        fail(f"no local runtime is running for {client.root}; its state holds endpoint(s) {', '.join(recorded)}: "
             "`mlcanary local start` brings them back")
    fail(f"no local runtime is running for {client.root}: `mlcanary local up STAGE_FILE` starts one")


def policy_settings(path: Path | None):
    from mlcanary.check import policy_defaults
    from mlcanary.policy_config import PolicyConfigError, load_policy_config

    try:
        return load_policy_config(path, policy_defaults())
    except PolicyConfigError as err:
        fail(str(err), 2)

