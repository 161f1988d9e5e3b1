"""Every stage file through the real __main__.py under Pulumi's mocks: what would be registered."""

from __future__ import annotations

import pytest

from mlcanary.components.render import MOCK_WORKSPACE_LOCATION, is_secret, render_program, reveal
from conftest import PROGRAM, PROJECT_DIR, STAGE_FILES, render_config, stage_config

COMPONENT = "mlcanary:endpoint:OnlineEndpoint"
ENDPOINT = "azure-native:machinelearningservices:OnlineEndpoint"
DEPLOYMENT = "azure-native:machinelearningservices:OnlineDeployment"
TRAFFIC = "pulumi-python:dynamic/azureml:EndpointTraffic"
WORKSPACE = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/ml-prod-rg"
    "/providers/Microsoft.MachineLearningServices/workspaces/ml-prod-ws"
)

# stage file prefix -> (instance count per deployment, live traffic, mirror traffic): the design's table.
EXPECTED = {
    "stage-1-create-blue": ({"blue": 1}, {"blue": 100}, {}),
    "stage-2-scale-blue": ({"blue": 2}, {"blue": 100}, {}),
    "stage-3-green-dark": ({"blue": 2, "green": 1}, {"blue": 100, "green": 0}, {}),
    "stage-4-mirror-green": ({"blue": 2, "green": 1}, {"blue": 100, "green": 0}, {"green": 10}),
    "stage-4s-stop-mirror": ({"blue": 2, "green": 1}, {"blue": 100, "green": 0}, {}),  # Azure's order: mirror off first
    "stage-5-canary-green": ({"blue": 2, "green": 2}, {"blue": 90, "green": 10}, {}),
    "stage-6-all-to-green": ({"blue": 2, "green": 2}, {"blue": 0, "green": 100}, {}),
    "stage-7-delete-blue": ({"green": 2}, {"green": 100}, {}),
}


def test_the_stage_files_are_in_order():
    assert [p.stem for p in STAGE_FILES] == list(EXPECTED)


@pytest.fixture(params=STAGE_FILES, ids=lambda p: p.stem)
def stage(request):
    return request.param.stem, render_config(stage_config(request.param))


def test_resource_tree(stage):
    name, render = stage
    capacities, _, _ = EXPECTED[name]
    (component,) = render.of_type(COMPONENT)
    assert component.name == "fraud-scorer"
    assert component.parent.endswith("::pulumi:pulumi:Stack::mlcanary-dev")
    children = [r for r in render.resources if r is not component]
    assert all(r.parent == component.urn for r in children)
    assert sorted(r.type for r in children) == sorted([ENDPOINT, TRAFFIC] + [DEPLOYMENT] * len(capacities))


def test_endpoint_carries_no_traffic_of_its_own(stage):
    _, render = stage
    (endpoint,) = render.of_type(ENDPOINT)
    assert endpoint.inputs["endpointName"] == "fraud-scorer"
    assert endpoint.inputs["resourceGroupName"] == "ml-prod-rg"
    assert endpoint.inputs["workspaceName"] == "ml-prod-ws"
    assert endpoint.inputs["properties"]["authMode"] == "Key"
    assert "traffic" not in endpoint.inputs["properties"]
    assert "mirrorTraffic" not in endpoint.inputs["properties"]
    assert sorted(endpoint.ignore_changes) == ["properties.mirrorTraffic", "properties.traffic"]
    assert endpoint.delete_before_replace


def test_endpoint_and_deployments_are_placed_in_the_workspace_region(stage):
    """As `az ml` does: the workspace's region, not `azure-native:location` (westus2 in the stage files)."""
    _, render = stage
    assert "azure-native:machinelearningservices:getWorkspace" in render.invokes
    for resource in render.of_type(ENDPOINT) + render.of_type(DEPLOYMENT):
        assert resource.inputs["location"] == MOCK_WORKSPACE_LOCATION, resource.name


