"""What Azure receives when `WorkspaceAsset` registers a local folder: the REAL provider, the REAL azure-ai-ml.

Only the HTTP layer is fake: `requests`' HTTPAdapter.send (under azure-core's RequestsTransport, which both
azure-ai-ml's service clients and azure-storage-blob use) is answered by `FakeAzure`, which replies to the
workspace, datastore, datastore-secrets, pending-upload, asset-version and blob calls the way Azure does,
and records every request. The credential is a fake token credential (mlcanary.components.arm.azure_credential is patched).
The tests then read the recorded requests, as Azure would see them.

What azure-ai-ml sends (1.35): a model folder - GET the name's latest version (404: new), GET the
workspaceblobstore datastore, POST its listSecrets (account-key datastores only), HEAD/PUT each blob under
LocalUpload/<hash>/<folder> plus a metadata PUT, PUT models/<name>/versions/1. A code folder - GET code
versions by content hash (reuse), POST startPendingUpload, HEAD/PUT each blob with the returned SAS, PUT
codes/<name>/versions/1. No workspace GET and nothing on Microsoft.Storage (no listKeys).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
import urllib3
from azure.core.credentials import AccessToken

from azure.ai.ml._restclient.arm_ml_service import models as rest

from azure_rest import rest_problems
from mlcanary.components.uploads import WorkspaceAssetProvider, content_hash

SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE_NAME = "sub-1", "ml-prod-rg", "ml-prod-ws"
WORKSPACE = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
             f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE_NAME}")
STORAGE_ACCOUNT, DATASTORE_CONTAINER = "mlprodws1234", "azureml-blobstore-0000-1111"
ACCOUNT_HOST = f"{STORAGE_ACCOUNT}.blob.core.windows.net"
# The container and SAS a workspace hands out for a pending code upload (startPendingUpload).
PENDING_CONTAINER = "pending-upload-7f3c"
PENDING_SAS = "sv=2021-08-06&sr=c&sp=racwl&se=2099-01-01T00%3A00%3A00Z&sig=pending-upload-signature"
DATASTORE_KEY = "ZGF0YXN0b3JlLWFjY291bnQta2V5"  # base64 "datastore-account-key"
TOKEN = "fake-aad-token"
# Version PUT bodies are judged by Azure's REST models (tests/azure_rest.py), as Azure would.
VERSION_MODELS = {"models": rest.ModelVersion, "codes": rest.CodeVersion}
# azure-ai-ml itself sends the code hash version as a JSON number where the REST model says string; Azure takes it.
AZURE_ACCEPTS = {"body.properties.properties.hash_version: must be a string, got 202208"}


class FakeCredential:
    """A token credential: what azure_credential gives after `az login`. Remembers the scopes asked."""

    scopes: list[str] = []

    def __init__(self, *_args, **_kwargs):
        pass

    def get_token(self, *scopes, **_kwargs):
        FakeCredential.scopes.extend(scopes)
        return AccessToken(TOKEN, int(time.time()) + 3600)

    def get_token_info(self, *scopes, **_kwargs):
        from azure.core.credentials import AccessTokenInfo

        FakeCredential.scopes.extend(scopes)
        return AccessTokenInfo(TOKEN, int(time.time()) + 3600)


@dataclass
class Call:
    method: str
    url: str
    headers: dict
    body: bytes

    @property
    def path(self) -> str:
        return unquote(urlsplit(self.url).path)

    @property
    def query(self) -> dict:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def json(self):
        return json.loads(self.body)


@dataclass
class FakeAzure:
    """Answers ARM (management.azure.com) and blob storage the way Azure does; remembers every request."""

    datastore_credentials: str = "AccountKey"  # or "None": an identity-based datastore
    arm_host: str = "management.azure.com"
    storage_suffix: str = "core.windows.net"  # the cloud's storage endpoint suffix
    calls: list[Call] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)  # "<container>/<blob name>" -> content
    assets: dict[str, dict] = field(default_factory=dict)  # ARM path of a version -> its stored resource

    # -- the HTTP layer -----------------------------------------------------------------------------
    def send(self, adapter, request: requests.PreparedRequest, **_kwargs) -> requests.Response:
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        elif body is not None and not isinstance(body, (bytes, str)):
            body = b"".join(chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in body)
        if isinstance(body, str):
            body = body.encode()
        call = Call(request.method, request.url, dict(request.headers), body or b"")
        self.calls.append(call)
        status, headers, payload = self.answer(call)
        if isinstance(payload, (dict, list)):
            payload, headers = json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
        raw = urllib3.HTTPResponse(body=io.BytesIO(payload or b""), headers=headers, status=status,
                                   preload_content=False, decode_content=False)
        return adapter.build_response(request, raw)

    def answer(self, call: Call) -> tuple[int, dict, object]:
        if call.host == self.arm_host:
            return self.arm(call)
        if call.host == self.account_host:
            return self.blob(call)
        return 404, {}, {"error": {"code": "NotFound", "message": f"no such host in this test: {call.host}"}}

    # -- ARM ----------------------------------------------------------------------------------------
    def arm(self, call: Call):
        path = call.path
        workspace = WORKSPACE.lower()
        if not path.lower().startswith(workspace):
            return not_found(path)
        rest = path[len(WORKSPACE):]
        if rest == "" and call.method == "GET":
            return 200, {}, self.workspace()
        if rest == "/datastores" and call.method == "GET":
            return 200, {}, {"value": [self.datastore()]}
        if rest == "/datastores/workspaceblobstore" and call.method == "GET":
            return 200, {}, self.datastore()
        if rest == "/datastores/workspaceblobstore/listSecrets" and call.method == "POST":
            if self.datastore_credentials != "AccountKey":
                return 400, {}, {"error": {"code": "UserError", "message": "datastore has no secrets"}}
            return 200, {}, {"secretsType": "AccountKey", "key": DATASTORE_KEY}
        version = re.fullmatch(r"/(codes|models)/([^/]+)/versions/([^/]+)(/startPendingUpload)?", rest)
        if version and version[4] and call.method == "POST":
            return 200, {}, {
                "blobReferenceForConsumption": {
                    "blobUri": f"https://{self.account_host}/{PENDING_CONTAINER}",
                    "storageAccountArmId": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers"
                                           f"/Microsoft.Storage/storageAccounts/{STORAGE_ACCOUNT}",
                    "credential": {"credentialType": "SAS",
                                   "sasUri": f"https://{self.account_host}/{PENDING_CONTAINER}?{PENDING_SAS}"},
                },
                "pendingUploadId": "0c6d4a1e-pending",
                "pendingUploadType": "TemporaryBlobReference",
            }
        if version and call.method == "PUT":
            problems = [p for p in rest_problems(VERSION_MODELS[version[1]], call.json()) if p not in AZURE_ACCEPTS]
            if problems:
                return 400, {}, {"error": {"code": "UserError", "message": "; ".join(problems)}}
            stored = {**call.json(), "id": path, "name": version[3], "type":
                      f"Microsoft.MachineLearningServices/workspaces/{version[1]}/versions"}
            # Azure echoes the version with its server-side fields (an empty `flavors` map for a custom model).
            stored["properties"] = {"flavors": {}, **stored.get("properties", {}), "provisioningState": "Succeeded"}
            self.assets[path] = stored
            return 201, {}, stored
        if version and call.method == "GET":
            return (200, {}, self.assets[path]) if path in self.assets else not_found(path)
        versions = re.fullmatch(r"/(codes|models)/([^/]+)/versions", rest)
        if versions and call.method == "GET":
            listed = [a for p, a in self.assets.items() if p.startswith(path + "/")]
            if "hash" in call.query:  # code versions looked up by content hash (azure-ai-ml's reuse check)
                listed = [a for p, a in self.assets.items() if f"/{versions[1]}/" in p
                          and a["properties"].get("properties", {}).get("hash_sha256") == call.query["hash"]]
            if not listed and versions[1] == "models":
                return not_found(path)  # Azure: the model container does not exist yet
            return 200, {}, {"value": listed}
        return not_found(path)

    def workspace(self) -> dict:
        return {
            "id": WORKSPACE, "name": WORKSPACE_NAME, "location": "westeurope",
            "type": "Microsoft.MachineLearningServices/workspaces", "kind": "Default",
            "properties": {
                "storageAccount": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers"
                                  f"/Microsoft.Storage/storageAccounts/{STORAGE_ACCOUNT}",
                "discoveryUrl": "https://westeurope.api.azureml.ms/discovery",
                "mlFlowTrackingUri": "azureml://westeurope.api.azureml.ms/mlflow/v1.0" + WORKSPACE,
                "workspaceId": "00000000-0000-0000-0000-000000000001",
            },
        }

    def datastore(self) -> dict:
        return {
            "id": f"{WORKSPACE}/datastores/workspaceblobstore", "name": "workspaceblobstore",
            "type": "Microsoft.MachineLearningServices/workspaces/datastores",
            "properties": {
                "datastoreType": "AzureBlob", "isDefault": True, "accountName": STORAGE_ACCOUNT,
                "containerName": DATASTORE_CONTAINER, "endpoint": self.storage_suffix, "protocol": "https",
                "credentials": {"credentialsType": self.datastore_credentials},
            },
        }

    # -- blob storage -------------------------------------------------------------------------------
    def blob(self, call: Call):
        container, _, name = call.path.lstrip("/").partition("/")
        key = f"{container}/{name}"
        if call.method == "PUT" and call.query.get("comp") in (None, "block", "blocklist"):
            if call.query.get("comp") is None:
                self.blobs[key] = call.body
            return 201, {"ETag": '"0x1"', "Last-Modified": "Sun, 22 Nov 2026 06:00:00 GMT"}, b""
        if call.method == "PUT" and call.query.get("comp") == "metadata":
            return 200, {"ETag": '"0x2"', "Last-Modified": "Sun, 22 Nov 2026 06:00:00 GMT"}, b""
        if call.method == "GET" and call.query.get("comp") == "list":
            prefix = call.query.get("prefix", "")
            names = [b.partition("/")[2] for b in self.blobs if b.startswith(f"{container}/{prefix}")]
            items = "".join(f"<Blob><Name>{n}</Name><Properties/><Metadata/></Blob>" for n in names)
            xml = (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="{container}">'
                   f"<Prefix>{prefix}</Prefix><Blobs>{items}</Blobs><NextMarker/></EnumerationResults>")
            return 200, {"Content-Type": "application/xml"}, xml.encode()
        if call.method in ("HEAD", "GET") and key in self.blobs:
            return 200, {"Content-Length": str(len(self.blobs[key])), "ETag": '"0x1"',
                         "x-ms-blob-type": "BlockBlob"}, self.blobs[key] if call.method == "GET" else b""
        return 404, {"x-ms-error-code": "BlobNotFound"}, b""

    # -- what the tests read ------------------------------------------------------------------------
    @property
    def account_host(self) -> str:
        return f"{STORAGE_ACCOUNT}.blob.{self.storage_suffix}"

    def arm_calls(self) -> list[Call]:
        return [c for c in self.calls if c.host == self.arm_host]

    def blob_puts(self) -> list[Call]:
        return [c for c in self.calls if c.host == self.account_host and c.method == "PUT"]

    def version_put(self, kind: str) -> Call:
        (put,) = [c for c in self.arm_calls() if c.method == "PUT" and f"/{kind}/" in c.path]
        return put


def not_found(path: str):
    return 404, {}, {"error": {"code": "UserError", "message": f"Not found: {path}"}}


@pytest.fixture
def azure(monkeypatch):
    fake = FakeAzure()
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send",
                        lambda adapter, request, **kwargs: fake.send(adapter, request, **kwargs))
    monkeypatch.setattr("mlcanary.components.arm.azure_credential", FakeCredential)
    monkeypatch.setattr(FakeCredential, "scopes", [])
    return fake


def folder(tmp_path, name, files: dict[str, str]):
    root = tmp_path / name
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def create(kind: str, root, **extra):
    props = {"workspace_id": WORKSPACE, "kind": kind, "path": str(root), "content_hash": content_hash(str(root)),
             "model_type": None, "name": None, "version": None, "description": None, "cloud": None, **extra}
    return WorkspaceAssetProvider().create(props)


def local_upload_uri(digest: str, folder_name: str) -> str:
    return (f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/workspaces/{WORKSPACE_NAME}"
            f"/datastores/workspaceblobstore/paths/LocalUpload/{digest}/{folder_name}")


def uploaded(azure: FakeAzure, container: str, prefix: str) -> set[str]:
    """Blob names (relative to prefix) of the content PUTs into container."""
    names = set()
    for put in azure.blob_puts():
        if put.query.get("comp") is None:
            blob = put.path.lstrip("/")
            assert blob.startswith(f"{container}/{prefix}/"), f"uploaded outside {container}/{prefix}: {blob}"
            names.add(blob[len(f"{container}/{prefix}/"):])
    return names


MODEL_FILES = {"model.pkl": "weights", "conf/labels.json": "[]"}
CODE_FILES = {"score.py": "def init(): pass\n\ndef run(raw): return raw\n", "util/features.py": "X = 1\n"}
# What a developer's folder also holds, and its ignore file says to leave behind.
IGNORED_FILES = {".env": "API_KEY=not-for-azure", "__pycache__/score.cpython-311.pyc": "bytecode",
                 "notes.pyc": "bytecode"}
IGNORE_RULES = ".env\n__pycache__/\n*.pyc\n"


def test_local_model_folder_is_an_anonymous_version_whose_model_uri_is_the_datastore_path(azure, tmp_path):
    root = folder(tmp_path, "model", MODEL_FILES)
    digest = content_hash(str(root))
    result = create("model", root)

    put = azure.version_put("models")
    name = hashlib.sha256(digest.encode()).hexdigest()  # azure-ai-ml names an anonymous model by the content hash
    assert put.path == f"{WORKSPACE}/models/{name}/versions/1"
    assert put.json()["properties"]["modelUri"] == local_upload_uri(digest, "model")
    assert put.json()["properties"]["isAnonymous"] is True
    assert put.json()["properties"]["modelType"] == "custom_model"
    assert result.id == result.outs["asset_id"] == put.path
    assert uploaded(azure, DATASTORE_CONTAINER, f"LocalUpload/{digest}/model") == set(MODEL_FILES)
    # The blobs hold the folder's files, byte for byte.
    assert azure.blobs[f"{DATASTORE_CONTAINER}/LocalUpload/{digest}/model/model.pkl"] == b"weights"


def test_named_model_keeps_its_name_and_version_and_the_same_datastore_path(azure, tmp_path):
    root = folder(tmp_path, "model", MODEL_FILES)
    create("model", root, name="fraud-model", version="7", description="October")
    put = azure.version_put("models")
    assert put.path == f"{WORKSPACE}/models/fraud-model/versions/7"
    body = put.json()["properties"]
    assert body["modelUri"] == local_upload_uri(content_hash(str(root)), "model")
    assert body["description"] == "October" and body.get("isAnonymous") is not True


@pytest.mark.parametrize("credentials, authorization", [
    ("AccountKey", f"SharedKey {STORAGE_ACCOUNT}:"),  # the datastore's own secret, from the workspace
    ("None", f"Bearer {TOKEN}"),  # an identity-based datastore: the user's own token
], ids=["account-key-datastore", "identity-based-datastore"])
def test_model_upload_uses_the_datastore_credentials_never_the_storage_account_keys(
        azure, tmp_path, credentials, authorization):
    azure.datastore_credentials = credentials
    create("model", folder(tmp_path, "model", MODEL_FILES))

    assert azure.blob_puts()
    assert all(put.headers.get("Authorization", "").startswith(authorization) for put in azure.blob_puts())
    storage_calls = [c for c in azure.calls if "microsoft.storage" in c.path.lower() or "listkeys" in c.path.lower()]
    assert storage_calls == []  # no listKeys on the storage account: the workspace's datastore is asked instead
    secrets = [c for c in azure.arm_calls() if c.path.endswith("/listSecrets")]
    assert [c.path for c in secrets] == ([f"{WORKSPACE}/datastores/workspaceblobstore/listSecrets"]
                                         if credentials == "AccountKey" else [])


def test_local_code_folder_is_uploaded_through_the_pending_upload_sas(azure, tmp_path):
    root = folder(tmp_path, "code", CODE_FILES)
    result = create("code", root)

    put = azure.version_put("codes")
    name = re.fullmatch(rf"{re.escape(WORKSPACE)}/codes/([^/]+)/versions/1", put.path)[1]
    (pending,) = [c for c in azure.arm_calls() if c.path.endswith("/startPendingUpload")]
    assert pending.method == "POST" and pending.json() == {"pendingUploadType": "TemporaryBlobReference"}
    assert pending.path == f"{WORKSPACE}/codes/{name}/versions/1/startPendingUpload"
    body = put.json()["properties"]
    assert body["codeUri"] == f"https://{ACCOUNT_HOST}/{PENDING_CONTAINER}/code"
    assert body["isAnonymous"] is True
    assert result.id == put.path
    assert uploaded(azure, PENDING_CONTAINER, "code") == set(CODE_FILES)
    # Every blob request is signed by the pending upload's SAS alone: no key, no token, no datastore secret.
    for blob_call in (c for c in azure.calls if c.host == ACCOUNT_HOST):
        assert blob_call.query.get("sig") == "pending-upload-signature"
        assert "Authorization" not in blob_call.headers
    assert not [c for c in azure.arm_calls() if "/datastores" in c.path or "microsoft.storage" in c.path.lower()]


def test_unchanged_code_is_found_by_its_hash_and_not_uploaded_again(azure, tmp_path):
    root = folder(tmp_path, "code", CODE_FILES)
    first = create("code", root)
    puts_before = len(azure.blob_puts())
    again = create("code", root)  # e.g. a new stack, or a state that lost the resource
    assert again.id == first.id
    assert len(azure.blob_puts()) == puts_before
    assert len([c for c in azure.arm_calls() if c.method == "PUT"]) == 1


@pytest.mark.parametrize("ignore_file", [".amlignore", ".gitignore"])
@pytest.mark.parametrize("kind", ["code", "model"])
def test_ignored_files_are_not_uploaded(azure, tmp_path, kind, ignore_file):
    files = CODE_FILES if kind == "code" else MODEL_FILES
    root = folder(tmp_path, kind, {**files, ignore_file: IGNORE_RULES, **IGNORED_FILES})
    create(kind, root)
    if kind == "code":
        names = uploaded(azure, PENDING_CONTAINER, kind)
    else:
        model_uri = azure.version_put("models").json()["properties"]["modelUri"]
        names = uploaded(azure, DATASTORE_CONTAINER, model_uri.partition("/paths/")[2])
    assert names == set(files) | {ignore_file}  # azure-ai-ml uploads the ignore file itself, as az ml does
    assert not any(b"not-for-azure" in put.body or b"bytecode" in put.body for put in azure.blob_puts())


@pytest.mark.parametrize("ignore_file", [".amlignore", ".gitignore"])
@pytest.mark.parametrize("kind", ["code", "model"])
def test_ignored_env_and_pycache_make_no_new_version(tmp_path, kind, ignore_file):
    files = CODE_FILES if kind == "code" else MODEL_FILES
    clean = folder(tmp_path / "clean", kind, {**files, ignore_file: IGNORE_RULES})
    root = folder(tmp_path / "dev", kind, {**files, ignore_file: IGNORE_RULES, **IGNORED_FILES})
    before = {"workspace_id": WORKSPACE, "kind": kind, "path": str(root), "content_hash": content_hash(str(clean))}
    after = {**before, "content_hash": content_hash(str(root))}
    assert not WorkspaceAssetProvider().diff("id", before, after).changes
    (root / "util").mkdir(exist_ok=True)
    (root / "util" / "new.py").write_text("Y = 2\n")  # an uploaded file does make a new version
    assert WorkspaceAssetProvider().diff("id", before, {**before, "content_hash": content_hash(str(root))}).changes


def az_ml_registers(deployment_file) -> None:
    """What `az ml online-deployment create -f` does with the file's local model and code, up to the deployment PUT."""
    from azure.ai.ml import MLClient, load_online_deployment
    from azure.ai.ml._utils._endpoint_utils import upload_dependencies
    from azure.ai.ml.operations._operation_orchestrator import OperationOrchestrator

    client = MLClient(FakeCredential(), SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE_NAME)
    operations = client.online_deployments
    deployment = load_online_deployment(deployment_file)
    orchestrator = OperationOrchestrator(operations._all_operations, operations._operation_scope,
                                         operations._operation_config)
    upload_dependencies(deployment, orchestrator, operations._credentials)


