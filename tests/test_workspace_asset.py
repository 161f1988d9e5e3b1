"""The dynamic resource that registers local code and model folders: azure-ai-ml does the work.

MLClient is mocked (no network); the tests check which of azure-ai-ml's entities the provider hands
to which operation, that nothing is deleted, and that the provider survives Pulumi's dill shipping.
"""

from __future__ import annotations

import base64

import dill
import pytest
from azure.ai.ml.entities import Model
from azure.ai.ml.entities._assets import Code
from pulumi.dynamic.dynamic import serialize_provider

from mlcanary.components.uploads import WorkspaceAssetProvider, content_hash, workspace_scope

WORKSPACE = ("/subscriptions/sub-1/resourceGroups/ml-prod-rg/providers/Microsoft.MachineLearningServices"
             "/workspaces/ml-prod-ws")


@pytest.fixture
def ml_client(mocker):
    mocker.patch("mlcanary.components.arm.azure_credential")
    client_class = mocker.patch("azure.ai.ml.MLClient")
    client = client_class.return_value
    client._code.create_or_update.side_effect = lambda code: mocker.Mock(id=f"{WORKSPACE}/codes/{code.name}/versions/1")
    client.models.create_or_update.side_effect = lambda model: mocker.Mock(
        id=f"{WORKSPACE}/models/{model.name}/versions/{model.version}")
    return client_class


def props(tmp_path, kind, **extra):
    folder = tmp_path / kind
    folder.mkdir()
    (folder / "score.py").write_text("def init(): pass\n")
    return {"workspace_id": WORKSPACE, "kind": kind, "path": str(folder), "content_hash": content_hash(str(folder)),
            "model_type": None, "name": None, "version": None, "description": None, "cloud": "AzureCloud", **extra}


def test_code_is_registered_by_azure_ai_ml_as_an_anonymous_code_asset(ml_client, tmp_path):
    result = WorkspaceAssetProvider().create(props(tmp_path, "code"))
    ml_client.assert_called_once()
    assert ml_client.call_args.args[1:] == ("sub-1", "ml-prod-rg", "ml-prod-ws")
    assert ml_client.call_args.kwargs == {"cloud": "AzureCloud"}
    (code,), _ = ml_client.return_value._code.create_or_update.call_args
    assert isinstance(code, Code) and code._is_anonymous and code.version == "1"
    assert result.outs["asset_id"] == result.id == f"{WORKSPACE}/codes/{code.name}/versions/1"


def test_mlflow_model_keeps_its_type_name_and_version(ml_client, tmp_path):
    result = WorkspaceAssetProvider().create(
        props(tmp_path, "model", model_type="mlflow_model", name="fraud-model", version="7", description="October"))
    (model,), _ = ml_client.return_value.models.create_or_update.call_args
    assert isinstance(model, Model)
    assert (model.type, model.name, model.version, model.description) == ("mlflow_model", "fraud-model", "7", "October")
    assert result.id == f"{WORKSPACE}/models/fraud-model/versions/7"


def test_anonymous_model_is_named_by_azure_ai_ml(ml_client, tmp_path):
    WorkspaceAssetProvider().create(props(tmp_path, "model"))
    (model,), _ = ml_client.return_value.models.create_or_update.call_args
    assert model._is_anonymous and model.version == "1" and model.type == "custom_model"


def test_new_content_is_a_new_version_and_nothing_is_ever_deleted(ml_client, tmp_path):
    provider, old = WorkspaceAssetProvider(), props(tmp_path, "code")
    assert not provider.diff("id", old, dict(old)).changes
    new = {**old, "content_hash": "other"}
    diff = provider.diff("id", old, new)
    assert diff.changes and diff.replaces == ["content_hash"] and not diff.delete_before_replace
    provider.delete("id", old)
    assert ml_client.call_count == 0  # no client, no call: the version stays registered


def test_provider_survives_the_dill_round_trip(ml_client, tmp_path):
    shipped = dill.loads(base64.b64decode(serialize_provider(WorkspaceAssetProvider())))
    assert shipped.create(props(tmp_path, "code")).id.startswith(f"{WORKSPACE}/codes/")


def test_workspace_scope_refuses_other_ids():
    assert workspace_scope(WORKSPACE) == ("sub-1", "ml-prod-rg", "ml-prod-ws")
    with pytest.raises(ValueError, match="not an Azure ML workspace ARM id"):
        workspace_scope("/subscriptions/sub-1/resourceGroups/rg")


def test_a_named_model_without_version_is_registered_as_the_next_version_as_az_ml_does(ml_client, tmp_path):
    """Finding 9: an inline model with `name` and no `version` was refused; `az ml` registers the next
    version of that name (azure-ai-ml `_model_operations.py`: `_get_next_version_from_container` when the
    model has a name and no version). The provider hands azure-ai-ml exactly that model."""
    WorkspaceAssetProvider().create(props(tmp_path, "model", name="fraud-model"))
    (model,), _ = ml_client.return_value.models.create_or_update.call_args
    assert model.name == "fraud-model" and model.version is None and model._auto_increment_version
    assert not model._is_anonymous
