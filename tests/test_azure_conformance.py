"""Conformance with Azure's own client: what `pulumi up` sends is what `az ml ... create -f` sends.

For every CLI v2 file of the corpus (tests/azure_corpus, plus the project's own deployment file),
azure-ai-ml - the library behind `az ml` - loads it, resolves its assets the way its operations do
(`upload_dependencies` with an OperationOrchestrator for this workspace) and builds the REST body
(`_to_rest_object(location=...)`). The same file goes through our program under mocks. The bodies
must match; every remaining difference is in ALLOWED_DIFFERENCES as a (file, path) -> (ours, theirs,
reason) entry, so a change of either value is a failure. Files we do not
support are refused naming the key. Every body we send also passes Azure's REST models.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import isodate
import pulumi
import pytest
import yaml
from azure.ai.ml import load_online_deployment, load_online_endpoint
from azure.ai.ml._restclient.arm_ml_service import models as rest
from azure.ai.ml._scope_dependent_operations import OperationScope
from azure.ai.ml._utils._endpoint_utils import upload_dependencies
from azure.ai.ml.constants._common import AzureMLResourceType
from azure.ai.ml.operations._online_deployment_operations import OnlineDeploymentOperations
from azure.ai.ml.entities import Environment, Model
from azure.ai.ml.entities._assets import Code
from azure.ai.ml.operations._operation_orchestrator import OperationOrchestrator

from mlcanary.components.render import MOCK_SUBSCRIPTION, MOCK_WORKSPACE_LOCATION, reveal
from azure_rest import rest_problems
from conftest import PROJECT_DIR, render_config

CORPUS = Path(__file__).parent / "azure_corpus"
ACCEPTED = sorted((CORPUS / "accepted").glob("*.yml")) + [PROJECT_DIR / "stacks" / "deployments" / "green.yml"]
ENDPOINTS = sorted((CORPUS / "endpoints").glob("*.yml"))
WORKSPACE = (f"/subscriptions/{MOCK_SUBSCRIPTION}/resourceGroups/ml-prod-rg"
             "/providers/Microsoft.MachineLearningServices/workspaces/ml-prod-ws")
DEPLOYMENT = "azure-native:machinelearningservices:OnlineDeployment"
ENDPOINT = "azure-native:machinelearningservices:OnlineEndpoint"
ASSET = "pulumi-python:dynamic/azureml:WorkspaceAsset"
ENVIRONMENT_VERSION = "azure-native:machinelearningservices:EnvironmentVersion"

# (file, body path) -> (ours, theirs, why they differ): the exact values, normalized as `normalized`
# makes them (durations in seconds). A difference with any other values is a real one.
NATIVE_EGRESS = "azure-native's ManagedOnlineDeploymentArgs fills in its default \"Enabled\", the service's own " \
                "default when az ml sends nothing"
COLLECTOR_DEFAULTS = ("azure-native's CollectionArgs and DataCollectorArgs fill in samplingRate 1 (every request) and "
                      "rollingRate Hour, their defaults from the REST spec, when az ml sends none")
ALLOWED_DIFFERENCES = {
    **{(name, "properties.egressPublicNetworkAccess"): ("Enabled", None, NATIVE_EGRESS) for name in (
        "kubernetes-minimal.yml", "kubernetes-resources-autoscale.yml", "managed-default-scale.yml",
        "managed-environment-variables.yml", "managed-local-code-and-model.yml", "managed-mlflow-no-code.yml",
        "managed-named-local-model.yml", "managed-registered-assets.yml", "managed-registry-and-arm-ids.yml",
        "green.yml", "kubernetes-no-instance-type.yml", "managed-named-local-model-next-version.yml",
        "data-collector.yml", "data-collector-payload.yml", "data-collector-custom-storage.yml",
        "kubernetes-data-collector.yml")},
    ("kubernetes-no-instance-type.yml", "properties.instanceType"): ("defaultinstancetype", None, "az ml sends no "
        "instance type and Azure runs the deployment on the cluster's default instance type, `defaultinstancetype`; "
        "azure-native would fill in Standard_F4s_v2 (`_inputs.py`), a VM size no cluster has, so mlcanary names the "
        "default (issue 14, finding 9)"),
    ("managed-probes-and-requests.yml", "properties.egressPublicNetworkAccess"): ("Disabled", "disabled",
        "azure-ai-ml passes the file's spelling through; the REST spec's EgressPublicNetworkAccessType (and "
        "azure-native's enum) spell it \"Disabled\", and azure-ai-ml's own REST enum is case-insensitive"),
    ("data-collector.yml", "properties.dataCollector.collections.model_inputs.samplingRate"): (1, None,
        COLLECTOR_DEFAULTS),
    ("data-collector.yml", "properties.dataCollector.rollingRate"): ("Hour", None, COLLECTOR_DEFAULTS),
    ("managed-environment-variables.yml", "sku.capacity"): (1, None, "the file gives no instance_count: az ml leaves "
        "it to the service (which makes it 1); mlcanary sends its default, 1, so the stack config shows the count"),
    ("kubernetes-resources-autoscale.yml", "properties.requestSettings.maxConcurrentRequestsPerInstance"): (1, None,
        "azure-native's OnlineRequestSettingsArgs fills in 1, the service's default"),
    ("kubernetes-resources-autoscale.yml", "properties.requestSettings.maxQueueWait"): (0.5, None,
        "azure-native's OnlineRequestSettingsArgs fills in PT0.5S, the service's default"),
    **{("green.yml", f"properties.{probe}.{key}"): (value, None, "azure-native's ProbeSettingsArgs fills in its "
       "defaults (failureThreshold 30, successThreshold 1, timeout PT2S), the service's defaults for keys the file "
       "leaves out") for probe in ("livenessProbe", "readinessProbe")
       for key, value in (("failureThreshold", 30), ("successThreshold", 1), ("timeout", 2.0))},
    ("green.yml", "properties.requestSettings.maxQueueWait"): (0.5, None,
        "azure-native's OnlineRequestSettingsArgs fills in PT0.5S, the service's default"),
    **{(name, "properties.scaleSettings"): ({"scaleType": "Default"}, None, "az ml sends no scale settings, and "
        "Azure then defaults a Kubernetes deployment to target-utilization autoscaling; mlcanary sends scaleType "
        "Default so instance_count is what runs (issue 8, finding 8)")
       for name in ("kubernetes-minimal.yml", "kubernetes-no-instance-type.yml", "kubernetes-data-collector.yml")},
    ("managed-environment-variables.yml", "properties.environmentVariables.WORKERS"): ("4", 4, "az ml sends the YAML "
        "number 4 as a JSON number; the REST model is a map of strings and azure-native's input is too, so mlcanary "
        "sends \"4\" (what Azure stores)"),
    ("managed-environment-variables.yml", "properties.environmentVariables.RATIO"): ("0.5", 0.5, "as WORKERS: 0.5 is "
        "sent as \"0.5\""),
}

# The endpoint body: azure-native's OnlineEndpointPropertiesArgs fills in publicNetworkAccess "Enabled",
# the service's own default when az ml sends nothing.
ALLOWED_ENDPOINT_DIFFERENCES = {"properties.publicNetworkAccess": ("Enabled", None)}

REFUSED = {
    "environment-build-context.yml": "environment: an inline environment needs an image",
    "code-single-file.yml": "code: '.*score.py' is a file; code must be the folder holding the scoring script",
    "model-label.yml": "model: 'azureml:fraud-model@latest' must pin a version",
}


def local_marker(kind: str, path: Any) -> str:
    return f"<local {kind} {Path(path).resolve()}>"


def azure_ai_ml_body(path: Path) -> dict[str, Any]:
    """The deployment body `az ml online-deployment create -f path` sends, assets resolved as it does."""
    deployment = load_online_deployment(path, params_override=[{"endpoint_name": "fraud-scorer"}])
    orchestrator = OperationOrchestrator(
        operation_container=None,
        operation_scope=OperationScope(MOCK_SUBSCRIPTION, "ml-prod-rg", "ml-prod-ws"),
        operation_config=None,
    )
    resolve_string = orchestrator.get_asset_arm_id

    def get_asset_arm_id(asset, azureml_type, *args, **kwargs):
        # Local and inline assets are uploaded and registered through the workspace at apply time.
        if isinstance(asset, (Code, Model)):
            return local_marker(azureml_type, Path(asset.base_path, asset.path))
        if isinstance(asset, Environment):
            return "<inline environment>"
        return resolve_string(asset, azureml_type, *args, **kwargs)

    orchestrator.get_asset_arm_id = get_asset_arm_id
    register_collection_data_assets(deployment)
    upload_dependencies(deployment, orchestrator)
    return deployment._to_rest_object(location=MOCK_WORKSPACE_LOCATION).as_dict()


def register_collection_data_assets(deployment) -> None:
    """What `az ml online-deployment create` runs before anything else when the file has a data collector
    (OnlineDeploymentOperations.begin_create_or_update): azure-ai-ml's own `_register_collection_data_assets`,
    with a workspace whose data operations register what they are given."""
    if not deployment.data_collector:
        return

    class DataOperations:
        def create_or_update(self, data):
            return data

    operations = SimpleNamespace(
        _subscription_id=MOCK_SUBSCRIPTION, _resource_group_name="ml-prod-rg", _workspace_name="ml-prod-ws",
        _all_operations=SimpleNamespace(_all_operations={AzureMLResourceType.DATA: DataOperations()}))
    OnlineDeploymentOperations._register_collection_data_assets(operations, deployment)


def stack_config(deployment: dict, compute: str | None = None, auth_mode: str = "key", **endpoint) -> dict:
    name = yaml.safe_load(Path(deployment["file"]).read_text()).get("name", "blue")
    return {
        "azure-native:location": "westus2",
        "mlcanary:target": "azure",
        "mlcanary:endpoint": {
            "name": "fraud-scorer", "resourceGroup": "ml-prod-rg", "workspace": "ml-prod-ws", "authMode": auth_mode,
            **({"compute": compute} if compute else {}), **endpoint,
            "deployments": {name: deployment}, "traffic": {name: 100},
        },
    }


def our_body(path: Path) -> dict[str, Any]:
    """The deployment body mlcanary's program registers for the same file."""
    kubernetes = "type: kubernetes" in path.read_text()
    render = render_config(stack_config({"file": str(path)}, compute="azureml:k8s-compute" if kubernetes else None))
    (deployment,) = render.of_type(DEPLOYMENT)
    markers = {r.id: local_marker(f"{r.inputs['kind']}s", r.inputs["path"]) for r in render.of_type(ASSET)}
    markers |= {r.id: "<inline environment>" for r in render.of_type(ENVIRONMENT_VERSION)}
    body = reveal({k: deployment.inputs[k] for k in ("location", "properties", "sku", "tags") if k in deployment.inputs})
    return _replace(body, markers)


