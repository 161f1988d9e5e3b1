"""Every stage file through the real __main__.py under Pulumi's mocks: what would be registered."""

from __future__ import annotations

import pytest

from mlcanary.components.render import is_secret, reveal
from conftest import PROJECT_DIR, STAGE_FILES, render_config, stage_config

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
    "stage-5-canary-green": ({"blue": 2, "green": 2}, {"blue": 90, "green": 10}, {}),
    "stage-6-all-to-green": ({"blue": 2, "green": 2}, {"blue": 0, "green": 100}, {}),
    "stage-7-delete-blue": ({"green": 2}, {"green": 100}, {}),
}


def test_there_are_seven_stage_files_in_order():
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
    # Set only after the endpoint and every deployment exist: the ordering problem.
    deployment_urns = [d.urn for d in render.of_type(DEPLOYMENT)]
    assert set(traffic.dependencies) == {endpoint.urn, *deployment_urns}


def test_outputs_and_secret_keys(stage):
    name, render = stage
    capacities, live, mirror = EXPECTED[name]
    outputs = render.outputs
    assert outputs["scoringUri"] == "https://fraud-scorer.westus2.inference.ml.azure.com/score"
    assert outputs["swaggerUri"] == "https://fraud-scorer.westus2.inference.ml.azure.com/swagger.json"
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
    before = render_config(stage_config(STAGE_FILES[5]))
    after = render_config(stage_config(STAGE_FILES[6]))
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


def test_local_code_and_model_are_uploaded_and_registered(canary_config, tmp_path):
    """As `az ml` does: blobs under LocalUpload/<digest>/ in the default datastore, then a version."""
    code = tmp_path / "onlinescoring"
    (code / "lib").mkdir(parents=True)
    (code / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    (code / "lib" / "features.py").write_text("SCALE = 2\n")
    model = tmp_path / "model.pkl"
    model.write_bytes(b"weights-v1")
    blue = canary_config["mlcanary:endpoint"]["deployments"]["blue"]
    blue.update(code=str(code), model=str(model))

    render = render_config(canary_config)
    assert "azure-native:machinelearningservices:getDatastore" in render.invokes
    blobs = {r.inputs["blobName"]: r for r in render.of_type("azure-native:storage:Blob")}
    code_version = render.named("fraud-scorer-blue-code")
    digest = code_version.inputs["version"]
    assert sorted(blobs) == [f"LocalUpload/{digest}/onlinescoring/lib/features.py",
                             f"LocalUpload/{digest}/onlinescoring/score.py",
                             f"LocalUpload/{render.named('fraud-scorer-blue-model').inputs['version']}/model.pkl"]
    for blob in blobs.values():
        assert blob.inputs["accountName"] == "mlprodstorage"
        assert blob.inputs["containerName"] == "azureml-blobstore-0000"
        assert blob.inputs["resourceGroupName"] == "ml-prod-rg"
    assert code_version.inputs["name"] == "fraud-scorer-blue-code"
    assert code_version.inputs["properties"]["codeUri"] == (
        f"https://mlprodstorage.blob.core.windows.net/azureml-blobstore-0000/LocalUpload/{digest}/onlinescoring"
    )
    assert {blobs[n].urn for n in blobs if "onlinescoring" in n} <= set(code_version.dependencies)
    model_version = render.named("fraud-scorer-blue-model")
    assert model_version.inputs["properties"]["modelType"] == "custom_model"
    deployment = render.named("fraud-scorer-blue").inputs["properties"]
    assert deployment["codeConfiguration"]["codeId"] == code_version.id
    assert deployment["model"] == model_version.id

    (code / "score.py").write_text("def init(): pass\ndef run(raw): return [raw]\n")
    changed = render_config(canary_config).named("fraud-scorer-blue-code").inputs["version"]
    assert changed != digest  # new content, new version; the old one stays for rollback


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
    blobs = sorted(r.inputs["blobName"] for r in render.of_type("azure-native:storage:Blob"))
    assert [b.split("/", 2)[2] for b in blobs] == ["model/weights.bin", "onlinescoring/score.py"]
    green = render.named("fraud-scorer-green").inputs
    assert green["sku"]["capacity"] == 1.0  # the file gives no count: the default
    assert green["properties"]["codeConfiguration"]["scoringScript"] == "score.py"
