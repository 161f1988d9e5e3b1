"""Finding 11: changing instanceType of a deployment that exists is not something Azure ML does in
place (an online deployment is created with its SKU; `az ml online-deployment update` changes count,
settings and model), and replacing it under the same name means deleting it, which Azure refuses
while it has traffic. `mlcanary check` (and every rollout's gate) refuses such a stage, mandatory by
default, and says what to do instead."""

from __future__ import annotations

import copy
import json

import yaml
from click.testing import CliRunner

from mlcanary.cli import main
from conftest import PROJECT_DIR

STAGE_5 = PROJECT_DIR / "stacks" / "stage-5-canary-green.yaml"


def stage(tmp_path, name: str, edit) -> str:
    """A copy of sample stage 5, edited, in a project in tmp_path (relative paths resolve from there)."""
    config = yaml.safe_load(STAGE_5.read_text())["config"]
    edit(config["mlcanary:endpoint"])
    out = tmp_path / "stacks" / name
    out.parent.mkdir(exist_ok=True)
    (tmp_path / "Pulumi.yaml").write_text((PROJECT_DIR / "Pulumi.yaml").read_text())
    (tmp_path / "stacks" / "deployments").mkdir(exist_ok=True)
    (tmp_path / "stacks" / "deployments" / "green.yml").write_text(
        (PROJECT_DIR / "stacks" / "deployments" / "green.yml").read_text())
    out.write_text(yaml.safe_dump({"config": copy.deepcopy(config)}, sort_keys=False))
    return str(out)


def check(*stages: str):
    return CliRunner().invoke(main, ["check", "--format", "json", *stages])


def test_a_live_deployment_changing_instance_type_is_refused(tmp_path):
    before = stage(tmp_path, "a.yaml", lambda e: None)
    after = stage(tmp_path, "b.yaml", lambda e: e["deployments"]["blue"].update(instanceType="Standard_F8s_v2"))
    result = check(before, after)
    assert result.exit_code == 1, result.output
    (violation,) = [v for v in json.loads(result.output) if v["policy"] == "instance-type-kept"]
    assert violation["enforcementLevel"] == "mandatory"
    assert ("deployment 'blue' changes instanceType from Standard_DS3_v2 to Standard_F8s_v2 while it has traffic"
            in violation["message"])
    assert "add a new deployment with the new type under another name" in violation["message"]


def test_the_same_type_in_another_case_and_a_new_deployment_with_a_new_type_pass(tmp_path):
    before = stage(tmp_path, "a.yaml", lambda e: None)

    def new_deployment(endpoint):
        endpoint["deployments"]["blue"]["instanceType"] = "standard_ds3_v2"  # Azure's SKU names ignore case
        endpoint["deployments"]["blue-f8"] = {**endpoint["deployments"]["blue"], "instanceType": "Standard_F8s_v2"}
        endpoint["traffic"]["blue-f8"] = 0

    after = stage(tmp_path, "b.yaml", new_deployment)
    result = check(before, after)
    assert not [v for v in json.loads(result.output) if v["policy"] == "instance-type-kept"], result.output


def test_a_kubernetes_deployment_moving_off_the_cluster_default_is_a_change(tmp_path):
    """Without instanceType a Kubernetes deployment runs on `defaultinstancetype` (the program names it):
    naming another type later is a change like any other."""
    def kubernetes(endpoint):
        endpoint["compute"] = "azureml:k8s-compute"
        endpoint["deployments"]["blue"].update(type="kubernetes")
        endpoint["deployments"]["blue"].pop("instanceType")
        endpoint["deployments"].pop("green")
        endpoint["traffic"] = {"blue": 100}

    before = stage(tmp_path, "a.yaml", kubernetes)
    after = stage(tmp_path, "b.yaml", lambda e: (kubernetes(e), e["deployments"]["blue"].update(instanceType="gpu")))
    result = check(before, after)
    (violation,) = [v for v in json.loads(result.output) if v.get("policy") == "instance-type-kept"]
    assert "from defaultinstancetype to gpu while it has traffic" in violation["message"]
