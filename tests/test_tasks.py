"""`./tasks` on a fresh machine: the install says what it is doing, a phase per line, before it runs."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_DIR

FAKE_PYTHON3 = """#!/usr/bin/env bash
# Stands in for python3 -m venv: a .venv whose pip and mlcanary only log what they were asked.
set -e
[ "$1 $2" = "-m venv" ] || exit 90
mkdir -p "$3/bin"
for tool in python pip mlcanary; do
  printf '#!/usr/bin/env bash\\necho "%s $*${PYTHONWARNINGS:+ (PYTHONWARNINGS=$PYTHONWARNINGS)}" >> "%s/calls.log"\\n' \
    "$tool" "$PWD" > "$3/bin/$tool"
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
        "pip install --quiet -e .[dev] (PYTHONWARNINGS=ignore:Editable installation)",
        "mlcanary check stacks/stage-*.yaml",
    ]


def test_an_installed_venv_is_used_silently(tmp_path):
    clone, env = fresh_clone(tmp_path)
    subprocess.run(["./tasks", "check"], cwd=clone, env=env, capture_output=True, check=True, timeout=60)
    again = subprocess.run(["./tasks", "check"], cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stderr == ""


def test_the_install_prints_no_setuptools_banner(tmp_path):
    """Found by a newcomer: the first install printed setuptools' "Editable installation ... be careful with
    folders" banner. The real pip and setuptools, with the install line of ./tasks (dependencies left out)."""
    line = next(l.strip() for l in (PROJECT_DIR / "tasks").read_text().splitlines() if "pip install --quiet -e" in l)
    warnings_filter = re.match(r'PYTHONWARNINGS="([^"]+)" ', line).group(1)
    project = tmp_path / "project"
    project.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_DIR / part, project / part)
    for folder in ("mlcanary", "components", "policies"):
        shutil.copytree(PROJECT_DIR / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # A virtualenv of its own (pip --python installs into it): the running one keeps its mlcanary.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    install = [sys.executable, "-m", "pip", "--python", str(tmp_path / "venv" / "bin" / "python"), "install", "--quiet",
               "--no-deps", "-e", str(project)]
    result = subprocess.run(install, env={**os.environ, "PYTHONWARNINGS": warnings_filter}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Editable installation" not in result.stdout + result.stderr
    assert "*****" not in result.stdout + result.stderr
    where = "import importlib.util; print(importlib.util.find_spec('mlcanary.components.spec').origin)"
    installed = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", where], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)
    assert installed.stdout.strip() == str(project / "components" / "spec.py"), installed.stderr