def test_deployments(stage):
    name, render = stage
    capacities, _, _ = EXPECTED[name]
    deployments = {d.inputs["deploymentName"]: d for d in render.of_type(DEPLOYMENT)}
    assert {k: d.inputs["sku"] for k, d in deployments.items()} == {
        k: {"name": "Default", "capacity": float(n)} for k, n in capacities.items()
    }
    (endpoint,) = render.of_type(ENDPOINT)
    for deployment_name, deployment in deployments.items():
        assert deployment.name == f"fraud-scorer-{deployment_name}"
        assert deployment.inputs["endpointName"] == "fraud-scorer"
        assert endpoint.urn in deployment.dependencies
        assert deployment.delete_before_replace
        properties = deployment.inputs["properties"]
        assert properties["endpointComputeType"] == "Managed"
        assert properties["instanceType"] == "Standard_DS3_v2"
        assert properties["requestSettings"]["requestTimeout"] == "PT5S"
        version = "1" if deployment_name == "blue" else "2"
        assert properties["model"] == f"{WORKSPACE}/models/fraud-model/versions/{version}"
        assert properties["codeConfiguration"] == {
            "codeId": f"{WORKSPACE}/codes/fraud-score-code/versions/{version}",
            "scoringScript": "score.py",
        }
        assert properties["environmentId"] == f"{WORKSPACE}/environments/fraud-score-env/versions/3"


@pytest.mark.parametrize("path", [p for p in STAGE_FILES if "green" in EXPECTED[p.stem][0]], ids=lambda p: p.stem)
def test_green_comes_from_its_cli_deployment_yaml(path):
    properties = render_config(stage_config(path)).named("fraud-scorer-green").inputs["properties"]
    assert properties["livenessProbe"]["initialDelay"] == "PT30S"
    assert properties["livenessProbe"]["period"] == "PT10S"
    assert properties["readinessProbe"]["initialDelay"] == "PT10S"
    assert properties["requestSettings"]["requestTimeout"] == "PT5S"
    assert properties["requestSettings"]["maxConcurrentRequestsPerInstance"] == 2.0
    assert properties["environmentVariables"] == {"MODEL_VARIANT": "green"}


def test_traffic_resource(stage):
    name, render = stage
    capacities, live, mirror = EXPECTED[name]
    (traffic,) = render.of_type(TRAFFIC)
    (endpoint,) = render.of_type(ENDPOINT)
    assert traffic.name == "fraud-scorer-traffic"
    assert traffic.inputs["endpoint_id"] == endpoint.id
    assert traffic.inputs["endpoint_name"] == "fraud-scorer"
    assert traffic.inputs["traffic"] == {k: float(v) for k, v in live.items()}
    assert traffic.inputs["mirror_traffic"] == {k: float(v) for k, v in mirror.items()}
    assert sorted(traffic.inputs["deployments"]) == sorted(capacities)
    # Any write of the endpoint resource (its systemData stamp changes) re-applies traffic.
    assert traffic.inputs["endpoint_modified_at"].startswith("2026-01-01T00:00:00Z#")
    assert traffic.inputs["cloud"] == "AzureCloud"
    # Set only after the endpoint and every deployment exist: the ordering problem.
    deployment_urns = [d.urn for d in render.of_type(DEPLOYMENT)]
    assert set(traffic.dependencies) == {endpoint.urn, *deployment_urns}


def test_outputs_and_secret_keys(stage):
    name, render = stage
    capacities, live, mirror = EXPECTED[name]
    outputs = render.outputs
    assert outputs["scoringUri"] == "https://fraud-scorer.swedencentral.inference.ml.azure.com/score"
    assert outputs["swaggerUri"] == "https://fraud-scorer.swedencentral.inference.ml.azure.com/swagger.json"
    assert sorted(outputs["deployments"]) == sorted(capacities)
    assert outputs["traffic"] == {k: float(v) for k, v in live.items()}
    assert outputs["mirrorTraffic"] == {k: float(v) for k, v in mirror.items()}
    assert is_secret(outputs["primaryKey"]) and is_secret(outputs["secondaryKey"])
    assert reveal(outputs["primaryKey"]) == "mock-primary-key"
    assert not is_secret(outputs["scoringUri"])


def test_sample_stack_file_is_stage_one():
    stack = render_config(stage_config(PROJECT_DIR / "stacks" / "Pulumi.prod.yaml"))
    first = render_config(stage_config(STAGE_FILES[0]))
    assert [(r.type, r.name, r.inputs) for r in stack.resources] == [
        (r.type, r.name, r.inputs) for r in first.resources
    ]