def signed_by(call: Call) -> str:
    return "SAS" if "sig" in call.query else call.headers.get("Authorization", "nothing").split(" ")[0]


def comparable(azure: FakeAzure) -> dict:
    """The model and code the requests register, with the random name azure-ai-ml gives anonymous code removed."""
    model, code = azure.version_put("models"), azure.version_put("codes")
    code_name = re.search(r"/codes/([^/]+)/", code.path)[1]
    return {
        "model": (model.path, model.json()),
        "code": (code.path.replace(code_name, "<name>"), code.json()),
        "blobs": sorted(azure.blobs),
        "calls": sorted({(c.method, c.path.replace(code_name, "<name>"), signed_by(c)) for c in azure.calls}),
    }


def test_the_provider_registers_what_az_ml_registers_for_a_deployment_with_local_folders(monkeypatch, tmp_path):
    model = folder(tmp_path, "model", {**MODEL_FILES, ".gitignore": IGNORE_RULES, ".env": "API_KEY=not-for-azure"})
    code = folder(tmp_path, "code", {**CODE_FILES, ".amlignore": IGNORE_RULES, "__pycache__/x.pyc": "bytecode"})
    deployment_file = tmp_path / "blue.yml"
    deployment_file.write_text(
        "name: blue\nendpoint_name: fraud-scorer\nmodel:\n  path: ./model\n"
        "code_configuration:\n  code: ./code\n  scoring_script: score.py\n"
        "environment: azureml:sklearn-env:3\ninstance_type: Standard_DS3_v2\ninstance_count: 1\n")
    monkeypatch.setattr("mlcanary.components.arm.azure_credential", FakeCredential)

    seen = {}
    for who in ("az ml", "mlcanary"):
        azure = FakeAzure()
        monkeypatch.setattr(requests.adapters.HTTPAdapter, "send",
                            lambda adapter, request, _azure=azure, **kwargs: _azure.send(adapter, request, **kwargs))
        if who == "az ml":
            az_ml_registers(deployment_file)
        else:
            create("model", model)
            create("code", code)
        seen[who] = comparable(azure)
    assert seen["mlcanary"] == seen["az ml"]


@pytest.mark.parametrize("kind", ["code", "model"])
def test_a_sovereign_cloud_is_reached_at_its_own_hosts(azure, tmp_path, kind):
    azure.arm_host, azure.storage_suffix = "management.chinacloudapi.cn", "core.chinacloudapi.cn"
    azure.datastore_credentials = "None"
    root = folder(tmp_path, kind, CODE_FILES if kind == "code" else MODEL_FILES)
    result = create(kind, root, cloud="AzureChinaCloud")
    assert result.id == azure.version_put(f"{kind}s").path
    assert {c.host for c in azure.calls} == {"management.chinacloudapi.cn",
                                             f"{STORAGE_ACCOUNT}.blob.core.chinacloudapi.cn"}
    assert azure.blob_puts()
    assert set(FakeCredential.scopes) <= {"https://management.chinacloudapi.cn/.default",
                                          "https://storage.azure.com/.default"}
    assert "https://management.chinacloudapi.cn/.default" in FakeCredential.scopes
