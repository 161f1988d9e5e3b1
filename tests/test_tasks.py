"""`./tasks` on a fresh machine: the install says what it is doing, a phase per line, before it runs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from conftest import PROJECT_DIR

FAKE_PYTHON3 = """#!/usr/bin/env bash
# Stands in for python3 -m venv: a .venv whose pip and mlcanary only log what they were asked.
set -e
[ "$1 $2" = "-m venv" ] || exit 90
mkdir -p "$3/bin"
for tool in python pip mlcanary; do
  printf '#!/usr/bin/env bash\\necho "%s $*" >> "%s/calls.log"\\n' "$tool" "$PWD" > "$3/bin/$tool"
  chmod +x "$3/bin/$tool"
done
"""


def fresh_clone(tmp_path: Path) -> tuple[Path, dict]:
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(PROJECT_DIR / "tasks", clone / "tasks")
    (clone / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    (bin_dir / "python3").chmod(stat.S_IRWXU)
    return clone, {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_the_first_use_prints_a_line_per_install_phase_in_order(tmp_path):
    clone, env = fresh_clone(tmp_path)
    result = subprocess.run(["./tasks", "check"], cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[:4] == [
        "Setting up .venv (first use or pyproject.toml changed), about 2 minutes:",
        "  [1/3] creating the virtualenv .venv",
        "  [2/3] upgrading pip",
        "  [3/3] installing mlcanary and its dependencies (Pulumi SDKs, the Azure ML inference server, pytest)",
    ]
    assert lines[4].startswith("  .venv is ready (") and lines[4].endswith(" s)")
    assert (clone / "calls.log").read_text().splitlines() == [
        "pip install --quiet --upgrade pip",
        'pip install --quiet -e .[dev]',
        "mlcanary check stacks/stage-*.yaml",
    ]


def test_an_installed_venv_is_used_silently(tmp_path):
    clone, env = fresh_clone(tmp_path)
    subprocess.run(["./tasks", "check"], cwd=clone, env=env, capture_output=True, check=True, timeout=60)
    again = subprocess.run(["./tasks", "check"], cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stderr == ""