def test_dropping_a_deployment_updates_traffic_without_depending_on_it():
    """Stage 6 -> 7: blue leaves the program and the traffic map, and traffic no longer depends on it.

    Pulumi deletes resources that left the program only after all creates and updates of the run,
    so the traffic update (blue out of the map, i.e. 0 %) reaches Azure before blue's deletion;
    test_traffic_provider proves the Azure side of that order.
    """
    before = render_config(stage_config(STAGE_FILES[-2]))
    after = render_config(stage_config(STAGE_FILES[-1]))
    blue = before.named("fraud-scorer-blue")
    assert blue.urn in before.named("fraud-scorer-traffic").dependencies
    assert "fraud-scorer-blue" not in [r.name for r in after.resources]
    traffic = after.named("fraud-scorer-traffic")
    assert blue.urn not in traffic.dependencies
    assert traffic.urn == before.named("fraud-scorer-traffic").urn  # updated in place, not replaced
    assert traffic.inputs["traffic"] == {"green": 100.0}


def test_token_auth_endpoint_has_no_keys(canary_config):
    canary_config["mlcanary:endpoint"]["authMode"] = "aml_token"
    render = render_config(canary_config)
    (endpoint,) = render.of_type(ENDPOINT)
    assert endpoint.inputs["properties"]["authMode"] == "AMLToken"
    assert "azure-native:machinelearningservices:listOnlineEndpointKeys" not in render.invokes
    assert reveal(render.outputs.get("primaryKey")) is None


def test_inline_environment_becomes_an_environment_version(canary_config, tmp_path):
    conda = tmp_path / "conda.yml"
    conda.write_text("dependencies: [python=3.11]\n")
    blue = canary_config["mlcanary:endpoint"]["deployments"]["blue"]
    blue["environment"] = {"image": "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference", "condaFile": str(conda)}
    render = render_config(canary_config)
    (environment,) = render.of_type("azure-native:machinelearningservices:EnvironmentVersion")
    assert environment.inputs["name"] == "fraud-scorer-blue"
    assert environment.inputs["properties"]["condaFile"] == "dependencies: [python=3.11]\n"
    assert render.named("fraud-scorer-blue").inputs["properties"]["environmentId"] == environment.id


ASSET = "pulumi-python:dynamic/azureml:WorkspaceAsset"


