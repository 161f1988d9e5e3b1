"""Local code and model folders on the azure target, registered by Azure's own client.

`az ml online-deployment create -f` turns a deployment's local `code` or `model` path into an asset
with azure-ai-ml: it hashes the folder (honouring `.amlignore` / `.gitignore`), uploads it (code
through the SAS the workspace issues for a pending upload, models to the workspace's default
datastore with the datastore's credentials or the user's identity - never the storage account
keys), and registers an anonymous version (name: the content hash, version `1`) or, for a model
that names itself, that name and version. `WorkspaceAsset` does exactly that by calling azure-ai-ml
from a Pulumi dynamic resource, so the upload, ignore rules, hashing and retries are Azure's own.

The content hash (azure-ai-ml's `get_object_hash` over the files it uploads: content_digest.py) is an input:
unchanged content changes nothing, changed content replaces the resource with a new version. Asset
versions are never deleted by Pulumi (delete is a no-op): a rollback to the previous stage finds
its version still registered.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider

from mlcanary.components.content_digest import content_digest

# Inputs whose change means a different asset version (a replacement, never an in-place update).
IDENTITY_KEYS = (
    "workspace_id", "kind", "path", "content_hash", "name", "version", "model_type", "description", "cloud",
)


def content_hash(path: str) -> str:
    """azure-ai-ml's hash of a file or folder, over exactly the files azure-ai-ml uploads, computed
    without importing azure-ai-ml and remembered while the folder is unchanged (content_digest.py)."""
    return content_digest(path)


def workspace_scope(workspace_id: str) -> tuple[str, str, str]:
    """(subscription, resource group, workspace) of a workspace ARM id."""
    parts = workspace_id.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    try:
        return (
            parts[lowered.index("subscriptions") + 1],
            parts[lowered.index("resourcegroups") + 1],
            parts[lowered.index("workspaces") + 1],
        )
    except (ValueError, IndexError):
        raise ValueError(f"not an Azure ML workspace ARM id: {workspace_id!r}") from None


class WorkspaceAssetProvider(ResourceProvider):
    """Dynamic provider; pickled with dill, so the azure-ai-ml client is made inside each method."""

    def _client(self, workspace_id: str, cloud: str | None):
        from azure.ai.ml import MLClient

        from mlcanary.components.arm import azure_credential

        subscription, resource_group, workspace = workspace_scope(workspace_id)
        extra = {"cloud": cloud} if cloud else {}
        return MLClient(azure_credential(), subscription, resource_group, workspace, **extra)

    def create(self, props: dict[str, Any]) -> CreateResult:
        client = self._client(props["workspace_id"], props.get("cloud"))
        if props["kind"] == "code":
            from azure.ai.ml.entities._assets import Code

            registered = client._code.create_or_update(Code(path=props["path"]))
        else:
            from azure.ai.ml.entities import Model

            registered = client.models.create_or_update(
                Model(
                    path=props["path"],
                    type=props.get("model_type") or "custom_model",
                    name=props.get("name"),
                    version=props.get("version"),
                    description=props.get("description"),
                )
            )
        return CreateResult(id_=registered.id, outs={**props, "asset_id": registered.id})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in IDENTITY_KEYS if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=changed, stables=[], delete_before_replace=False)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Registered versions stay: the previous stage may roll back to them."""


class WorkspaceAsset(pulumi.dynamic.Resource, module="azureml", name="WorkspaceAsset"):
    """A local code or model folder uploaded and registered the way `az ml` does; `asset_id` is its ARM id."""

    asset_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        workspace_id: pulumi.Input[str],
        kind: str,
        path: str,
        model_type: str | None = None,
        asset_name: str | None = None,
        version: str | None = None,
        description: str | None = None,
        cloud: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(
            WorkspaceAssetProvider(),
            name,
            {
                "workspace_id": workspace_id,
                "kind": kind,
                "path": path,
                "content_hash": content_hash(path),
                "model_type": model_type,
                "name": asset_name,
                "version": version,
                "description": description,
                "cloud": cloud,
                "asset_id": None,
            },
            opts,
        )


class CollectionDataAssetProvider(WorkspaceAssetProvider):
    """The data asset a data collector's collection is registered as, by azure-ai-ml's own
    `_register_collection_data_assets` (what `az ml online-deployment create` runs first): name
    `<endpoint>-<deployment>-<collection>`, version 1 and the modelDataCollector path unless the file
    names them; an existing version is taken as it is."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        from azure.ai.ml.entities import DataCollector, DeploymentCollection, ManagedOnlineDeployment
        from azure.ai.ml.entities._deployment.data_asset import DataAsset

        client = self._client(props["workspace_id"], props.get("cloud"))
        named = {k: props.get(k) for k in ("name", "path", "version")}
        collection = DeploymentCollection(enabled="true", data=DataAsset(**named) if any(named.values()) else None)
        deployment = ManagedOnlineDeployment(name=props["deployment_name"], endpoint_name=props["endpoint_name"],
                                             data_collector=DataCollector({props["collection"]: collection}))
        client.online_deployments._register_collection_data_assets(deployment)
        data_id = deployment.data_collector.collections[props["collection"]].data
        return CreateResult(id_=data_id, outs={**props, "data_id": data_id})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("workspace_id", "endpoint_name", "deployment_name", "collection", "name", "path", "version", "cloud")
        changed = [key for key in keys if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=changed, stables=[], delete_before_replace=False)


class CollectionDataAsset(pulumi.dynamic.Resource, module="azureml", name="CollectionDataAsset"):
    """A data collector's collection registered as a data asset the way `az ml` does; `data_id` is its ARM id."""

    data_id: pulumi.Output[str]

    def __init__(self, name: str, *, workspace_id: pulumi.Input[str], endpoint_name: str, deployment_name: str,
                 collection: str, asset_name: str | None = None, path: str | None = None, version: str | None = None,
                 cloud: str | None = None, opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            CollectionDataAssetProvider(),
            name,
            {"workspace_id": workspace_id, "endpoint_name": endpoint_name, "deployment_name": deployment_name,
             "collection": collection, "name": asset_name, "path": path, "version": version, "cloud": cloud,
             "data_id": None},
            opts,
        )
