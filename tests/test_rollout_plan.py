"""Plan derivation: stage file + options -> derived stages, each through the spec and `check`'s gate."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlcanary.check import policy_defaults
from mlcanary.components.spec import SpecError, load_stack_config
from mlcanary.policy_config import load_policy_config
from mlcanary.rollout.plan import PlanError, gate, load_plan, write_stages
from conftest import PROJECT_DIR

STAGE_3 = PROJECT_DIR / "stacks" / "local" / "stage-3-green-dark.yaml"
DEFAULT_SETTINGS = load_policy_config(None, policy_defaults())


def stage_with(tmp_path: Path, rollout: dict | None = None, **endpoint_changes) -> Path:
    """Local stage 3 with a `mlcanary:rollout` section, in a project of its own under tmp_path (a copy of
    Pulumi.yaml; the deployments' paths made absolute): tests never write into the working tree."""
    shutil.copy(PROJECT_DIR / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    config = copy.deepcopy(yaml.safe_load(STAGE_3.read_text())["config"])
    endpoint = config["mlcanary:endpoint"]
    for deployment in endpoint["deployments"].values():
        for key in ("model", "code", "file"):
            if key in deployment:
                deployment[key] = str(PROJECT_DIR / deployment[key])
    endpoint.update(endpoint_changes)
    if rollout is not None:
        config["mlcanary:rollout"] = rollout
    path = tmp_path / "stage-3-with-rollout.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


@pytest.fixture
def stage_file(tmp_path):
    return lambda rollout=None, **changes: stage_with(tmp_path, rollout, **changes)


def test_default_plan_walks_10_25_50_100_from_the_busiest_deployment():
    plan = load_plan(STAGE_3, {"to": "green"})
    assert plan.options.baseline == "blue" and plan.options.interval_s == 30
    assert [s.traffic for s in plan.steps] == [
        {"blue": 90, "green": 10}, {"blue": 75, "green": 25}, {"blue": 50, "green": 50}, {"blue": 0, "green": 100}]
    assert plan.rollback.traffic == {"blue": 100, "green": 0}


def test_mirror_phase_and_delete_old():
    plan = load_plan(STAGE_3, {"to": "green", "steps": [50, 100], "mirror": 20, "mirrorFor": "1m", "deleteOld": True})
    assert [s.label for s in plan.steps] == ["mirror 20 %", "mirror off", "50 %", "100 %", "delete blue"]
    assert plan.steps[0].mirror_traffic == {"green": 20} and plan.steps[0].traffic == {"blue": 100, "green": 0}
    # Azure's order: the mirror ends in a step of its own, green still dark, before its first live step
    assert plan.steps[1].mirror_traffic == {} and plan.steps[1].traffic == {"blue": 100, "green": 0}
    assert [s.judged for s in plan.steps] == [True, False, True, True, False]
    assert "blue" not in plan.steps[-1].spec.endpoint.deployments
    assert plan.options.mirror_for_s == 60


def test_a_plan_with_a_mirror_phase_passes_the_gate_without_an_advisory():
    plan = load_plan(STAGE_3, {"to": "green", "mirror": 10, "mirrorFor": "5s"})
    assert gate(plan, DEFAULT_SETTINGS) == []
    assert plan.advisories == []  # mirror-ends-before-live: the mirror ends before the first live step


def test_a_step_the_transition_rules_refuse_is_reported_before_anything_runs():
    settings = load_policy_config(None, policy_defaults())
    from mlcanary.policy_config import PolicySettings
    from pulumi_policy import EnforcementLevel

    settings["max-traffic-shift"] = PolicySettings(EnforcementLevel.MANDATORY, {"maxShiftPercent": 30})
    plan = load_plan(STAGE_3, {"to": "green", "steps": [10, 100]})
    refused = gate(plan, settings)
    assert len(refused) == 1 and "max-traffic-shift" in refused[0] and "'100 %'" in refused[0]


def test_the_plan_in_the_stack_config_is_used_and_flags_override_it(stage_file):
    path = stage_file({"to": "green", "steps": [20, 100], "interval": "2m", "rule": "error_rate < 0.02"})
    plan = load_plan(path, {"interval": "10s"})
    assert plan.options.steps == (20, 100) and plan.options.interval_s == 10
    assert [str(r) for r in plan.options.rules] == ["error_rate < 0.02"]


@pytest.mark.parametrize("rollout, message", [
    ({"to": "purple"}, "mlcanary:rollout.to: deployment 'purple' is not in this stage"),
    ({"steps": [50, 10, 100]}, "mlcanary:rollout.steps: live percentages 1-100"),
    ({"steps": [10, 50]}, "ending at 100"),
    ({"interval": "soon"}, "mlcanary:rollout.interval: a duration such as 30s"),
    ({"mirror": 10}, "mirror and mirrorFor go together"),
    ({"mirror": 60, "mirrorFor": "1m"}, "mlcanary:rollout.mirror"),
    ({"alpha": 2}, "mlcanary:rollout.alpha"),
    ({"rule": ["error_rate >> 1"]}, "mlcanary:rollout.rule: rule 'error_rate >> 1'"),
    ({"judge": "vibes"}, "mlcanary:rollout.judge"),
    ({"speed": "fast"}, "mlcanary:rollout.speed: unknown key; allowed here: to, from, steps"),
], ids=["unknown_target", "steps_not_increasing", "steps_not_ending_at_100", "bad_interval", "mirror_without_duration",
        "mirror_above_50", "alpha_not_a_probability", "bad_rule", "unknown_judge", "unknown_key"])
def test_a_bad_rollout_config_is_refused_with_the_rest_of_the_spec(rollout, message):
    config = copy.deepcopy(yaml.safe_load(STAGE_3.read_text())["config"])
    raw = {"target": "local", "endpoint": config["mlcanary:endpoint"], "rollout": rollout}
    with pytest.raises(SpecError) as raised:
        load_stack_config(raw, PROJECT_DIR)
    assert message in str(raised.value)


@pytest.mark.parametrize("flags, message", [
    ({}, "--to: required"),
    ({"to": "green", "steps": [10, 200]}, "--steps: live percentages"),
    ({"to": "green", "from": "green"}, "--from: the baseline must be another deployment"),
    ({"to": "green", "minRequests": 0}, "--min-requests: a whole number from 3 to 1,000,000, got 0"),
    ({"to": "green", "minRequests": 1}, "--min-requests: a whole number from 3 to 1,000,000, got 1"),
    ({"to": "green", "alpha": 1e-300}, "--alpha: the false-rollback bound is a probability, from 0.001 to 0.2, got 1e-300"),
    ({"to": "green", "alpha": 0.5}, "--alpha: the false-rollback bound is a probability, from 0.001 to 0.2"),
    ({"to": "green", "interval": "0.001s"}, "--interval: from 1 to 86,400 seconds, got '0.001s'"),
    ({"to": "green", "interval": "2d"}, "--interval: a duration such as 30s"),
    ({"to": "green", "interval": "25h"}, "--interval: from 1 to 86,400 seconds, got '25h'"),
    ({"to": "green", "mirror": 10, "mirrorFor": "0.5s"}, "--mirror-for: from 1 to 86,400 seconds"),
    ({"to": "green", "bake": "8d"}, "--bake: a duration such as 30s"),
    ({"to": "green", "bake": "200h"}, "--bake: from 1 to 604,800 seconds"),
    ({"to": "green", "maxHold": 1_000_000_000}, "--max-hold: a whole number from 0 to 100, got 1000000000"),
    ({"to": "green", "maxHold": -1}, "--max-hold: a whole number from 0 to 100, got -1"),
    ({"to": "green", "failureLimit": 0}, "--failure-limit: a whole number from 1 to 100, got 0"),
], ids=["no_target", "step_above_100", "baseline_is_target", "min_requests_zero", "min_requests_one", "alpha_tiny",
        "alpha_half", "interval_one_millisecond", "interval_unit_unknown", "interval_over_a_day", "mirror_for_half_second",
        "bake_unit_unknown", "bake_over_a_week", "max_hold_a_billion", "max_hold_negative", "failure_limit_zero"])
def test_bad_flags_are_refused_naming_the_option(flags, message):
    with pytest.raises(PlanError) as raised:
        load_plan(STAGE_3, flags)
    assert message in str(raised.value)


def test_written_stages_are_stage_files_that_check_accepts(tmp_path):
    plan = load_plan(STAGE_3, {"to": "green", "steps": [10, 100], "deleteOld": True})
    written = write_stages(plan, tmp_path / "out")
    assert [p.name for p in written] == ["stage-3-green-dark-step-1-10pct.yaml", "stage-3-green-dark-step-2-100pct.yaml",
                                         "stage-3-green-dark-step-3-delete-blue.yaml"]
    # no Pulumi project above the folder: its paths are relative to the folder, where they resolve from
    blue = yaml.safe_load(written[0].read_text())["config"]["mlcanary:endpoint"]["deployments"]["blue"]
    assert not Path(blue["model"]).is_absolute() and (tmp_path / "out" / blue["model"]).resolve().is_dir()
    result = subprocess.run([sys.executable, "-m", "mlcanary.cli", "check", str(STAGE_3), *map(str, written)],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Checked 4 stage(s)" in result.stdout


def test_written_stages_have_paths_relative_to_their_project_so_they_can_be_committed(tmp_path):
    project = tmp_path / "review"
    (project / "rollouts").mkdir(parents=True)
    (project / "Pulumi.yaml").write_text("name: mlcanary\nruntime: python\n")
    plan = load_plan(STAGE_3, {"to": "green", "steps": [50, 100]})
    written = write_stages(plan, project / "rollouts")
    deployments = yaml.safe_load(written[0].read_text())["config"]["mlcanary:endpoint"]["deployments"]
    paths = [deployments["blue"]["model"], deployments["blue"]["code"], deployments["green"]["file"]]
    assert not any(Path(p).is_absolute() for p in paths), paths
    assert all((project / p).resolve().exists() for p in paths)
    result = subprocess.run([sys.executable, "-m", "mlcanary.cli", "check", *map(str, written)],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr + result.stdout


def test_the_documented_rollout_table_matches_the_model():
    import re

    from mlcanary.components.rollout_spec import CompareSpec, RolloutSpec

    reference = (PROJECT_DIR / "docs" / "config.md").read_text()
    section = reference.split("`mlcanary:rollout` — ", 1)[1].split("\n\n", 2)[1]
    keys = re.findall(r"^\| `([A-Za-z]+)` \|", section, flags=re.M)
    assert keys == [info.alias for info in RolloutSpec.model_fields.values()]
    nested = re.findall(r"^\| `compare\.([A-Za-z]+)` \|", section, flags=re.M)
    assert nested == [info.alias for info in CompareSpec.model_fields.values()]


# --- `compare` in mlcanary:rollout: one nested object, named key by key -----------------------------------

@pytest.mark.parametrize("compare, message", [
    ({"tolerence": 0.1, "path": "scores"},
     "mlcanary:rollout.compare.tolerence: unknown key; allowed here: path, tolerance, maxDisagreement"),
    ("scores", "mlcanary:rollout.compare: must be an object"),
    ({}, "mlcanary:rollout.compare.path: required: what of the answers to compare"),
    ({"tolerance": 0.01}, "mlcanary:rollout.compare.tolerance: needs a compare path (--compare-path or compare.path)"),
    ({"maxDisagreement": 0.1}, "mlcanary:rollout.compare.maxDisagreement: needs a compare path"),
    ({"path": "$..scores"}, "mlcanary:rollout.compare.path: compare path '$..scores': cannot read it from '..scores'"),
    ({"path": 5}, "mlcanary:rollout.compare.path: must be a string, got 5"),
    ({"path": "scores", "tolerance": "5 %"}, "mlcanary:rollout.compare.tolerance: output tolerance '5 %'"),
    ({"path": "scores", "tolerance": "abs:-1"}, "mlcanary:rollout.compare.tolerance: output tolerance 'abs:-1'"),
    ({"path": "scores", "tolerance": [0.1]}, "mlcanary:rollout.compare.tolerance: must be a number (relative: 0.01 = "
                                             "1 %) or a string: abs:0.5 (absolute), 0.01,abs:1e-6 (both), got [0.1]"),
    ({"path": "scores", "tolerance": True}, "mlcanary:rollout.compare.tolerance: must be a number"),
    ({"path": "scores", "maxDisagreement": 1}, "mlcanary:rollout.compare.maxDisagreement: the share of compared answers "
                                               "allowed to disagree, from 0 up to (not including) 1, got 1"),
    ({"path": "scores", "maxDisagreement": "some"}, "mlcanary:rollout.compare.maxDisagreement:"),
], ids=["unknown_key", "not_an_object", "empty", "tolerance_without_path", "max_disagreement_without_path",
        "bad_path", "path_not_a_string", "tolerance_not_a_number", "negative_absolute_tolerance", "tolerance_a_list",
        "tolerance_a_boolean",
        "max_disagreement_one", "max_disagreement_not_a_number"])
def test_a_bad_compare_object_is_refused_naming_its_key(compare, message):
    config = copy.deepcopy(yaml.safe_load(STAGE_3.read_text())["config"])
    raw = {"target": "local", "endpoint": config["mlcanary:endpoint"], "rollout": {"compare": compare}}
    with pytest.raises(SpecError) as raised:
        load_stack_config(raw, PROJECT_DIR)
    assert message in str(raised.value)


@pytest.mark.parametrize("old_key", ["comparePath", "outputTolerance", "maxDisagreement"])
def test_the_flat_compare_keys_are_unknown(old_key):
    config = copy.deepcopy(yaml.safe_load(STAGE_3.read_text())["config"])
    raw = {"target": "local", "endpoint": config["mlcanary:endpoint"], "rollout": {old_key: "scores"}}
    with pytest.raises(SpecError) as raised:
        load_stack_config(raw, PROJECT_DIR)
    assert f"mlcanary:rollout.{old_key}: unknown key; allowed here:" in str(raised.value)
    assert "compare" in str(raised.value)


def test_an_absolute_tolerance_in_the_config_is_the_abs_string_and_flags_override_key_by_key(stage_file):
    from mlcanary.components.answer_compare import settings_from

    path = stage_file({"to": "green", "compare": {"path": "scores", "tolerance": "abs:0.5", "maxDisagreement": 0.1}})
    options = load_plan(path, {}).options
    tolerance = settings_from(options.compare_path, options.output_tolerance).tolerance
    assert (tolerance.absolute, tolerance.relative) == (0.5, 0.0)
    assert options.as_json()["compare"] == {"path": "scores", "tolerance": "abs:0.5", "maxDisagreement": 0.1}
    # a number is relative; a flag replaces one key and keeps the others
    options = load_plan(path, {"compare": {"tolerance": 0.02}}).options
    tolerance = settings_from(options.compare_path, options.output_tolerance).tolerance
    assert (tolerance.absolute, tolerance.relative) == (0.0, 0.02) and options.max_disagreement == 0.1
    both = load_plan(path, {"compare": {"tolerance": "0.01,abs:1e-6"}}).options
    tolerance = settings_from(both.compare_path, both.output_tolerance).tolerance
    assert (tolerance.absolute, tolerance.relative) == (1e-6, 0.01)


def test_a_bad_compare_flag_is_named_as_the_flag_even_with_compare_in_the_config(stage_file):
    path = stage_file({"to": "green", "compare": {"path": "scores"}})
    with pytest.raises(PlanError) as raised:
        load_plan(path, {"compare": {"tolerance": "5 %"}})
    assert "--output-tolerance: output tolerance '5 %'" in str(raised.value)
    with pytest.raises(PlanError) as raised:
        load_plan(STAGE_3, {"to": "green", "compare": {"maxDisagreement": 0.5}})
    assert "--max-disagreement: needs a compare path (--compare-path or compare.path)" in str(raised.value)


def test_written_stages_go_into_a_new_nested_folder_with_a_header_and_the_stage_files_key_order(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "conda.yml").write_text("name: scoring\ndependencies: [python=3.11]\n")
    path = stage_with(project)
    loaded = yaml.safe_load(path.read_text())["config"]
    loaded["mlcanary:endpoint"]["deployments"]["blue"]["environment"] = {
        "image": "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py311-cpu-inference:latest", "condaFile": "./conda.yml"}
    config = {"config": {"mlcanary:target": "local", "mlcanary:endpoint": loaded["mlcanary:endpoint"]}}  # not sorted
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = load_plan(path, {"to": "green", "steps": [50, 100]})
    before = copy.deepcopy(plan.steps[0].config)

    written = write_stages(plan, tmp_path / "out" / "nested")  # no Pulumi project above: paths from there
    assert written[0].read_text().splitlines()[0] == (
        "# Derived by `mlcanary rollout stage-3-with-rollout.yaml --to green`: step 1 of 2, 50 % "
        "(traffic {'blue': 50, 'green': 50}, mirror off)")
    derived = yaml.safe_load(written[0].read_text())["config"]
    assert list(derived) == list(config["config"])  # the stage file's order, not sorted
    conda = derived["mlcanary:endpoint"]["deployments"]["blue"]["environment"]["condaFile"]
    assert conda == "../../project/conda.yml" and (tmp_path / "out" / "nested" / conda).resolve().is_file()
    assert plan.steps[0].config == before  # the plan's own stages keep their paths


@pytest.mark.parametrize("flags", [{"steps": [100]}, {"steps": [100], "bake": "1m"}])
def test_a_plan_that_compares_answers_in_no_step_is_refused_rather_than_promoting_on_none(flags):
    """Found in use: `--steps 100 --compare-path scores` with no mirror phase promoted a green that
    answers a constant: no step has a mirror or both sides live, so the answer judge saw nothing."""
    with pytest.raises(PlanError) as raised:
        load_plan(STAGE_3, {"to": "green", "compare": {"path": "scores"}, **flags})
    assert "--compare-path (mlcanary:rollout.compare.path): no step of this plan gives answers to compare" in str(raised.value)
    # a mirror phase, or a step both sides serve, gives answers
    assert load_plan(STAGE_3, {"to": "green", "compare": {"path": "scores"}, "steps": [100], "mirror": 10, "mirrorFor": "1m"})
    assert load_plan(STAGE_3, {"to": "green", "compare": {"path": "scores"}, "steps": [50, 100]})
