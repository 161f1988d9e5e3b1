"""Output a script can use: --format json, unwrapped lines off a terminal, --version, input errors as objects."""

from __future__ import annotations

import json
from importlib.metadata import version

from click.testing import CliRunner

from conftest import PROJECT_DIR
from mlcanary.cli import main
from mlcanary.local_runtime.client import RuntimeClient
from test_local_cli import REQUEST, STAGE, run, state  # noqa: F401 - the `state` fixture


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"mlcanary {version('mlcanary')}\n"


def test_check_json_reports_an_unreadable_stage_as_an_object(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = CliRunner().invoke(main, ["check", "--format", "json", str(missing), str(STAGE["1"])])
    assert result.exit_code == 2
    assert json.loads(result.stdout) == [{"input": str(missing), "error": f"{missing}: stage file not found"}]


def test_check_json_reports_an_invalid_stage_next_to_the_violations(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: mlcanary\nruntime: python\n")  # its paths resolve from here
    (tmp_path / "samples").symlink_to(PROJECT_DIR / "samples")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(STAGE["1"].read_text().replace("instanceCount: 1", "instanceCount: 0"))
    result = CliRunner().invoke(main, ["check", "--format", "json", str(invalid)])
    assert result.exit_code == 2
    [error] = json.loads(result.stdout)
    assert error["input"] == str(invalid)
    assert "mlcanary:endpoint.deployments.blue.instanceCount: instance count must be a whole number" in error["error"]


def test_check_json_reports_a_bad_policy_config_as_an_object(tmp_path):
    config = tmp_path / "policy.json"
    config.write_text('{"all": "loud"}')
    result = CliRunner().invoke(main, ["check", "--format", "json", "--policy-pack-config", str(config), str(STAGE["1"])])
    assert result.exit_code == 2
    [error] = json.loads(result.stdout)
    assert error["input"] == str(config) and "enforcement level must be one of" in error["error"]


def test_status_json_without_a_runtime(state):
    result = run(state, "local", "status", "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"running": False, "endpoints": {}, "recorded": []}


def test_up_status_keys_and_invoke_as_json(state):
    applied = run(state, "local", "up", STAGE["3"], "--format", "json")
    assert applied.exit_code == 0, applied.output
    document = json.loads(applied.stdout)
    assert (document["result"], document["endpoint"], document["violations"]) == ("applied", "fraud-scorer", [])
    assert document["changes"]["started"] == ["blue", "green"]
    assert document["changes"]["traffic"] == {"before": {}, "after": {"blue": 100}}
    assert {n: d["state"] for n, d in document["status"]["deployments"].items()} == {"blue": "ready", "green": "ready"}

    status = json.loads(run(state, "local", "status", "--format", "json").stdout)
    assert status["running"] is True
    assert status["endpoints"]["fraud-scorer"]["traffic"] == {"blue": 100, "green": 0}
    assert status["endpoints"]["fraud-scorer"]["scoringUri"] == document["scoringUri"]

    keys = json.loads(run(state, "local", "keys", "fraud-scorer", "--format", "json").stdout)
    assert keys == RuntimeClient(state).keys("fraud-scorer")

    answer = run(state, "invoke", "fraud-scorer", "--request-file", REQUEST, "--format", "json")
    assert answer.exit_code == 0
    invoked = json.loads(answer.stdout)
    assert (invoked["status"], invoked["deployment"], invoked["body"]["version"]) == (200, "blue", 1)
    assert invoked["latencyMs"] > 0


def test_invoke_text_names_the_deployment_that_answered(state):
    assert run(state, "local", "up", STAGE["3"]).exit_code == 0
    result = run(state, "invoke", "fraud-scorer", "--request-file", REQUEST, "--deployment", "green")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["version"] == 2  # stdout holds the body alone
    assert result.stderr.startswith("answered by: green, HTTP 200, ")


def test_no_line_is_wrapped_off_a_terminal(state, tmp_path):
    folder = tmp_path / ("a-folder-with-a-long-name-" * 6)
    folder.mkdir()
    stage = folder / "stage-1-create-blue-with-a-long-file-name.yaml"
    stage.write_text(STAGE["1"].read_text().replace("./samples", str(PROJECT_DIR / "samples")))
    result = run(state, "local", "up", stage)
    assert result.exit_code == 0, result.output
    uri = RuntimeClient(state).status()["endpoints"]["fraud-scorer"]["scoringUri"]
    assert f"applied {stage}: endpoint fraud-scorer at {uri}\n" in result.output
    assert len(f"applied {stage}") > 200


def test_commands_that_need_a_runtime_exit_1_without_one(state):
    for command in (["local", "keys", "fraud-scorer"], ["local", "metrics"],
                    ["invoke", "fraud-scorer", "--request-file", REQUEST]):
        result = run(state, *command)
        assert (result.exit_code, result.stderr) == (
            1, f"error: no local runtime is running for {state.resolve()}: `mlcanary local up STAGE_FILE` starts one\n"), command
    # logs reads the files a runtime left; with none, it says where it looked
    result = run(state, "logs", "fraud-scorer", "--deployment", "blue")
    assert result.exit_code == 1 and "no worker logs of fraud-scorer/blue in" in result.stderr
    for command in (["local", "status"], ["local", "down"]):
        assert run(state, *command).exit_code == 0


def test_no_command_wraps_lines_off_a_terminal(capsys):
    """Every command prints through mlcanary.console (local commands and rollout's live table and
    summary alike): a long message stays one line in a pipe."""
    from mlcanary.console import output_console

    message = "rolled back at step 10 %: sequential judge failed on error rate: " + "x" * 300
    for stderr in (False, True):
        output_console(stderr=stderr).print(message)
    out, err = capsys.readouterr()
    assert out == err == message + "\n"