def local_blue(canary_config, tmp_path):
    """Blue with a local code folder (with an .amlignore) and a local model file."""
    code = tmp_path / "onlinescoring"
    (code / "lib").mkdir(parents=True)
    (code / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    (code / "lib" / "features.py").write_text("SCALE = 2\n")
    (code / ".amlignore").write_text(".env\n__pycache__\n*.pyc\n")
    model = tmp_path / "model.pkl"
    model.write_bytes(b"weights-v1")
    canary_config["mlcanary:endpoint"]["deployments"]["blue"].update(code=str(code), model=str(model))
    return code, model


def test_local_code_and_model_are_registered_by_azure_ai_ml(canary_config, tmp_path):
    """As `az ml` does: anonymous versions (name = azure-ai-ml's content hash, version 1), no storage keys."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_object_hash

    code, model = local_blue(canary_config, tmp_path)
    render = render_config(canary_config)
    assert render.of_type("azure-native:storage:Blob") == []  # no shared-key uploads
    assert "azure-native:machinelearningservices:getDatastore" not in render.invokes
    code_asset, model_asset = render.named("fraud-scorer-blue-code"), render.named("fraud-scorer-blue-model")
    assert code_asset.type == model_asset.type == ASSET
    assert code_asset.inputs["content_hash"] == get_object_hash(code, get_ignore_file(code))
    assert model_asset.inputs["content_hash"] == get_object_hash(model)
    assert model_asset.inputs["model_type"] == "custom_model" and model_asset.inputs["workspace_id"] == WORKSPACE
    assert code_asset.retain_on_delete and model_asset.retain_on_delete
    deployment = render.named("fraud-scorer-blue")
    assert deployment.inputs["properties"]["codeConfiguration"]["codeId"] == (
        f"{WORKSPACE}/codes/{code_asset.inputs['content_hash']}/versions/1")
    assert deployment.inputs["properties"]["model"] == f"{WORKSPACE}/models/{model_asset.inputs['content_hash']}/versions/1"
    assert {code_asset.urn, model_asset.urn} <= set(deployment.dependencies)


def test_ignored_files_change_no_version(canary_config, tmp_path):
    code, _ = local_blue(canary_config, tmp_path)
    before = render_config(canary_config).named("fraud-scorer-blue-code").inputs["content_hash"]
    (code / ".env").write_text("SECRET=1\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "score.cpython-311.pyc").write_bytes(b"\0stray")
    (code / "stray.pyc").write_bytes(b"\0stray")
    assert render_config(canary_config).named("fraud-scorer-blue-code").inputs["content_hash"] == before


def test_a_rollback_finds_the_previous_version_kept(canary_config, tmp_path):
    """Stage N registers v1, stage N+1 changes the code (v2), stage N+2 rolls back: v1 again, never deleted."""
    code, _ = local_blue(canary_config, tmp_path)
    first = render_config(canary_config)
    (code / "score.py").write_text("def init(): pass\ndef run(raw): return [raw]\n")
    second = render_config(canary_config)
    (code / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    rolled_back = render_config(canary_config)
    ids = [r.named("fraud-scorer-blue").inputs["properties"]["codeConfiguration"]["codeId"]
           for r in (first, second, rolled_back)]
    assert ids[0] != ids[1] and ids[2] == ids[0]
    assert all(r.named("fraud-scorer-blue-code").retain_on_delete for r in (first, second, rolled_back))


def test_environment_versions_are_kept_on_change(canary_config, tmp_path):
    blue = canary_config["mlcanary:endpoint"]["deployments"]["blue"]
    blue["environment"] = {"image": "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference"}
    (environment,) = render_config(canary_config).of_type("azure-native:machinelearningservices:EnvironmentVersion")
    assert environment.retain_on_delete


def test_paths_in_a_deployment_yaml_resolve_from_its_folder(canary_config, tmp_path):
    (tmp_path / "model-2" / "onlinescoring").mkdir(parents=True)
    (tmp_path / "model-2" / "onlinescoring" / "score.py").write_text("def init(): pass\n")
    (tmp_path / "model-2" / "model").mkdir()
    (tmp_path / "model-2" / "model" / "weights.bin").write_bytes(b"w2")
    (tmp_path / "endpoints").mkdir()
    (tmp_path / "endpoints" / "green.yml").write_text(
        "name: green\n"
        "model:\n  path: ../model-2/model\n"
        "code_configuration:\n  code: ../model-2/onlinescoring\n  scoring_script: score.py\n"
        "environment: azureml:fraud-score-env:3\n"
        "instance_type: Standard_DS3_v2\n"
    )
    canary_config["mlcanary:endpoint"]["deployments"]["green"] = {"file": str(tmp_path / "endpoints" / "green.yml")}
    render = render_config(canary_config)
    assert render.named("fraud-scorer-green-model").inputs["path"] == str(tmp_path / "model-2" / "model")
    assert render.named("fraud-scorer-green-code").inputs["path"] == str(tmp_path / "model-2" / "onlinescoring")
    green = render.named("fraud-scorer-green").inputs
    assert green["sku"]["capacity"] == 1.0  # the file gives no count: the default
    assert green["properties"]["codeConfiguration"]["scoringScript"] == "score.py"


def test_an_endpoint_write_changes_the_traffic_input(canary_config):
    before = render_config(canary_config).named("fraud-scorer-traffic").inputs["endpoint_modified_at"]
    canary_config["mlcanary:endpoint"]["description"] = "fraud scoring, now described"
    after = render_config(canary_config).named("fraud-scorer-traffic").inputs["endpoint_modified_at"]
    assert after != before


def test_sovereign_cloud_reaches_the_traffic_resource(canary_config):
    canary_config["azure-native:environment"] = "usgovernment"
    assert render_config(canary_config).named("fraud-scorer-traffic").inputs["cloud"] == "AzureUSGovernment"


def test_mlflow_no_code_deployment_from_a_cli_file(canary_config, tmp_path):
    """azureml-examples cli/endpoints/online/ncd: an MLflow model, no code, no environment."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {python_function: {loader_module: mlflow.sklearn}}\n")
    (tmp_path / "green.yml").write_text(
        "name: green\nendpoint_name: <ENDPOINT_NAME>\n"
        "model:\n  name: sklearn-diabetes\n  version: 1\n  path: model\n  type: mlflow_model\n  description: ncd\n"
        "instance_type: Standard_DS3_v2\n"
    )
    canary_config["mlcanary:endpoint"]["deployments"]["green"] = {"file": str(tmp_path / "green.yml")}
    render = render_config(canary_config)
    model = render.named("fraud-scorer-green-model").inputs
    assert (model["model_type"], model["name"], model["version"], model["description"]) == (
        "mlflow_model", "sklearn-diabetes", "1", "ncd")
    green = render.named("fraud-scorer-green", DEPLOYMENT).inputs
    assert green["properties"]["model"] == f"{WORKSPACE}/models/sklearn-diabetes/versions/1"
    assert "codeConfiguration" not in green["properties"] and "environmentId" not in green["properties"]