def _replace(value: Any, markers: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _replace(v, markers) for k, v in value.items()}
    return markers.get(value, value) if isinstance(value, str) else value


def normalized(value: Any) -> Any:
    """Wire floats as ints; absent, None, empty maps and appInsightsEnabled=false mean the same to Azure."""
    if isinstance(value, dict):
        items = {k: normalized(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in (None, {}) and not (k == "appInsightsEnabled" and v is False)}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.startswith("PT"):  # PT300S and PT5M are the same duration
        return isodate.parse_duration(value).total_seconds()
    return value


def differences(ours: Any, theirs: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = {}
        for key in sorted(set(ours) | set(theirs)):
            found |= differences(ours.get(key), theirs.get(key), f"{path}.{key}".lstrip("."))
        return found
    return {} if ours == theirs else {path: (ours, theirs)}


def allowed(file: str, path: str, found: tuple[Any, Any]) -> bool:
    """Only the exact (ours, theirs) pair the allow-list names for this file and path."""
    entry = ALLOWED_DIFFERENCES.get((file, path))
    return entry is not None and entry[:2] == found


@pytest.mark.parametrize("path", ACCEPTED, ids=lambda p: p.name)
def test_deployment_body_matches_azure_ai_ml(path):
    ours, theirs = normalized(our_body(path)), normalized(azure_ai_ml_body(path))
    unexplained = {p: d for p, d in differences(ours, theirs).items() if not allowed(path.name, p, d)}
    assert unexplained == {}, f"ours vs azure-ai-ml's, not in ALLOWED_DIFFERENCES: {unexplained}"


@pytest.mark.parametrize("path", ACCEPTED, ids=lambda p: p.name)
def test_deployment_body_passes_azure_rest_models(path):
    body = our_body(path)
    assert rest_problems(rest.OnlineDeployment, normalized(body)) == []


def test_every_allowed_difference_is_still_needed():
    used = set()
    for path in ACCEPTED:
        found = differences(normalized(our_body(path)), normalized(azure_ai_ml_body(path)))
        used |= {(path.name, p) for p, d in found.items() if allowed(path.name, p, d)}
    assert set(ALLOWED_DIFFERENCES) == used


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_file_is_refused_naming_the_key(name):
    path = CORPUS / "refused" / name
    with pytest.raises(pulumi.RunError) as raised:
        render_config(stack_config({"file": str(path)}))
    assert re.search(REFUSED[name], str(raised.value)), str(raised.value)


def test_corpus_is_complete():
    assert sorted(p.name for p in (CORPUS / "refused").glob("*.yml")) == sorted(REFUSED)
    assert len(ACCEPTED) >= 10 and len(ENDPOINTS) >= 4


def endpoint_config(path: Path) -> dict:
    """The endpoint file's keys in mlcanary's stack config."""
    endpoint = load_online_endpoint(path)
    auth = {"key": "key", "aml_token": "aml_token", "aad_token": "aad_token"}[endpoint.auth_mode.lower()]
    kubernetes = bool(getattr(endpoint, "compute", None))
    deployment = {"file": str(CORPUS / "accepted" / ("kubernetes-minimal.yml" if kubernetes else "managed-registered-assets.yml"))}
    extra = {k: v for k, v in (("description", endpoint.description), ("tags", endpoint.tags or None)) if v}
    if endpoint.identity is not None:
        extra["identity"] = {"type": endpoint.identity.type, "userAssignedIdentities": [
            uai.resource_id for uai in endpoint.identity.user_assigned_identities or []]}
    return stack_config(deployment, compute=endpoint.compute if kubernetes else None, auth_mode=auth, **extra)


def azure_ai_ml_endpoint_body(path: Path) -> dict[str, Any]:
    endpoint = load_online_endpoint(path)
    body = endpoint._to_rest_online_endpoint(location=MOCK_WORKSPACE_LOCATION).as_dict()
    compute = body["properties"].get("compute")
    if compute:  # the operations resolve it through the workspace (OperationOrchestrator, COMPUTE)
        orchestrator = OperationOrchestrator(None, OperationScope(MOCK_SUBSCRIPTION, "ml-prod-rg", "ml-prod-ws"), None)
        body["properties"]["compute"] = orchestrator.get_asset_arm_id(compute, "computes")
    return body


def as_sent_by_azure_native(identity: dict) -> dict:
    """azure-native takes user-assigned identities as a list of ARM ids and sends them as the keys of
    `userAssignedIdentities` with empty objects (its ManagedServiceIdentityArgs docstring: "The
    userAssignedIdentities dictionary keys will be ARM resource ids ... values can be empty objects")."""
    ids = identity.get("userAssignedIdentities")
    return {**identity, "userAssignedIdentities": {i: {} for i in ids}} if ids else identity


@pytest.mark.parametrize("path", ENDPOINTS, ids=lambda p: p.name)
def test_endpoint_body_matches_azure_ai_ml(path):
    (endpoint,) = render_config(endpoint_config(path)).of_type(ENDPOINT)
    ours = reveal({k: endpoint.inputs[k] for k in ("location", "properties", "identity", "tags") if k in endpoint.inputs})
    ours["identity"] = as_sent_by_azure_native(ours["identity"])
    found = differences(normalized(ours), normalized(azure_ai_ml_endpoint_body(path)))
    assert {p: d for p, d in found.items() if ALLOWED_ENDPOINT_DIFFERENCES.get(p) != d} == {}
    assert rest_problems(rest.OnlineEndpoint, ours) == []


@pytest.mark.parametrize("change, path", [
    ({"instance_count": 3}, "sku.capacity"),
    ({"egress_public_network_access": "disabled"}, "properties.egressPublicNetworkAccess"),
], ids=["instance_count_ignored", "egress_disabled_dropped"])
def test_an_allowed_path_with_other_values_is_still_a_difference(tmp_path, change, path):
    """Finding 8: entries ("*", path) hid any values there: a program ignoring instance_count or dropping
    egress_public_network_access: disabled passed. The allow-list now names the values."""
    source = CORPUS / "accepted" / "managed-environment-variables.yml"
    changed = tmp_path / source.name
    changed.write_text(yaml.safe_dump({**yaml.safe_load(source.read_text()), **change}))
    ours, theirs = normalized(our_body(changed)), normalized(azure_ai_ml_body(changed))
    ours_broken = _set(ours, path, {"sku.capacity": 1, "properties.egressPublicNetworkAccess": "Enabled"}[path])
    found = differences(ours_broken, theirs)
    assert path in found and not allowed(changed.name, path, found[path])


def _set(body: dict, path: str, value: Any) -> dict:
    """A copy of body with one dotted path set: what a program that ignored the file's key would send."""
    import copy

    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    here = body
    for key in parents:
        here = here.setdefault(key, {})
    here[last] = value
    return body
