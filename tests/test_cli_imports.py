"""Everyday commands start at once: they import neither the Pulumi SDKs nor azure-ai-ml.

Structure, not time (bench/cli_latency.py prints the times): each command runs in a fresh Python
that records, as it exits, which modules it loaded. `import mlcanary.cli` used to import
pulumi_policy (and so pulumi and grpc) for every command, and `local status` requests and aiohttp,
about 0.3-0.7 s before a command did anything. A runtime with the first local sample stage serves
the commands that ask it something, so each one runs its whole path (an answer, not an error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import PROJECT_DIR
from mlcanary.local_runtime import lease
from mlcanary.local_runtime.client import RuntimeClient
from test_local_runtime import stop_runtime

STAGE = PROJECT_DIR / "stacks" / "local" / "stage-1-create-blue.yaml"
REQUEST = PROJECT_DIR / "samples" / "request.json"
# What a command that only reads state or talks to the runtime must not pay for.
HEAVY = ("pulumi", "pulumi_policy", "pulumi_azure_native", "azure.ai.ml", "grpc", "requests", "aiohttp")

# Runs the CLI as the `mlcanary` script does, then writes the names of the loaded modules to argv[1].
PROBE = """
import atexit, json, sys
record = sys.argv.pop(1)
atexit.register(lambda: open(record, "w").write(json.dumps(sorted(sys.modules))))
from mlcanary.cli import main
main(sys.argv[1:], prog_name="mlcanary")
"""


def run(tmp_path, state, *args, heavy_modules=HEAVY):
    """(exit code, output, heavy modules loaded) of `mlcanary ARGS` in a fresh Python."""
    record = tmp_path / "modules.json"
    record.unlink(missing_ok=True)
    env = {**os.environ, "MLCANARY_STATE_DIR": str(state)}
    done = subprocess.run([sys.executable, "-c", PROBE, str(record), *map(str, args)], cwd=PROJECT_DIR, env=env,
                          capture_output=True, text=True, timeout=300)
    loaded = json.loads(record.read_text())
    heavy = sorted({h for h in heavy_modules for m in loaded if m == h or m.startswith(h + ".")})
    return done.returncode, done.stdout + done.stderr, heavy


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A state directory whose runtime serves the first local sample stage."""
    tmp_path = tmp_path_factory.mktemp("running")
    state = tmp_path / "state"
    code, output, _ = run(tmp_path, state, "local", "up", STAGE)
    assert code == 0, output
    yield state
    stop_runtime(RuntimeClient(state))


@pytest.mark.parametrize("args, expected", [
    (["local", "status"], "fraud-scorer"),
    (["local", "keys", "fraud-scorer"], "primaryKey: "),
    (["local", "metrics"], "mlcanary_requests_total"),
    (["invoke", "fraud-scorer", "--request-file", REQUEST], "answered by: blue, HTTP 200"),
    (["logs", "fraud-scorer", "--deployment", "blue", "--lines", "5"], "==> instance-0.log <=="),
], ids=["local status", "local keys", "local metrics", "invoke", "logs"])
def test_commands_that_ask_the_runtime_load_no_heavy_module(running, tmp_path, args, expected):
    code, output, heavy = run(tmp_path, running, *args)
    assert code == 0 and expected in output, output
    assert heavy == []


@pytest.mark.parametrize("args, expected", [
    (["--version"], "mlcanary 0.1.0"),
    (["local", "status"], "no local runtime is running"),
    (["local", "stop"], "no local runtime is running"),
    (["local", "down"], "no local runtime is running"),
    (["logs", "fraud-scorer", "--deployment", "blue"], "no worker logs of fraud-scorer/blue"),
], ids=["--version", "local status", "local stop", "local down", "logs"])
def test_commands_without_a_runtime_load_no_heavy_module(tmp_path, args, expected):
    code, output, heavy = run(tmp_path, tmp_path / "no-runtime", *args)
    assert expected in output.lower(), output
    assert heavy == []


