"""Operating the local target: pinned versions, cancellable applies, restoring, metrics and logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from conftest import PROJECT_DIR
from mlcanary.cli import main
from mlcanary.local_runtime.client import RuntimeClient
from test_local_runtime import stop_runtime, wait_for

REQUEST = PROJECT_DIR / "samples" / "request.json"


@pytest.fixture
def project(tmp_path):
    """A Pulumi project of its own holding a copy of the sample model (the test edits it)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "Pulumi.yaml").write_text("name: mlcanary\nruntime: python\n")
    shutil.copytree(PROJECT_DIR / "samples" / "fraud-model", root / "fraud-model")
    return root


@pytest.fixture
def state(tmp_path):
    yield tmp_path / "state"
    stop_runtime(RuntimeClient(tmp_path / "state"))


def stage(project: Path, name: str = "stage.yaml", instances: int = 2, probe: str = "", env: str = "") -> Path:
    path = project / name
    path.write_text(f"""config:
  mlcanary:target: local
  mlcanary:endpoint:
    name: ops-scorer
    deployments:
      blue:
        model: ./fraud-model/v1/model
        code: ./fraud-model/onlinescoring
        scoringScript: score.py
        instanceCount: {instances}
{probe}{env}    traffic: {{blue: 100}}
""")
    return path


def run(state, *args):
    return CliRunner().invoke(main, [*map(str, args), "--state-dir", str(state)])


def versions_served(state, times: int = 8) -> set:
    answers = [run(state, "invoke", "ops-scorer", "--request-file", REQUEST) for _ in range(times)]
    assert all(a.exit_code == 0 for a in answers), [a.output for a in answers]
    return {json.loads(a.output.splitlines()[0])["version"] for a in answers}


def edit_model_version(project: Path, version: int) -> None:
    path = project / "fraud-model" / "v1" / "model" / "model.json"
    model = json.loads(path.read_text())
    path.write_text(json.dumps({**model, "version": version}))


# --- 9.1 pinned versions -----------------------------------------------------------------------


def test_an_edited_model_is_a_new_version_and_every_instance_serves_one_version(project, state):
    path = stage(project)
    assert run(state, "local", "up", path).exit_code == 0
    edit_model_version(project, 99)
    client = RuntimeClient(state)
    blue = client.status()["endpoints"]["ops-scorer"]["deployments"]["blue"]
    os.killpg(blue["pids"][0], signal.SIGKILL)  # the restarted instance must serve the applied version
    assert wait_for(lambda: client.status()["endpoints"]["ops-scorer"]["deployments"]["blue"]["restarts"] == 1
                    and client.status()["endpoints"]["ops-scorer"]["deployments"]["blue"]["healthy"] == 2, 60)
    assert versions_served(state) == {1}

    again = run(state, "local", "up", path)
    assert again.exit_code == 0, again.output
    assert "updated: blue (model changed)" in again.output
    assert versions_served(state) == {99}


def test_an_unchanged_folder_is_unchanged_and_pinned_once(project, state):
    path = stage(project)
    assert run(state, "local", "up", path).exit_code == 0
    again = run(state, "local", "up", path)
    assert again.exit_code == 0 and "unchanged: blue" in again.output
    from mlcanary.components.uploads import content_hash

    pinned = sorted(p.name for p in (state / "snapshots").iterdir())
    assert pinned == sorted([content_hash(str(project / "fraud-model" / "v1" / "model")),
                             content_hash(str(project / "fraud-model" / "onlinescoring"))])


def test_a_pinned_version_no_deployment_uses_is_removed(project, state):
    from mlcanary.components.uploads import content_hash

    path = stage(project)
    model, code = project / "fraud-model" / "v1" / "model", project / "fraud-model" / "onlinescoring"
    assert run(state, "local", "up", path).exit_code == 0
    pinned = lambda: {p.name for p in (state / "snapshots").iterdir()}  # noqa: E731
    assert pinned() == {content_hash(str(model)), content_hash(str(code))}
    edit_model_version(project, 7)
    assert run(state, "local", "up", path).exit_code == 0
    # the replaced version goes once the old instances have drained
    assert wait_for(lambda: pinned() == {content_hash(str(model)), content_hash(str(code))}, 60)
    run(state, "local", "down")
    assert pinned() == set()


def test_ignored_files_are_not_pinned(project, state):
    code = project / "fraud-model" / "onlinescoring"
    (code / ".amlignore").write_text("notes.txt\n")
    (code / "notes.txt").write_text("not uploaded on Azure, not served locally")
    path = stage(project)
    assert run(state, "local", "up", path).exit_code == 0
    (code / "notes.txt").write_text("edited")  # ignored: not a new version
    again = run(state, "local", "up", path)
    assert "unchanged: blue" in again.output, again.output
    served = RuntimeClient(state).status()["endpoints"]["ops-scorer"]["deployments"]["blue"]
    assert not list((state / "snapshots").rglob("notes.txt")), served
