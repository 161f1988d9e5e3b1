"""`mlcanary check`: stage transitions, exit codes, output formats, unreadable inputs."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from mlcanary.components.spec import load_stack_config
from mlcanary.components.stage_file import namespaced
from conftest import PROJECT_DIR, STAGE_FILES, stage_config
from mlcanary.check import _check_transition, policy_defaults
from mlcanary.cli import main
from mlcanary.policy_config import policy_settings

STAGE = {p.stem.split("-")[1]: p for p in STAGE_FILES}  # "1" .. "7", and "4s" (the mirror ends)


def spec(config: dict):
    return load_stack_config(namespaced(config, "mlcanary"), PROJECT_DIR).endpoint


def stage_spec(number: str):
    return spec(stage_config(STAGE[number]))


def transition(before, after, config=None):
    return _check_transition("A -> B", before, after, policy_settings(config or {}, policy_defaults()))


def without_green(number: str):
    config = copy.deepcopy(stage_config(STAGE[number]))
    endpoint = config["mlcanary:endpoint"]
    del endpoint["deployments"]["green"]
    endpoint["traffic"] = {"blue": 100}
    endpoint["mirrorTraffic"] = {}
    return spec(config)


# name -> (before, after, policy config, policy, level, message)
BAD_STEPS = {
    "removed_while_live": (
        lambda: stage_spec("5"), lambda: stage_spec("7"), {}, "removed-deployment-had-no-traffic", "mandatory",
        "deployment 'blue' is removed but had 90% live traffic in the previous stage; move its traffic to 0 in a stage of its own first",
    ),
    "removed_while_mirrored": (
        lambda: stage_spec("4"), lambda: without_green("4"), {}, "removed-deployment-had-no-traffic", "mandatory",
        "deployment 'green' is removed but had 10% mirror traffic in the previous stage; move its traffic to 0 in a stage of its own first",
    ),
    "live_without_going_dark_first": (
        lambda: stage_spec("2"), lambda: stage_spec("5"), {}, "dark-before-live", "advisory",
        "deployment 'green' takes 10% live traffic as soon as it is deployed; deploy it dark (0%) or mirrored in a stage before it goes live",
    ),
    "live_without_going_dark_first_made_mandatory": (
        lambda: stage_spec("2"), lambda: stage_spec("5"), {"dark-before-live": "mandatory"}, "dark-before-live", "mandatory",
        "deployment 'green' takes 10% live traffic as soon as it is deployed",
    ),
    "step_moves_too_much_traffic": (
        lambda: stage_spec("5"), lambda: stage_spec("6"), {"max-traffic-shift": {"enforcementLevel": "mandatory", "maxShiftPercent": 50}},
        "max-traffic-shift", "mandatory",
        "this step moves 90 percentage points of live traffic; at most 50 may move in one step",
    ),
    "live_straight_after_mirror": (
        lambda: stage_spec("4"), lambda: stage_spec("5"), {}, "mirror-ends-before-live", "advisory",
        "deployment 'green' was mirrored (10%) and takes 10% live traffic in the very next stage; end the mirror in a stage of its own before it goes live",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STEPS))
def test_bad_step_is_reported(case):
    before, after, config, policy, level, message = BAD_STEPS[case]
    (found,) = [v for v in transition(before(), after(), config) if v.policy == policy]
    assert found.enforcementLevel == level
    assert found.message.startswith(message)
    assert found.stage == "A -> B" and found.resource == "endpoint fraud-scorer"


@pytest.mark.parametrize("number", ["1", "2", "3", "5", "6"])
def test_sample_steps_are_clean(number):
    following = str(int(number) + 1)
    assert transition(stage_spec(number), stage_spec(following)) == []


def test_traffic_shift_is_off_by_default():
    assert transition(stage_spec("5"), stage_spec("6")) == []


def test_a_disabled_transition_rule_reports_nothing():
    assert transition(stage_spec("5"), stage_spec("7"), {"removed-deployment-had-no-traffic": "disabled"}) == []


# --- the command ------------------------------------------------------------------------------

def run(*args: str):
    return CliRunner().invoke(main, ["check", *map(str, args)])


def test_the_sample_stages_pass_without_an_advisory():
    """They follow Azure's safe-rollout order: the mirror ends (stage 4s) before green takes live traffic."""
    result = run(*STAGE_FILES)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "Checked 8 stage(s) (37 resources) and 7 transition(s): 0 mandatory, 0 advisory violation(s)."
    )
    assert result.output.count("\n") == 1  # nothing to report