def test_local_down_where_no_runtime_ever_ran_reads_no_state_schema(tmp_path):
    """Without a state file there is nothing to restore and delete: the record schemas (pydantic, ~0.5 s of
    imports on a loaded machine) are not loaded to find that out."""
    code, output, heavy = run(tmp_path, tmp_path / "never-ran", "local", "down", heavy_modules=(*HEAVY, "pydantic"))
    assert code == 0 and "no local runtime is running" in output, output
    assert heavy == []


@pytest.fixture(scope="module")
def rolled_out(running):
    """The running state directory after a rollout of green that ended promoted: its hold document and
    history written by the lease module, as a rollout ends."""
    directory = lease.lease_dir(running)
    lease.acquire(directory, "fraud-scorer", {
        "id": "r-imports", "target": "green", "baseline": "blue", "plan": {"steps": ["green 10", "green 100"]},
        "stepIndex": 1, "step": "green 100", "traffic": {"blue": 0, "green": 100}})
    lease.finish(directory, "fraud-scorer", "r-imports", "promoted", "green takes all traffic")
    return running


NOT_RUNNING = "no rollout is running on endpoint fraud-scorer (the last one, r-imports, ended: promoted)"


@pytest.mark.parametrize("args, code, expected", [
    (["status"], 0, "rollout r-imports of green on fraud-scorer (baseline blue): PROMOTED"),
    (["status", "--format", "json"], 0, '"outcome": "promoted"'),
    (["history"], 0, "r-imports: promoted at green 100"),
    (["pause", "--timeout", "0"], 1, f"{NOT_RUNNING}; nothing to pause"),
    (["resume", "--timeout", "0"], 1, f"{NOT_RUNNING}; nothing to resume"),
    (["promote", "--timeout", "0"], 1, f"{NOT_RUNNING}; nothing to promote"),
    (["abort", "--timeout", "0"], 1, f"{NOT_RUNNING}; nothing to abort"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_rollout_steering_verbs_load_no_heavy_module(rolled_out, tmp_path, args, code, expected):
    """The verbs read and write the hold document only: not even the rollout's spec (pydantic), which
    only the group's default command `run` needs and which is loaded when it runs."""
    verb, *rest = args
    got, output, heavy = run(tmp_path, rolled_out, "rollout", verb, "fraud-scorer", *rest,
                             heavy_modules=(*HEAVY, "pydantic", "mlcanary.rollout_cli"))
    assert got == code and expected in output, output
    assert heavy == []


def test_the_default_rollout_command_is_still_found(tmp_path):
    """A stage file where a verb would be is `rollout run STAGE_FILE`: the lazily loaded command answers."""
    code, output, heavy = run(tmp_path, tmp_path / "state", "rollout", "stacks/local/no-such-stage.yaml",
                              heavy_modules=("mlcanary.rollout_cli",))
    assert code == 2 and "error: stacks/local/no-such-stage.yaml: stage file not found" in output, output
    assert heavy == ["mlcanary.rollout_cli"]


def test_the_probe_sees_what_check_loads(tmp_path):
    """`check` runs the Pulumi program and the policy pack: the same probe finds those modules."""
    code, output, heavy = run(tmp_path, tmp_path / "state", "check", STAGE)
    assert code == 0, output
    assert {"pulumi", "pulumi_policy"} <= set(heavy)
    assert "azure.ai.ml" not in heavy  # the content digest of local folders needs no azure-ai-ml (content_digest.py)


def test_local_up_and_down_of_a_running_stage_need_no_azure_ai_ml(tmp_path):
    """Applying a local stage hashes its folders without azure-ai-ml (content_digest.py)."""
    state = tmp_path / "state"
    try:
        code, output, heavy = run(tmp_path, state, "local", "up", STAGE)
        assert code == 0, output
        assert "azure.ai.ml" not in heavy
        code, output, heavy = run(tmp_path, state, "local", "down")
        assert code == 0 and "stopped the local runtime" in output, output
        assert heavy == []
    finally:
        stop_runtime(RuntimeClient(state))
