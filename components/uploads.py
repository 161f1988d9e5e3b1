"""Local code and model folders on the azure target, registered the way `az ml` does it.

`az ml online-deployment create -f` uploads a local `code` or `model` path to the workspace's
default blob datastore under `LocalUpload/<hash>/<name>` and registers a code or model version
pointing there. This does the same with Pulumi resources: one storage Blob per file, then a
CodeVersion / ModelVersion that depends on every blob. The version is a digest of the content, so
an unchanged folder changes nothing and a changed one becomes a new version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pulumi
import pulumi_azure_native.machinelearningservices as ml

DEFAULT_DATASTORE = "workspaceblobstore"


def files_of(root: Path) -> list[tuple[Path, str]]:
    """(file, path relative to `root`) for every file under `root`, sorted; a file root is itself."""
    if root.is_file():
        return [(root, root.name)]
    return sorted(
        ((path, path.relative_to(root).as_posix()) for path in root.rglob("*") if path.is_file()),
        key=lambda item: item[1],
    )


def content_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path, relative in files_of(root):
        digest.update(relative.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def default_datastore(where: dict[str, str]) -> pulumi.Output[dict[str, Any]]:
    """The workspace's default blob datastore (account, container, storage endpoint, resource group)."""
    return ml.get_datastore_output(name=DEFAULT_DATASTORE, **where).properties


def upload_local_asset(
    resource_name: str,
    asset_name: str,
    local_path: str,
    kind: str,
    datastore: pulumi.Output[dict[str, Any]],
    where: dict[str, str],
    parent: pulumi.Resource,
) -> pulumi.Output[str]:
    """Upload `local_path` and register it as a code (`kind="code"`) or model version; its ARM id."""
    from pulumi_azure_native import storage

    root = Path(local_path)
    digest = content_digest(root)
    prefix = f"LocalUpload/{digest}/{root.name}"
    account = datastore.apply(lambda d: d["accountName"])
    container = datastore.apply(lambda d: d["containerName"])
    blobs = [
        storage.Blob(
            f"{resource_name}-{relative}",
            account_name=account,
            container_name=container,
            resource_group_name=datastore.apply(lambda d: d["resourceGroup"]),
            blob_name=prefix if root.is_file() else f"{prefix}/{relative}",
            source=pulumi.FileAsset(str(path)),
            type="Block",
            opts=pulumi.ResourceOptions(parent=parent),
        )
        for path, relative in files_of(root)
    ]
    uri = datastore.apply(
        lambda d: f"https://{d['accountName']}.blob.{d.get('endpoint') or 'core.windows.net'}/{d['containerName']}/{prefix}"
    )
    options = pulumi.ResourceOptions(parent=parent, depends_on=blobs)
    if kind == "code":
        version = ml.CodeVersion(
            resource_name, name=asset_name, version=digest,
            properties=ml.CodeVersionPropertiesArgs(code_uri=uri), opts=options, **where,
        )
    else:
        version = ml.ModelVersion(
            resource_name, name=asset_name, version=digest,
            properties=ml.ModelVersionPropertiesArgs(model_uri=uri, model_type="custom_model"), opts=options, **where,
        )
    return version.id