def test_going_live_straight_after_the_mirror_is_an_advisory():
    result = run(STAGE["4"], STAGE["5"])
    assert result.exit_code == 0, result.output
    assert "[advisory]  mirror-ends-before-live  (endpoint fraud-scorer)" in result.output


def test_mandatory_violation_exits_1_and_names_both_stages():
    result = run(STAGE["5"], STAGE["7"])
    assert result.exit_code == 1
    assert f"{STAGE['5']} -> {STAGE['7']}\n    - [mandatory]  removed-deployment-had-no-traffic" in result.output


def test_json_output_has_one_object_per_violation():
    result = CliRunner().invoke(main, ["check", "--format", "json", str(STAGE["5"]), str(STAGE["7"])])
    assert result.exit_code == 1
    (violation,) = json.loads(result.output)
    assert violation == {
        "stage": f"{STAGE['5']} -> {STAGE['7']}",
        "policy": "removed-deployment-had-no-traffic",
        "enforcementLevel": "mandatory",
        "resource": "endpoint fraud-scorer",
        "description": "A deployment is removed only after a stage in which it had no live or mirror traffic.",
        "message": "deployment 'blue' is removed but had 90% live traffic in the previous stage; "
        "move its traffic to 0 in a stage of its own first",
    }


def test_json_resource_is_the_urn(tmp_path):
    config = tmp_path / "policy.json"
    config.write_text('{"instance-count-in-range": {"minInstanceCount": 2}}')
    result = CliRunner().invoke(main, ["check", "--format", "json", "--policy-pack-config", str(config), str(STAGE["1"])])
    assert result.exit_code == 1
    (violation,) = json.loads(result.output)
    assert violation["resource"] == (
        "urn:pulumi:dev::mlcanary::mlcanary:endpoint:OnlineEndpoint$azure-native:machinelearningservices:OnlineDeployment::fraud-scorer-blue"
    )
    assert violation["message"].endswith("sku.capacity: instance count must be a whole number from 2 to 50, got 1")


def write_stage(tmp_path, text: str, name="stage.yaml"):
    (tmp_path / "Pulumi.yaml").write_text((PROJECT_DIR / "Pulumi.yaml").read_text())
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("config:\n  mlcanary:endpoint: {name: [oops\n", r"stage\.yaml: not valid YAML at line 3"),
        ("- just a list\n", r"stage\.yaml: a stage file is a Pulumi stack config file with a top-level `config:` mapping"),
        ("config:\n  mlcanary:endpoint: {name: ab}\n", r"stage\.yaml: invalid stack config:\n  mlcanary:endpoint\.name: 'ab' is not a valid endpoint name"),
    ],
    ids=["yaml_syntax_error", "no_config_mapping", "invalid_config"],
)
def test_unreadable_stage_exits_2_naming_file_and_field(tmp_path, text, message):
    result = run(write_stage(tmp_path, text), STAGE["1"])
    assert result.exit_code == 2
    assert re.search(rf"error: .*{message}", result.output), result.output


def test_missing_stage_file_exits_2(tmp_path):
    result = run(tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'nope.yaml'}: stage file not found" in result.output


