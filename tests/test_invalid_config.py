"""Invalid stack configs: each is refused with a message naming the config path and what is allowed,
by the real program, before a single resource is registered."""

from __future__ import annotations

import re

import pulumi
import pytest

from mlcanary.components.render import AzureMocks, render_program
from conftest import PROGRAM


class CountingMocks(AzureMocks):
    def __init__(self):
        self.registered = []

    def new_resource(self, args):
        self.registered.append(args.name)
        return super().new_resource(args)


def endpoint(config):
    return config["mlcanary:endpoint"]


def deployments(config):
    return endpoint(config)["deployments"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def many_deployments(config, count):
    blue = deployments(config)["blue"]
    endpoint(config)["deployments"] = {f"model-{i:02d}": dict(blue) for i in range(count)}
    endpoint(config)["traffic"] = {"model-00": 100}
    endpoint(config)["mirrorTraffic"] = {}

def kubernetes(config):
    endpoint(config).update({"compute": "azureml:k8s-compute"})
    for deployment in deployments(config).values():
        deployment["type"] = "kubernetes"


def code_folder(tmp_path, script="score.py"):
    folder = tmp_path / "onlinescoring"
    folder.mkdir(exist_ok=True)
    (folder / script).write_text("def init(): pass\n")
    return str(folder)


E = "mlcanary:endpoint"
GREEN_YAML = "name: green\ninstance_type: Standard_DS3_v2\n"

# name -> (change to the stage-5 config, expected message regex)
CASES = {
    "unknown_config_key": (
        lambda c, t: c.update({"mlcanary:endpiont": {}}),
        r"mlcanary:endpiont: unknown config key; allowed: target, endpoint",
    ),
    "missing_endpoint": (lambda c, t: c.pop(E), rf"{E}: required"),
    "endpoint_not_an_object": (lambda c, t: c.update({E: "fraud-scorer"}), rf"{E}: must be an object"),
    "unknown_endpoint_key": (
        lambda c, t: endpoint(c).update({"trafic": {"blue": 100}}),
        rf"{E}\.trafic: unknown key; allowed here: name, resourceGroup, workspace, authMode",
    ),
    "unknown_deployment_key": (
        lambda c, t: deployments(c)["blue"].update({"instanceCnt": 2}),
        rf"{E}\.deployments\.blue\.instanceCnt: unknown key; allowed here: type, model, modelType, modelName",
    ),
    "invalid_target": (
        lambda c, t: c.update({"mlcanary:target": "gcp"}),
        r"mlcanary:target: must be one of 'azure' or 'local', got 'gcp'",
    ),
    "instance_count_not_a_number": (
        lambda c, t: deployments(c)["blue"].update({"instanceCount": "two"}),
        rf"{E}\.deployments\.blue\.instanceCount: must be a whole number, got 'two'",
    ),
    "instance_count_boolean": (
        lambda c, t: deployments(c)["blue"].update({"instanceCount": True}),
        rf"{E}\.deployments\.blue\.instanceCount: must be a whole number, got True",
    ),
    "instance_count_zero": (
        lambda c, t: deployments(c)["blue"].update({"instanceCount": 0}),
        rf"{E}\.deployments\.blue\.instanceCount: instance count must be a whole number from 1 to 50, got 0",
    ),
    "instance_count_above_50": (
        lambda c, t: deployments(c)["green"].update({"instanceCount": 51}),
        rf"{E}\.deployments\.green\.instanceCount: instance count must be a whole number from 1 to 50, got 51",
    ),
    "missing_instance_type": (
        lambda c, t: deployments(c)["blue"].pop("instanceType"),
        rf"{E}\.deployments\.blue\.instanceType: required on the azure target: the VM size",
    ),
    "endpoint_name_starts_with_digit": (
        lambda c, t: endpoint(c).update({"name": "1fraud"}),  # also disagrees with green's file
        rf"{E}\.name: '1fraud' is not a valid endpoint name: 3-32 characters, starting with a letter",
    ),
    "endpoint_name_too_long": (
        lambda c, t: endpoint(c).update({"name": "f" * 33}),
        rf"{E}\.name: 'f{{33}}' is not a valid endpoint name",
    ),
    "endpoint_name_too_short": (
        lambda c, t: endpoint(c).update({"name": "ab"}),
        rf"{E}\.name: 'ab' is not a valid endpoint name",
    ),
    "endpoint_name_ends_with_hyphen": (
        lambda c, t: endpoint(c).update({"name": "fraud-"}),
        rf"{E}\.name: 'fraud-' is not a valid endpoint name: .*not ending in a hyphen",
    ),
    "deployment_name_with_underscore": (
        lambda c, t: (deployments(c).update({"blue_2": deployments(c).pop("blue")}),
                      endpoint(c).update({"traffic": {"blue_2": 90, "green": 10}})),
        rf"{E}\.deployments\.blue_2: 'blue_2' is not a valid deployment name",
    ),
    "invalid_auth_mode": (
        lambda c, t: endpoint(c).update({"authMode": "password"}),
        rf"{E}\.authMode: auth mode must be one of key, aml_token, aad_token, got 'password'",
    ),
    "missing_workspace": (
        lambda c, t: endpoint(c).pop("workspace"),
        rf"{E}\.workspace: required on the azure target",
    ),
    "traffic_to_unknown_deployment": (
        lambda c, t: endpoint(c).update({"traffic": {"blue": 90, "red": 10}}),
        rf"{E}\.traffic\.red: live traffic names unknown deployment 'red'; deployments: blue, green",
    ),
    "traffic_sums_to_90": (
        lambda c, t: endpoint(c).update({"traffic": {"blue": 80, "green": 10}}),
        rf"{E}\.traffic: live traffic must sum to 100 \(or 0 when nothing is live\), got 90 \(blue=80, green=10\)",
    ),
    "traffic_sums_to_110": (
        lambda c, t: endpoint(c).update({"traffic": {"blue": 100, "green": 10}}),
        rf"{E}\.traffic: live traffic must sum to 100 .*got 110",
    ),
    "traffic_above_100": (
        lambda c, t: endpoint(c).update({"traffic": {"blue": 150, "green": -50}}),
        rf"{E}\.traffic\.blue: live traffic percent must be a whole number from 0 to 100, got 150",
    ),
    "traffic_negative": (
        lambda c, t: endpoint(c).update({"traffic": {"blue": 150, "green": -50}}),
        rf"{E}\.traffic\.green: live traffic percent must be a whole number from 0 to 100, got -50",
    ),
    "traffic_fraction": (
        lambda c, t: endpoint(c).update({"traffic": {"blue": 89.5, "green": 10.5}}),
        rf"{E}\.traffic\.blue: must be a whole number, got 89\.5",
    ),
    "traffic_not_a_mapping": (
        lambda c, t: endpoint(c).update({"traffic": ["blue"]}),
        rf"{E}\.traffic: must be an object",
    ),
    "mirror_above_50": (
        lambda c, t: endpoint(c).update({"traffic": {"blue": 100, "green": 0}, "mirrorTraffic": {"green": 60}}),
        rf"{E}\.mirrorTraffic\.green: mirror traffic percent must be a whole number from 0 to 50, got 60",
    ),
    "mirror_on_two_deployments": (
        lambda c, t: (deployments(c).update({"red": dict(deployments(c)["blue"])}),
                      endpoint(c).update({"traffic": {"blue": 100}, "mirrorTraffic": {"green": 10, "red": 5}})),
        rf"{E}\.mirrorTraffic: mirror traffic may go to at most one deployment, got 2 \(green, red\)",
    ),
    "mirror_to_unknown_deployment": (
        lambda c, t: endpoint(c).update({"traffic": {"blue": 100}, "mirrorTraffic": {"red": 10}}),
        rf"{E}\.mirrorTraffic\.red: mirror traffic names unknown deployment 'red'",
    ),
    "live_and_mirrored": (
        lambda c, t: endpoint(c).update({"mirrorTraffic": {"green": 10}}),
        rf"{E}\.mirrorTraffic\.green: deployment 'green' has live traffic \(10%\) and mirror traffic \(10%\); "
        "a deployment takes one or the other",
    ),
    "more_than_20_deployments": (
        lambda c, t: many_deployments(c, 21),
        rf"{E}\.deployments: an endpoint has at most 20 deployments, got 21",
    ),
    "request_timeout_above_180s": (
        lambda c, t: deployments(c)["blue"].update({"requestSettings": {"requestTimeoutMs": 180_001}}),
        rf"{E}\.deployments\.blue\.requestSettings\.requestTimeoutMs: request timeout \(ms\) on a managed "
        "endpoint must be a whole number from 1 to 180000, got 180001",
    ),
    "code_without_scoring_script": (
        lambda c, t: deployments(c)["blue"].pop("scoringScript"),
        rf"{E}\.deployments\.blue: code and scoringScript go together",
    ),
    "code_without_environment": (
        lambda c, t: deployments(c)["blue"].pop("environment"),
        rf"{E}\.deployments\.blue\.environment: required when code is given",
    ),
    "asset_without_version": (
        lambda c, t: deployments(c)["blue"].update({"model": "azureml:fraud-model"}),
        rf"{E}\.deployments\.blue\.model: 'azureml:fraud-model' must pin a version: azureml:<name>:<version>",
    ),
    "missing_local_path": (
        lambda c, t: deployments(c)["blue"].update({"code": "./no-such-folder"}),
        rf"{E}\.deployments\.blue\.code: local path './no-such-folder' does not exist",
    ),
    "environment_not_an_asset": (
        lambda c, t: deployments(c)["blue"].update({"environment": "./my-env"}),
        rf"{E}\.deployments\.blue\.environment: './my-env' is not an environment asset: use azureml:<name>:<version>",
    ),
    "mirror_on_kubernetes_endpoint": (
        lambda c, t: (endpoint(c).update({"compute": "/subscriptions/x/k8s", "traffic": {"blue": 100, "green": 0},
                                          "mirrorTraffic": {"green": 10}}),
                      deployments(c)["blue"].update({"type": "kubernetes"}),
                      deployments(c)["green"].update({"type": "kubernetes"})),
        rf"{E}\.mirrorTraffic: mirror traffic is not supported on Kubernetes online endpoints",
    ),
    "kubernetes_deployment_on_managed_endpoint": (
        lambda c, t: deployments(c)["blue"].update({"type": "kubernetes"}),
        rf"{E}\.deployments\.blue\.type: a kubernetes deployment needs a Kubernetes endpoint",
    ),
    "deployment_yaml_missing": (
        lambda c, t: deployments(c)["green"].update({"file": "./stacks/deployments/no-such.yml"}),
        rf"{E}\.deployments\.green\.file: .*no-such\.yml: deployment YAML file not found",
    ),
    "deployment_yaml_malformed": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "bad.yml", "name: green\ninstance_type: [oops\n")}),
        rf"{E}\.deployments\.green\.file: .*bad\.yml: not valid YAML at line 3",
    ),
    "deployment_yaml_not_a_mapping": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "list.yml", "- green\n")}),
        rf"{E}\.deployments\.green\.file: .*list\.yml must hold a mapping of deployment keys, got list",
    ),
    "deployment_yaml_unsupported_key": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "g.yml", GREEN_YAML + "private_network_connection: true\n")}),
        rf"{E}\.deployments\.green\.file \(.*g\.yml\) private_network_connection: key not supported by mlcanary; supported: name",
    ),
    # data collector (rules: azure-ai-ml's DataCollectorSchema / DeploymentCollectionSchema, REST spec)
    "data_collector_sampling_rate_above_one": (
        lambda c, t: deployments(c)["green"].update({"dataCollector": {"collections": {"response": {"enabled": True}},
                                                                        "samplingRate": 50}}),
        rf"{E}\.deployments\.green\.dataCollector\.samplingRate: must be a share from 0\.0 to 1\.0",
    ),
    "data_collector_enabled_not_true_or_false": (
        lambda c, t: deployments(c)["green"].update({"dataCollector": {"collections": {"response": {"enabled": "yes"}}}}),
        rf"{E}\.deployments\.green\.dataCollector\.collections\.response\.enabled: must be true or false, got 'yes'",
    ),
    "data_collector_collection_without_enabled": (
        lambda c, t: deployments(c)["green"].update({"dataCollector": {"collections": {"response": {}}}}),
        rf"{E}\.deployments\.green\.dataCollector\.collections\.response\.enabled: required",
    ),
    "data_collector_without_collections": (
        lambda c, t: deployments(c)["green"].update({"dataCollector": {"rollingRate": "hour"}}),
        rf"{E}\.deployments\.green\.dataCollector\.collections: required",
    ),
    "data_collector_rolling_rate_unknown": (
        lambda c, t: deployments(c)["green"].update({"dataCollector": {"collections": {"response": {"enabled": True}},
                                                                        "rollingRate": "year"}}),
        rf"{E}\.deployments\.green\.dataCollector\.rollingRate: must be one of 'minute', 'hour' or 'day', got 'year'",
    ),
    "data_collector_client_id_not_a_guid": (
        lambda c, t: deployments(c)["green"].update({"dataCollector": {"collections": {"response": {
            "enabled": True, "clientId": "my-identity"}}}}),
        rf"{E}\.deployments\.green\.dataCollector\.collections\.response\.clientId: 'my-identity' is not a client id",
    ),
    "data_collector_data_path_not_a_datastore_path": (
        lambda c, t: deployments(c)["green"].update({"dataCollector": {"collections": {"response": {
            "enabled": True, "data": {"name": "answers", "path": "/tmp/answers"}}}}}),
        rf"{E}\.deployments\.green\.dataCollector\.collections\.response\.data\.path: '/tmp/answers' is not a "
        "datastore path",
    ),
    "data_collector_collection_name_with_a_slash": (
        lambda c, t: deployments(c)["green"].update({"dataCollector": {"collections": {"a/b": {"enabled": True}}}}),
        rf"{E}\.deployments\.green\.dataCollector\.collections\.a/b: 'a/b' cannot name a collection",
    ),
    "deployment_yaml_data_collector_unknown_key": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "g.yml", GREEN_YAML + "data_collector:\n  "
                                                                   "collections:\n    request: {enabled: 'true', mode: x}\n")}),
        rf"{E}\.deployments\.green\.file \(.*g\.yml\) data_collector\.collections\.request\.mode: unknown key; "
        "allowed: enabled, client_id, data",
    ),
    "deployment_yaml_data_collector_enabled_boolean": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "g.yml", GREEN_YAML + "data_collector:\n  "
                                                                   "collections:\n    request: {enabled: true}\n")}),
        rf"{E}\.deployments\.green\.file \(.*g\.yml\) data_collector\.collections\.request\.enabled: must be the "
        "text 'true' or 'false'",
    ),
    "deployment_yaml_data_collector_data_as_text": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "g.yml", GREEN_YAML + "data_collector:\n  "
                                                                   "collections:\n    request: {enabled: 'true', data: azureml:x:1}\n")}),
        rf"{E}\.deployments\.green\.file \(.*g\.yml\) data_collector\.collections\.request\.data: must be a "
        "mapping with name, path and/or version",
    ),
    "deployment_yaml_name_mismatch": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "g.yml", "name: red\ninstance_type: x\n")}),
        rf"{E}\.deployments\.green\.file: the file names deployment 'red' but is used as deployment 'green'",
    ),
    "deployment_yaml_bad_value": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "g.yml", GREEN_YAML + "instance_count: 0\n"),
                                                     "instanceCount": None}) or deployments(c)["green"].pop("instanceCount"),
        rf"{E}\.deployments\.green\.instanceCount: instance count must be a whole number from 1 to 50, got 0",
    ),
    "environment_variable_name_with_equals": (
        lambda c, t: deployments(c)["blue"].update({"environmentVariables": {"A=B": "1"}}),
        rf"{E}\.deployments\.blue\.environmentVariables\.A=B: 'A=B' is not a valid environment variable name",
    ),
    "environment_variable_name_starts_with_digit": (
        lambda c, t: deployments(c)["blue"].update({"environmentVariables": {"1WORKERS": "4"}}),
        rf"{E}\.deployments\.blue\.environmentVariables\.1WORKERS: '1WORKERS' is not a valid environment variable name",
    ),
    "environment_variable_value_with_nul": (
        lambda c, t: deployments(c)["blue"].update({"environmentVariables": {"MODE": "a\0b"}}),
        rf"{E}\.deployments\.blue\.environmentVariables\.MODE: an environment variable value cannot contain a NUL",
    ),
    "environment_variable_value_a_list": (
        lambda c, t: deployments(c)["blue"].update({"environmentVariables": {"MODE": ["a"]}}),
        rf"{E}\.deployments\.blue\.environmentVariables\.MODE: must be a string, got \['a'\]",
    ),
    "code_is_a_single_file": (
        lambda c, t: deployments(c)["blue"].update({"code": code_folder(t) + "/score.py"}),
        rf"{E}\.deployments\.blue\.code: '.*score\.py' is a file; code must be the folder holding the scoring script",
    ),
    "scoring_script_missing_on_azure": (
        lambda c, t: deployments(c)["blue"].update({"code": code_folder(t, "other.py")}),
        rf"{E}\.deployments\.blue\.scoringScript: 'score\.py' not found in .*onlinescoring",
    ),
    "custom_model_without_code": (  # a local model folder: its type is the file's (custom unless it says)
        lambda c, t: [deployments(c)["blue"].pop(k) for k in ("code", "scoringScript")]
        and deployments(c)["blue"].update({"model": code_folder(t)}),
        rf"{E}\.deployments\.blue\.code: required for a custom model",
    ),
    "model_version_not_an_integer": (
        lambda c, t: deployments(c)["blue"].update({"model": code_folder(t), "modelName": "fraud", "modelVersion": "v2"}),
        rf"{E}\.deployments\.blue\.modelVersion: a model version is a positive whole number, got 'v2'",
    ),
    "model_name_for_a_registered_model": (
        lambda c, t: deployments(c)["blue"].update({"modelName": "fraud", "modelVersion": "2"}),
        rf"{E}\.deployments\.blue\.modelName: modelName and modelVersion register a local model folder",
    ),
    "inline_model_unknown_key": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "g.yml", GREEN_YAML + "model: {path: ., stage: prod}\n")}),
        rf"{E}\.deployments\.green\.file \(.*g\.yml\) model: unknown keys \['stage'\] in the inline model",
    ),
    "aad_token_on_kubernetes": (
        lambda c, t: (kubernetes(c), endpoint(c).update({"authMode": "aad_token"})),
        rf"{E}\.authMode: aad_token is supported on managed endpoints only",
    ),
    "autoscaling_on_managed": (
        lambda c, t: deployments(c)["blue"].update({"scaleSettings": {"type": "target_utilization", "maxInstances": 3}}),
        rf"{E}\.deployments\.blue\.scaleSettings\.type: target_utilization autoscaling is for kubernetes deployments",
    ),
    "autoscaling_min_above_max": (
        lambda c, t: (kubernetes(c), deployments(c)["blue"].update(
            {"scaleSettings": {"type": "target_utilization", "minInstances": 4, "maxInstances": 3}})),
        rf"{E}\.deployments\.blue\.scaleSettings: minInstances \(4\) is above maxInstances \(3\)",
    ),
    "resources_on_managed": (
        lambda c, t: deployments(c)["blue"].update({"resources": {"requests": {"cpu": "1"}}}),
        rf"{E}\.deployments\.blue\.resources: container requests and limits are for kubernetes deployments",
    ),
    "resources_unknown_quantity": (
        lambda c, t: deployments(c)["green"].update({"file": write(t, "g.yml", GREEN_YAML + "resources: {limits: {disk: 1Gi}}\n")}),
        rf"{E}\.deployments\.green\.file \(.*g\.yml\) resources\.limits\.disk: unknown resource; allowed: cpu, memory, nvidia\.com/gpu",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_config_is_refused_before_anything_is_registered(case, canary_config, tmp_path):
    change, message = CASES[case]
    change(canary_config, tmp_path)
    mocks = CountingMocks()
    with pytest.raises(pulumi.RunError) as raised:
        render_program(PROGRAM, canary_config, mock=mocks)
    text = str(raised.value)
    assert text.startswith("invalid stack config:")
    assert re.search(message, text), f"expected /{message}/ in:\n{text}"
    assert mocks.registered == []


def test_every_problem_is_reported_at_once(canary_config):
    deployments(canary_config)["blue"]["instanceCount"] = 0
    endpoint(canary_config)["traffic"] = {"blue": 80, "green": 10}
    endpoint(canary_config)["name"] = "1fraud"
    with pytest.raises(pulumi.RunError) as raised:
        render_program(PROGRAM, canary_config, mock=CountingMocks())
    lines = str(raised.value).splitlines()[1:]
    assert [line.split(":")[1] for line in lines] == [
        "endpoint.name",
        "endpoint.deployments.blue.instanceCount",
        "endpoint.traffic",
    ], lines
