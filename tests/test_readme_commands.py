"""The commands of the README and of docs/ pass: every command of their bash blocks (and the `mlcanary`
commands of their pipeline snippets) that works offline runs here, in order (the README's tour first,
then the pages of docs/), against a private state directory and in a temporary copy of the checkout.

A command that needs Azure or the Pulumi CLI is listed in SKIPPED with the reason; a documented
command that is neither run nor listed fails the test, so no new command goes untested by accident.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_DIR
from mlcanary.local_runtime.client import RuntimeClient
from test_local_runtime import stop_runtime

README = (PROJECT_DIR / "README.md").read_text()
# The reference pages in the order their commands run: the local target's first (it starts from no
# endpoint), then the others; pages added later run after these.
DOC_ORDER = ["local-target.md", "policies.md", "rollout.md", "azure.md", "config.md"]
DOC_PAGES = sorted((PROJECT_DIR / "docs").glob("*.md"),
                   key=lambda p: (DOC_ORDER.index(p.name) if p.name in DOC_ORDER else len(DOC_ORDER), p.name))
PAGES = [("README.md", README), *((f"docs/{p.name}", p.read_text()) for p in DOC_PAGES)]
NEEDS_PULUMI = "needs the Pulumi CLI, which no package registry ships (see design notes)"
NEEDS_AZURE = "needs an Azure subscription and the Azure CLI"
SKIPPED = {
    "./tasks test": "the test suite itself: this test runs inside it",
    "pulumi stack init local": NEEDS_PULUMI,
    "pulumi up -s local": NEEDS_PULUMI,
    "pulumi up -s local --config-file stacks/local/stage-2-scale-blue.yaml": NEEDS_PULUMI,
    "az login": NEEDS_AZURE,
    "export ARM_SUBSCRIPTION_ID=<subscription>": NEEDS_AZURE,
    "pulumi login": NEEDS_PULUMI,
    "pulumi stack init prod": NEEDS_PULUMI,
    "pulumi up -s prod": NEEDS_PULUMI + " and " + NEEDS_AZURE,
    "pulumi up -s prod --config-file stacks/stage-2-scale-blue.yaml": NEEDS_PULUMI + " and " + NEEDS_AZURE,
    "pulumi config set -s prod --path 'endpoint.traffic.blue' 90": NEEDS_PULUMI,
    "pulumi config set -s prod --path 'endpoint.traffic.green' 10": NEEDS_PULUMI,
    "pulumi preview -s prod --policy-pack policies --policy-pack-config policies/policy-config.sample.json":
        NEEDS_PULUMI + " and " + NEEDS_AZURE,
}


# Commands the README shows failing on purpose, and the exit code it gives them.
EXPECTED_EXIT = {
    "mlcanary rollout stacks/local/rollout-bad-green.yaml": 1,  # "rolled back ... (exit 1)"
}


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of each fenced bash block (comments and blank lines dropped, `\\` continuations joined)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)
    joined = [re.sub(r"\\\n\s*", "", block) for block in blocks]
    return [[line for line in (_strip_comment(raw) for raw in block.splitlines()) if line] for block in joined]


def expected_exit(command: str) -> int:
    return next((code for prefix, code in EXPECTED_EXIT.items() if command.startswith(prefix)), 0)


def pipeline_commands(text: str) -> list[str]:
    """`mlcanary ...` commands of the YAML pipeline snippets (after `run:` or `&&`)."""
    commands = []
    for block in re.findall(r"^```yaml\n(.*?)^```", text, flags=re.M | re.S):
        commands += [m.strip() for m in re.findall(r"(?:run:|&&)\s*(mlcanary [^\n]*)", block)]
    return commands


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line).strip() if not line.lstrip().startswith("#") else ""


def test_the_readme_has_its_two_set_up_commands():
    blocks = bash_blocks(README)
    assert ["./tasks rehearse", "./tasks test"] in blocks
    assert "mlcanary check --policy-pack-config policies/policy-config.sample.json stacks/stage-*.yaml" in \
        pipeline_commands(README)


def test_every_skipped_command_is_still_documented():
    commands = {c for _, text in PAGES for block in bash_blocks(text) for c in block}
    assert set(SKIPPED) <= commands, set(SKIPPED) - commands


# Not part of a checkout: made by installing and running (all in .gitignore).
NOT_SOURCE = {".git", ".venv", ".pytest_cache", "__pycache__", "mlcanary.egg-info", "build", "dist"}


def project_copy(destination: Path) -> Path:
    """The checkout as a user has it, in a temporary folder: what the README's commands write (rollout
    records, plots) lands there, never in the user's tree. The copy uses the checkout's .venv."""
    shutil.copytree(PROJECT_DIR, destination, ignore=lambda _folder, names: [n for n in names if n in NOT_SOURCE])
    if (PROJECT_DIR / ".venv").is_dir():
        (destination / ".venv").symlink_to(PROJECT_DIR / ".venv")
    return destination


def git(*args: str) -> list[str] | None:
    """Lines of a git command in the checkout; None outside a git work tree."""
    result = subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else None


def git_status() -> list[str] | None:
    """`git status` of the checkout, untracked and ignored files included (but not what installing makes)."""
    listed = git("status", "--porcelain", "--untracked-files=all", "--ignored")
    return None if listed is None else [line for line in listed if not set(Path(line[3:]).parts) & NOT_SOURCE]


def untracked_files() -> dict[str, tuple[int, int]]:
    """Files git does not track (a user's own rollout.jsonl, rollout.png): path -> (size, modification
    time), to see one overwritten. Tracked files are left to `git status` (the user may edit them meanwhile)."""
    tracked = set(git("ls-files") or ())
    snapshot = {}
    for folder, folders, files in os.walk(PROJECT_DIR):
        folders[:] = [f for f in folders if f not in NOT_SOURCE]
        for name in files:
            path = Path(folder) / name
            relative = str(path.relative_to(PROJECT_DIR))
            if relative not in tracked:
                info = path.stat()
                snapshot[relative] = (info.st_size, info.st_mtime_ns)
    return snapshot


@pytest.fixture
def shell(tmp_path):
    state = tmp_path / "state"
    project = project_copy(tmp_path / "project")
    env = {**os.environ, "MLCANARY_STATE_DIR": str(state), "TMPDIR": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True,
                              timeout=600)

    yield run
    stop_runtime(RuntimeClient(state))


@pytest.fixture
def untouched_checkout():
    """The README's commands leave the user's checkout as it was: no file written, changed or removed."""
    status, files = git_status(), untracked_files()
    yield
    assert git_status() == status
    after = untracked_files()
    changed = sorted(p for p in files.keys() | after.keys() if files.get(p) != after.get(p))
    assert not changed, f"the README's commands wrote into the checkout: {changed}"


def test_every_offline_command_of_the_readme_and_docs_passes(untouched_checkout, shell):
    ran = []
    for page, text in PAGES:
        for block in [*bash_blocks(text), pipeline_commands(text)]:
            for command in block:
                if command in SKIPPED:
                    continue
                assert command.startswith(("mlcanary ", "./tasks ")), (
                    f"{page}: command neither run nor skipped: {command}")
                result = shell(command)
                assert result.returncode == expected_exit(command), (
                    f"{page}: {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
                ran.append(command)
    assert {"./tasks rehearse", "./tasks check", "mlcanary local down"} <= set(ran)


def test_a_command_in_a_stage_files_comment_is_the_one_the_docs_run():
    """Found by a newcomer: rollout-bad-green.yaml's comment said `--interval 10s`, the README 5s. A stage
    file whose rollout the docs run (a bash block) shows that same command in its comment."""
    documented = {c for _, text in PAGES for block in bash_blocks(text) for c in block}
    for path in sorted((PROJECT_DIR / "stacks" / "local").glob("*.yaml")):
        run = {c for c in documented if c.startswith(f"mlcanary rollout stacks/local/{path.name} ")}
        comments = "\n".join(line.lstrip("# ").rstrip() for line in path.read_text().splitlines() if line.startswith("#"))
        for command in re.findall(r"^(mlcanary rollout .*)$", re.sub(r"\\\n\s*", "", comments), flags=re.M):
            assert not run or command in run, f"{path.name}: {command}"


def cli_commands(group, prefix: str = ""):
    """(full name, command) of every command under `group`, through click's list/get_command: the
    top group loads its commands lazily (mlcanary/cli.py), so `group.commands` lists only `check`."""
    import click

    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from cli_commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def command_names(group) -> list[str]:
    return [name for name, _ in cli_commands(group)]


def test_the_exit_code_table_covers_every_command():
    from mlcanary.cli import main

    section = (PROJECT_DIR / "docs" / "exit-codes.md").read_text()
    for name in command_names(main):
        assert f"`{name}`" in section, name
    codes = re.findall(r"^\| `(\d+)` \|", section, flags=re.M)
    assert codes == ["0", "1", "2", "3", "4", "130", "143"]


def test_every_option_of_every_command_says_what_it_does():
    """Found by a newcomer: `rollout --help` showed `--format [text|json]` with no text."""
    import click

    from mlcanary.cli import main

    silent = [f"{name} {'/'.join(p.opts)}" for name, command in cli_commands(main) for p in command.params
              if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert not silent