def test_the_stack_endpoint_wins_over_a_files_endpoint_name(canary_config, tmp_path):
    """As `az ml online-deployment create -f FILE --endpoint-name X`: the file's endpoint_name yields."""
    text = (PROJECT_DIR / "stacks" / "deployments" / "green.yml").read_text()
    (tmp_path / "green.yml").write_text(text.replace("endpoint_name: fraud-scorer", "endpoint_name: other-endpoint"))
    canary_config["mlcanary:endpoint"]["deployments"]["green"]["file"] = str(tmp_path / "green.yml")
    assert render_config(canary_config).named("fraud-scorer-green", DEPLOYMENT).inputs["endpointName"] == "fraud-scorer"


def test_an_inline_environment_that_names_itself_keeps_its_name_and_version(canary_config):
    blue = canary_config["mlcanary:endpoint"]["deployments"]["blue"]
    blue["environment"] = {"image": "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference",
                           "name": "fraud-score-env", "version": "4", "description": "pinned"}
    (environment,) = render_config(canary_config).of_type("azure-native:machinelearningservices:EnvironmentVersion")
    assert (environment.inputs["name"], environment.inputs["version"]) == ("fraud-score-env", "4")
    assert environment.inputs["properties"]["description"] == "pinned"


LOCAL_STAGE_FILES = sorted((PROJECT_DIR / "stacks" / "local").glob("stage-*.yaml"))


def recorded(render) -> list:
    """All a render records (the policies' input). Sorted: sibling resources (blue, green) register from the
    SDK's threads in either order, and the SDK gathers a resource's dependencies in a set."""
    resources = sorted(({**vars(r), "dependencies": sorted(r.dependencies)} for r in render.resources),
                       key=lambda r: (r["urn"], r["type"]))
    return [resources, render.outputs, sorted(render.invokes)]


@pytest.mark.parametrize("path", [*STAGE_FILES, *LOCAL_STAGE_FILES], ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_render_is_the_same_without_the_sdks_aliases(path):
    """render_program drops the resources' aliases before the SDK computes them (azure-native declares one
    per past API version): nothing it records, so nothing a policy sees, may change."""
    with_aliases = render_program(PROGRAM, stage_config(path), aliases=True)
    assert recorded(render_config(stage_config(path))) == recorded(with_aliases)


def test_a_render_without_aliases_keeps_the_rest_of_a_resources_options(canary_config, tmp_path):
    """What the alias-dropping transformation hands back still carries parent, dependencies, ignore_changes,
    delete_before_replace and retain_on_delete (an inline environment and local folders: every resource kind)."""
    code, _ = local_blue(canary_config, tmp_path)
    conda = tmp_path / "conda.yml"
    conda.write_text("dependencies: [python=3.11]\n")
    canary_config["mlcanary:endpoint"]["deployments"]["green"]["environment"] = {
        "image": "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference", "condaFile": str(conda)}
    render = render_config(canary_config)
    assert recorded(render) == recorded(render_program(PROGRAM, canary_config, aliases=True))
    endpoint = render.named("fraud-scorer", ENDPOINT)
    assert endpoint.ignore_changes == ["properties.traffic", "properties.mirrorTraffic"]
    assert endpoint.delete_before_replace and endpoint.parent.endswith(f"{COMPONENT}::fraud-scorer")
    (environment,) = render.of_type("azure-native:machinelearningservices:EnvironmentVersion")
    assert environment.retain_on_delete and render.named("fraud-scorer-blue-code").retain_on_delete
    assert endpoint.urn in render.named("fraud-scorer-green", DEPLOYMENT).dependencies
