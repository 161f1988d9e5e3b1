"""The dynamic resource that registers a data collector's collection as a data asset: azure-ai-ml's own
`OnlineDeploymentOperations._register_collection_data_assets` (what `az ml online-deployment create` runs
before the PUT) does the work. MLClient is mocked; its deployment operations run azure-ai-ml's real method
against data operations that register what they are given, or answer "already exists" as the service does
for a version registered before."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import dill
import pytest
from azure.ai.ml.constants._common import AzureMLResourceType
from azure.ai.ml.operations._online_deployment_operations import OnlineDeploymentOperations
from pulumi.dynamic.dynamic import serialize_provider

from mlcanary.components.uploads import CollectionDataAssetProvider

WORKSPACE = ("/subscriptions/sub-1/resourceGroups/ml-prod-rg/providers/Microsoft.MachineLearningServices"
             "/workspaces/ml-prod-ws")


class DataOperations:
    def __init__(self, existing=()):
        self.existing, self.created = set(existing), []

    def create_or_update(self, data):
        if (data.name, data.version) in self.existing:
            raise RuntimeError(f"Data {data.name}:{data.version} already exists")  # the service's words
        self.created.append(data)
        return data

    def get(self, name, version):
        return SimpleNamespace(name=name, version=version)


@pytest.fixture
def data_operations(mocker):
    operations = DataOperations()
    mocker.patch("mlcanary.components.arm.azure_credential")
    client = mocker.patch("azure.ai.ml.MLClient").return_value
    deployments = SimpleNamespace(_subscription_id="sub-1", _resource_group_name="ml-prod-rg",
                                  _workspace_name="ml-prod-ws",
                                  _all_operations=SimpleNamespace(_all_operations={AzureMLResourceType.DATA: operations}))
    deployments._register_collection_data_assets = lambda d: OnlineDeploymentOperations._register_collection_data_assets(
        deployments, d)
    client.online_deployments = deployments
    return operations


def props(**extra):
    return {"workspace_id": WORKSPACE, "endpoint_name": "fraud-scorer", "deployment_name": "green",
            "collection": "response", "name": None, "path": None, "version": None, "cloud": None, **extra}


def test_a_collection_is_registered_under_az_mls_default_name_and_path(data_operations):
    result = CollectionDataAssetProvider().create(props())
    (data,) = data_operations.created
    assert (data.name, data.version) == ("fraud-scorer-green-response", "1")
    assert data.path == "azureml://datastores/workspaceblobstore/paths/modelDataCollector/fraud-scorer/green/response"
    assert result.id == result.outs["data_id"] == f"{WORKSPACE}/data/fraud-scorer-green-response/versions/1"


def test_a_named_collection_keeps_its_name_path_and_version(data_operations):
    result = CollectionDataAssetProvider().create(props(
        name="fraud-answers", path="azureml://datastores/auditstore/paths/fraud", version="2"))
    (data,) = data_operations.created
    assert (data.name, data.version, data.path) == ("fraud-answers", "2", "azureml://datastores/auditstore/paths/fraud")
    assert result.id == f"{WORKSPACE}/data/fraud-answers/versions/2"


def test_a_version_registered_before_is_taken_as_it_is(data_operations):
    data_operations.existing.add(("fraud-scorer-green-response", "1"))
    result = CollectionDataAssetProvider().create(props())
    assert data_operations.created == []
    assert result.id == f"{WORKSPACE}/data/fraud-scorer-green-response/versions/1"


def test_any_change_replaces_and_delete_keeps_the_asset():
    diff = CollectionDataAssetProvider().diff("id", props(), props(collection="request"))
    assert diff.changes and diff.replaces == ["collection"]
    assert not CollectionDataAssetProvider().diff("id", props(), props()).changes
    assert CollectionDataAssetProvider().delete("id", props()) is None


def test_the_provider_survives_pulumis_dill_shipping():
    shipped = dill.loads(base64.b64decode(serialize_provider(CollectionDataAssetProvider())))
    assert isinstance(shipped, CollectionDataAssetProvider)