def test_input_errors_win_over_violations(tmp_path):
    """A missing stage is exit 2 even when another stage has a mandatory violation."""
    result = run(STAGE["5"], STAGE["7"], tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "removed-deployment-had-no-traffic" in result.output


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", r"not valid JSON at line 1"),
        ('{"no-such-policy": "advisory"}', r"unknown policy 'no-such-policy'"),
    ],
    ids=["json_syntax_error", "unknown_policy"],
)
def test_bad_policy_config_exits_2(tmp_path, text, message):
    config = tmp_path / "policy.json"
    config.write_text(text)
    result = CliRunner().invoke(main, ["check", "--policy-pack-config", str(config), str(STAGE["1"])])
    assert result.exit_code == 2
    assert re.search(message, result.output)


def test_the_shipped_sample_policy_config_is_valid():
    result = CliRunner().invoke(
        main, ["check", "--policy-pack-config", str(PROJECT_DIR / "policies" / "policy-config.sample.json"), *map(str, STAGE_FILES)]
    )
    # The README's pipeline runs exactly this: the sample config and the sample stages agree.
    assert result.exit_code == 0, result.output
    assert "[mandatory]" not in result.output
    assert result.output.count("[advisory]  max-traffic-shift") == 1  # 90 points at stage 6, 50 allowed
    assert result.output.count("[advisory]  mirror-ends-before-live") == 0


def test_nothing_is_applied_and_the_installed_command_works():
    """The real console entry point, in a fresh process, with the exit code a pipeline sees."""
    before = {p: p.read_bytes() for p in STAGE_FILES}
    done = subprocess.run(
        [sys.executable, "-m", "mlcanary.cli", "check", *map(str, STAGE_FILES)],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "0 mandatory" in done.stdout
    assert {p: p.read_bytes() for p in STAGE_FILES} == before


def test_help_explains_exit_codes():
    result = CliRunner().invoke(main, ["check", "--help"])
    assert result.exit_code == 0
    assert "Exit codes: 0 no mandatory violation; 1 a mandatory violation; 2 an input" in " ".join(result.output.split())


def test_stage_files_are_plain_pulumi_config():
    for path in STAGE_FILES:
        assert set(yaml.safe_load(path.read_text())) == {"config"}


def test_local_target_stages_are_checked_with_the_same_policies(tmp_path):
    local = sorted((PROJECT_DIR / "stacks" / "local").glob("stage-*.yaml"))
    result = run(*local)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "Checked 8 stage(s) (37 resources) and 7 transition(s): 0 mandatory, 0 advisory violation(s)."
    )
    config = tmp_path / "policy.json"
    config.write_text('{"instance-count-in-range": {"minInstanceCount": 2}}')
    strict = CliRunner().invoke(main, ["check", "--format", "json", "--policy-pack-config", str(config), str(local[0])])
    (violation,) = json.loads(strict.output)
    assert strict.exit_code == 1
    assert "LocalOnlineDeployment" in violation["resource"]
    assert violation["message"].endswith("instanceCount: instance count must be a whole number from 2 to 50, got 1")


def test_a_stages_violations_come_out_in_the_same_order_whatever_order_its_resources_registered():
    """Blue and green register in either order (sibling deployments): the report must not follow it,
    or a pipeline diffing `check --format json` between runs sees changes that are not there."""
    import dataclasses

    from mlcanary.check import judge_stage, load_and_render

    settings = policy_settings({"instance-count-in-range": {"minInstanceCount": 40}}, policy_defaults())
    spec, render, error = load_and_render(STAGE["5"])
    assert error is None
    reversed_render = dataclasses.replace(render, resources=list(reversed(render.resources)))
    in_order = judge_stage("stage", spec, render, settings)
    in_reverse = judge_stage("stage", spec, reversed_render, settings)
    assert {v.resource.rsplit("::", 1)[1] for v in in_order} >= {"fraud-scorer-blue", "fraud-scorer-green"}
    assert in_order == in_reverse
