"""A machine shared by several users or projects: each runtime starts with default settings.

The fixed metrics address (127.0.0.1:9577 by default) goes to whoever gets it first; a runtime that
finds it taken serves its metrics on a free port and says where, instead of refusing to start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from conftest import PROJECT_DIR
from mlcanary.cli import main
from mlcanary.local_runtime.client import RuntimeClient
from mlcanary.local_runtime.metrics_address import DEFAULT, ENV_VAR
from test_local_runtime import stop_runtime

REQUEST = PROJECT_DIR / "samples" / "request.json"
NOBODY = 65534


def write_project(root: Path) -> Path:
    """A project of its own with the sample model and a one-deployment stage; returns the stage file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Pulumi.yaml").write_text("name: mlcanary\nruntime: python\n")
    shutil.copytree(PROJECT_DIR / "samples" / "fraud-model", root / "fraud-model")
    stage = root / "stage.yaml"
    stage.write_text("""config:
  mlcanary:target: local
  mlcanary:endpoint:
    name: shared-scorer
    deployments:
      blue:
        model: ./fraud-model/v1/model
        code: ./fraud-model/onlinescoring
        scoringScript: score.py
        instanceCount: 1
    traffic: {blue: 100}
""")
    return stage


def run(state: Path, *args: str):
    return CliRunner().invoke(main, [*map(str, args), "--state-dir", str(state)])


def scrape(address: str) -> str:
    answer = requests.get(f"http://{address}/metrics", timeout=10)
    assert answer.status_code == 200
    return answer.text


@pytest.fixture
def two_states(tmp_path):
    states = tmp_path / "state-a", tmp_path / "state-b"
    yield states
    for state in states:
        stop_runtime(RuntimeClient(state))


def test_a_taken_metrics_address_moves_the_metrics_and_says_where(tmp_path, two_states):
    state, _ = two_states
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        started = run(state, "local", "start", "--metrics-address", taken)
        assert started.exit_code == 0, started.output
        served = RuntimeClient(state).info()["metricsAddress"]
        assert served != taken and served.startswith("127.0.0.1:")
        assert f"metrics: http://{served}/metrics (the address asked for, {taken} (address already in use), " \
               "is held by another program or runtime)" in started.output
        assert "# HELP mlcanary_requests_total" in scrape(served)

        status = run(state, "local", "status")
        assert f"metrics: http://{served}/metrics" in status.output and taken in status.output
        as_json = json.loads(run(state, "local", "status", "--format", "json").stdout)
        assert as_json["metricsAddress"] == served and as_json["metricsAddressTaken"].startswith(taken)
        metrics = CliRunner().invoke(main, ["local", "metrics", "--state-dir", str(state)])
        assert metrics.exit_code == 0 and f"metrics: http://{served}/metrics" in metrics.stderr
        log = (state / "runtime.log").read_text()
        assert f"the metrics address {taken} (address already in use) cannot be used" in log
        assert f"metrics are served at {served} instead" in log


def test_two_state_directories_run_side_by_side_with_default_settings(tmp_path, two_states, monkeypatch):
    """Both runtimes are asked for the default fixed address: the first (or neither, if a runtime of
    the machine's user already has it) gets it, and both start, serve their endpoint and their metrics."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    served = []
    for index, state in enumerate(two_states):
        stage = write_project(tmp_path / f"project-{index}")
        up = run(state, "local", "up", str(stage))
        assert up.exit_code == 0, up.output
        answer = run(state, "invoke", "shared-scorer", "--request-file", str(REQUEST))
        assert answer.exit_code == 0, answer.output
        served.append(RuntimeClient(state).info()["metricsAddress"])
    assert len(set(served)) == 2
    assert all(address.startswith("127.0.0.1:") for address in served)
    assert DEFAULT not in served[1:]  # the second never holds the address the first was given
    for address in served:
        assert re.search(r'mlcanary_requests_total\{endpoint="shared-scorer",deployment="blue",code="200"\} 1', scrape(address))


def reachable_by(uid: int, path: Path) -> bool:
    """Whether `uid` (not root) can read and execute everything on the way to `path`."""
    probe = subprocess.run(["test", "-x", str(path)], user=uid, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a second uid needs root to run a process as another user")
def test_a_second_user_runs_a_runtime_beside_ours_with_default_settings(tmp_path, monkeypatch):
    """uid 65534 and this user each run `local up` with the default metrics address and state dir
    of their own (the second user's home), side by side; both answer."""
    if not reachable_by(NOBODY, Path(sys.executable)):
        pytest.skip(f"uid {NOBODY} cannot reach this interpreter ({sys.executable}): the checkout is private")
    monkeypatch.delenv(ENV_VAR, raising=False)
    ours = tmp_path / "state"
    other_home = Path(tempfile.mkdtemp(prefix="mlcanary-other-user-"))
    try:
        stage = write_project(other_home / "project")
        for path in [other_home, *other_home.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "MLCANARY_STATE_DIR")}
        env.update(HOME=str(other_home), TMPDIR=str(other_home))
        cli = [sys.executable, "-m", "mlcanary.cli"]
        up = subprocess.run([*cli, "local", "up", str(stage)], user=NOBODY, group=NOBODY, env=env, cwd=other_home,
                            capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        theirs = other_home / ".mlcanary" / "local"
        assert RuntimeClient(theirs).info()["metricsAddress"]

        mine = run(ours, "local", "up", str(write_project(tmp_path / "project")))
        assert mine.exit_code == 0, mine.output
        assert run(ours, "invoke", "shared-scorer", "--request-file", str(REQUEST)).exit_code == 0
        answer = subprocess.run([*cli, "invoke", "shared-scorer", "--request-file", str(REQUEST)], user=NOBODY,
                                group=NOBODY, env=env, cwd=other_home, capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0, answer.stdout + answer.stderr
        addresses = {RuntimeClient(ours).info()["metricsAddress"], RuntimeClient(theirs).info()["metricsAddress"]}
        assert len(addresses) == 2
    finally:
        stop_runtime(RuntimeClient(ours))
        stop_runtime(RuntimeClient(other_home / ".mlcanary" / "local"))
        shutil.rmtree(other_home, ignore_errors=True)
