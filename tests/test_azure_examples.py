"""Every online deployment file of Azure/azureml-examples that azure-ai-ml can load (copied into
tests/azure_corpus/azureml-examples, source in its SOURCE.md) is either sent as azure-ai-ml sends it
- the same REST body, up to the exact (path, ours, theirs) differences listed here with their reason -
or refused with a true reason. Local files the examples name are stood in by small stubs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from azure.ai.ml import load_online_deployment

from test_azure_conformance import (
    ASSET, DEPLOYMENT, ENVIRONMENT_VERSION, MOCK_WORKSPACE_LOCATION, NATIVE_EGRESS, OperationOrchestrator,
    OperationScope, Code, Environment, Model, MOCK_SUBSCRIPTION, _replace, differences, local_marker, normalized,
    register_collection_data_assets, reveal, stack_config, upload_dependencies)
from conftest import render_config

EXAMPLES = Path(__file__).parent / "azure_corpus" / "azureml-examples"
# The data-collector samples are spelled .YAML: the glob takes every case.
FILES = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.suffix.lower() in (".yml", ".yaml"))
# The foundation-model files leave the model to `az ml online-deployment create -f deploy.yml --set model=...`;
# in a stage it is the `model:` key next to `file:`.
REGISTRY_MODEL = "azureml://registries/azureml/models/bert-base-uncased/versions/3"

PINNING = r"must pin a version: azureml:<name>:<version> \(mlcanary's pinning policy, not an Azure rule"
REFUSED = {
    "cli/endpoints/online/deploy-with-packages/custom-model/deployment.yml":
        rf"environment: 'azureml:sklearn-regression-online-pkg@latest' {PINNING}",
    "cli/endpoints/online/deploy-with-packages/custom-model/model-deployment.yml":
        rf"model: 'azureml:sklearn-regression@latest' {PINNING}",
    "cli/endpoints/online/deploy-with-packages/mlflow-model/deployment.yml":
        rf"environment: 'azureml:heart-classifier-mlflow-pkg@latest' {PINNING}",
    "cli/endpoints/online/deploy-with-packages/mlflow-model/model-deployment.yml":
        rf"model: 'azureml:heart-classifier-mlflow@latest' {PINNING}",
    "cli/endpoints/online/managed/vnet/mlflow/blue-deployment-vnet.yml": r"environment: unknown keys \['inference_config'\]",
    "cli/endpoints/online/managed/vnet/sample/blue-deployment-vnet.yml": r"environment: unknown keys \['inference_config'\]",
    "cli/generative-ai/promptflow/deploy-flow/deployment.yaml": r"environment: unknown keys \['inference_config'\]",
    "cli/generative-ai/promptflow/deploy-flow/deployment-with-docker-context-environment.yaml":
        r"model: unknown keys \['properties'\] in the inline model",
    "cli/monitoring/azureml-e2e-model-monitoring/endpoints/deployment.yaml":
        rf"model: 'azureml:credit-default-model@latest' {PINNING}",
    **{f"cli/endpoints/online/data-collector/workspace-blob-storage/workspace-blob-storage-{name}.YAML":
       rf"model: 'azureml:iris_mlflow_model@latest' {PINNING}" for name in ("custom1", "custom2", "payload1", "payload2")},
}
# Files refused only for an unpinned model, as a stage uses them: `file:` with `model:` pinned next to it (what
# `az ml online-deployment create -f FILE --set model=...` sends). Their data collectors are checked this way.
PINNED = {
    "cli/monitoring/azureml-e2e-model-monitoring/endpoints/deployment.yaml": "azureml:credit-default-model:3",
    **{f"cli/endpoints/online/data-collector/workspace-blob-storage/workspace-blob-storage-{name}.YAML":
       "azureml:iris_mlflow_model:1" for name in ("custom1", "custom2", "payload1", "payload2")},
}

# (path) -> (ours, theirs, why) for every example; (file, path) -> ... for one.
ALLOWED_EVERYWHERE = {
    "properties.egressPublicNetworkAccess": ("Enabled", None, NATIVE_EGRESS),
    "properties.requestSettings.maxConcurrentRequestsPerInstance": (1, None, "azure-native's OnlineRequestSettingsArgs "
        "fills in 1, the service's default, when the file gives other request settings"),
    "properties.requestSettings.maxQueueWait": (0.5, None, "azure-native's OnlineRequestSettingsArgs fills in PT0.5S, "
        "the service's default, when the file gives other request settings"),
    **{f"properties.{probe}.{key}": (value, None, "azure-native's ProbeSettingsArgs fills in its defaults "
       "(failureThreshold 30, period PT10S, successThreshold 1, timeout PT2S), the service's defaults, for keys the "
       "file's probe leaves out") for probe in ("livenessProbe", "readinessProbe")
       for key, value in (("failureThreshold", 30), ("period", 10.0), ("successThreshold", 1), ("timeout", 2.0))},
}
COLLECTOR_DEFAULTS = ("azure-native's CollectionArgs and DataCollectorArgs fill in samplingRate 1 (every request) and "
                      "rollingRate Hour, their defaults from the REST spec, when the file gives none")
ALLOWED_EVERYWHERE |= {"properties.dataCollector.rollingRate": ("Hour", None, COLLECTOR_DEFAULTS),
                       **{f"properties.dataCollector.collections.{name}.samplingRate": (1, None, COLLECTOR_DEFAULTS)
                          for name in ("model_inputs", "model_outputs", "model_inputs_outputs", "request", "response")}}
ALLOWED = {
    ("cli/endpoints/online/kubernetes/kubernetes-blue-deployment.yml", "properties.instanceType"): (
        "defaultinstancetype", None, "no instance_type: Azure uses the cluster's default instance type, which "
        "mlcanary names; azure-native would send Standard_F4s_v2 (issue 14, finding 9)"),
    ("cli/foundation-models/system/inference/text-to-image/deploy-online.yaml",
     "properties.environmentVariables.WORKER_COUNT"): ("2", 2, "az ml sends the YAML number as a JSON number; the "
        "REST model and azure-native's input are maps of strings, so mlcanary sends \"2\" (what Azure stores)"),
    ("cli/endpoints/online/kubernetes/kubernetes-green-deployment.yml", "sku.capacity"): (
        1, None, "no instance_count: az ml leaves it to the service (1); mlcanary sends its default, 1"),
}


def materialize(path: Path) -> None:
    """Small stand-ins for the local model, code, conda file and build context a file names."""
    document = yaml.safe_load(path.read_text())
    base = path.parent

    def local(value: Any) -> bool:
        return isinstance(value, str) and not value.startswith(("azureml:", "/subscriptions/", "http", "docker"))

    def folder(relative: str) -> None:
        target = base / relative
        if target.suffix:  # a single model file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("stub\n")
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / "placeholder.txt").write_text("stub\n")

    model = document.get("model")
    if isinstance(model, dict) and local(model.get("path")):
        folder(model["path"])
    elif local(model):
        folder(model)
    code = document.get("code_configuration") or {}
    if local(code.get("code")):
        script = base / code["code"] / code.get("scoring_script", "score.py")
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data\n")
    environment = document.get("environment")
    if isinstance(environment, dict):
        if local(environment.get("conda_file")):
            conda = base / environment["conda_file"]
            conda.parent.mkdir(parents=True, exist_ok=True)
            conda.write_text("name: stub\ndependencies:\n  - python=3.10\n")
        build = environment.get("build") or {}
        if local(build.get("path")):
            (base / build["path"]).mkdir(parents=True, exist_ok=True)
            (base / build["path"] / "Dockerfile").write_text("FROM python:3.10-slim\n")


@pytest.fixture
def example(request, tmp_path) -> Path:
    path = tmp_path / request.param
    path.parent.mkdir(parents=True)
    shutil.copy(EXAMPLES / request.param, path)
    materialize(path)
    return path


def overrides(path: Path) -> dict:
    pinned = next((model for file, model in PINNED.items() if path.as_posix().endswith(file)), None)
    if pinned:
        return {"model": pinned}
    return {} if "model" in yaml.safe_load(path.read_text()) else {"model": REGISTRY_MODEL}


def theirs(path: Path) -> dict:
    """What `az ml online-deployment create -f path --endpoint-name fraud-scorer [--set model=...]` sends."""
    deployment = load_online_deployment(path, params_override=[{"endpoint_name": "fraud-scorer", **overrides(path)}])
    orchestrator = OperationOrchestrator(None, OperationScope(MOCK_SUBSCRIPTION, "ml-prod-rg", "ml-prod-ws"), None)
    resolve = orchestrator.get_asset_arm_id

    def get_asset_arm_id(asset, azureml_type, *args, **kwargs):
        if isinstance(asset, (Code, Model)):
            return local_marker(azureml_type, Path(asset.base_path, asset.path))
        if isinstance(asset, Environment):
            return "<inline environment>"
        return resolve(asset, azureml_type, *args, **kwargs)

    orchestrator.get_asset_arm_id = get_asset_arm_id
    register_collection_data_assets(deployment)
    upload_dependencies(deployment, orchestrator)
    return deployment._to_rest_object(location=MOCK_WORKSPACE_LOCATION).as_dict()


def render(path: Path, pinned: bool = True):
    kubernetes = "kubernetesOnlineDeployment" in path.read_text()
    extra = overrides(path) if pinned else {k: v for k, v in overrides(path).items() if v == REGISTRY_MODEL}
    return render_config(stack_config({"file": str(path), **extra},
                                      compute="azureml:k8s-compute" if kubernetes else None))


def ours(path: Path) -> dict:
    result = render(path)
    (deployment,) = result.of_type(DEPLOYMENT)
    markers = {r.id: local_marker(f"{r.inputs['kind']}s", r.inputs["path"]) for r in result.of_type(ASSET)}
    markers |= {r.id: "<inline environment>" for r in result.of_type(ENVIRONMENT_VERSION)}
    body = reveal({k: deployment.inputs[k] for k in ("location", "properties", "sku", "tags") if k in deployment.inputs})
    return _replace(body, markers)


def allowed(file: str, path: str, found: tuple) -> bool:
    entry = ALLOWED.get((file, path)) or ALLOWED_EVERYWHERE.get(path)
    return entry is not None and entry[:2] == found


@pytest.mark.parametrize("example", [f for f in FILES if f not in REFUSED], indirect=True, ids=str)
def test_an_example_is_sent_as_azure_ai_ml_sends_it(example, request):
    file = request.node.callspec.params["example"]
    found = differences(normalized(ours(example)), normalized(theirs(example)))
    assert {p: d for p, d in found.items() if not allowed(file, p, d)} == {}


@pytest.mark.parametrize("example", sorted(PINNED), indirect=True, ids=str)
def test_an_example_with_its_model_pinned_in_the_stage_is_sent_as_azure_ai_ml_sends_it(example, request):
    file = request.node.callspec.params["example"]
    found = differences(normalized(ours(example)), normalized(theirs(example)))
    assert {p: d for p, d in found.items() if not allowed(file, p, d)} == {}
    assert "dataCollector" in ours(example)["properties"]


@pytest.mark.parametrize("example", sorted(REFUSED), indirect=True, ids=str)
def test_an_example_we_cannot_send_is_refused_with_its_reason(example, request):
    file = request.node.callspec.params["example"]
    load_online_deployment(example)  # azure-ai-ml loads it: the refusal is ours, and says why
    with pytest.raises(pulumi.RunError) as raised:
        render(example, pinned=False)
    assert re.search(REFUSED[file], str(raised.value)), str(raised.value)


def test_the_corpus_holds_every_loadable_example_and_the_lists_name_only_its_files():
    assert len(FILES) == 69
    assert set(REFUSED) <= set(FILES) and {f for f, _ in ALLOWED} <= set(FILES) and set(PINNED) <= set(REFUSED)
