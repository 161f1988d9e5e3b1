"""Run the real Pulumi program offline, under the SDK's mocks, and record what it registers.

No Pulumi CLI and no cloud: the program (`__main__.py`) runs against a mock resource monitor that
records every registration the way the engine would receive it (inputs in wire form: camelCase
keys, numbers as floats, secrets marked), plus parent, dependencies and options. Tests and
`mlcanary check` both use this; each render runs in a fresh context, so stages can be rendered
one after another in one process.

A render records no aliases (nor does anything that reads it: the policies' requests carry none),
so it drops them before the SDK computes them: azure-native declares one alias per past API version
(32 on an OnlineEndpoint), and turning each into a URN and an alias spec through Outputs was half
of a render's time. What is recorded is the same with or without them (tests/test_stages.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import pickle
import runpy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
import pulumi
from pulumi.runtime import mocks, settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import register_stack_transformation, run_in_stack
from pulumi.runtime.sync_await import _sync_await

SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"
MOCK_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
# The mock workspace's region: not the stage files' `azure-native:location`, so a render shows which is used.
MOCK_WORKSPACE_LOCATION = "swedencentral"
PROJECT = "mlcanary"
# pulumi.dynamic's serialize_provider wraps pickle._Pickler._batch_setitems in a sorting wrapper on
# every dynamic resource and never puts the original back: in a process that renders many stages
# (`check`, `rehearse`, a test worker) the wrappers nest until a render fails with RecursionError
# (seen after a few hundred renders). Each render puts the original back when it ends.
_BATCH_SETITEMS = pickle._Pickler._batch_setitems


@dataclass
class Registration:
    """One resource as the engine would have received it."""

    urn: str
    type: str
    name: str
    id: str
    parent: str
    inputs: dict[str, Any]  # wire form: camelCase keys, floats, secrets as {SECRET_SIG: ...}
    dependencies: list[str]
    ignore_changes: list[str]
    delete_before_replace: bool
    retain_on_delete: bool = False


@dataclass
class Render:
    resources: list[Registration] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # stack outputs, wire form
    invokes: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str, type_: str | None = None) -> Registration:
        """The one resource called `name` (of `type_`, where a component and its child share a name)."""
        found = [r for r in self.resources if r.name == name and type_ in (None, r.type)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r}")
        return found[0]


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE


def reveal(value: Any) -> Any:
    """The plain value of a wire value, secrets unwrapped."""
    if is_secret(value):
        return reveal(value.get("value"))
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


class AzureMocks(mocks.Mocks):
    """Plausible Azure answers: ARM-shaped ids, scoring URIs, endpoint keys."""

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str, dict]:
        inputs = dict(args.inputs)
        rg, ws = inputs.get("resourceGroupName"), inputs.get("workspaceName")
        workspace = (
            f"/subscriptions/{MOCK_SUBSCRIPTION}/resourceGroups/{rg}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{ws}"
        )
        if args.typ == "azure-native:machinelearningservices:OnlineEndpoint":
            name = inputs["endpointName"]
            host = f"https://{name}.{inputs.get('location') or 'westus2'}.inference.ml.azure.com"
            properties = {**inputs.get("properties", {}), "scoringUri": f"{host}/score",
                          "swaggerUri": f"{host}/swagger.json", "provisioningState": "Succeeded"}
            # Azure stamps every write; here the stamp stands for what was written.
            written = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]
            system_data = {"lastModifiedAt": f"2026-01-01T00:00:00Z#{written}"}
            identity = dict(inputs.get("identity") or {})
            if identity.get("userAssignedIdentities"):  # Azure answers with a map: id -> principal and client
                identity["userAssignedIdentities"] = {i: {"principalId": "mock-principal", "clientId": "mock-client"}
                                                      for i in identity["userAssignedIdentities"]}
            return f"{workspace}/onlineEndpoints/{name}", {**inputs, "name": name, "properties": properties,
                                                           "systemData": system_data, "identity": identity}
        if args.typ == "azure-native:machinelearningservices:OnlineDeployment":
            name = inputs["deploymentName"]
            return f"{workspace}/onlineEndpoints/{inputs['endpointName']}/deployments/{name}", {**inputs, "name": name}
        versions = {"EnvironmentVersion": "environments", "CodeVersion": "codes", "ModelVersion": "models"}
        kind = versions.get(args.typ.rsplit(":", 1)[-1]) if args.typ.startswith("azure-native:machinelearningservices:") else None
        if kind:
            return f"{workspace}/{kind}/{inputs['name']}/versions/{inputs['version']}", inputs
        if "endpoint_id" in inputs:
            return f"{inputs['endpoint_id']}/traffic", inputs
        if "collection" in inputs and "deployment_name" in inputs:  # a CollectionDataAsset (azure-ai-ml's naming)
            data_name = inputs.get("name") or f"{inputs['endpoint_name']}-{inputs['deployment_name']}-{inputs['collection']}"
            data_id = f"{inputs['workspace_id']}/data/{data_name}/versions/{inputs.get('version') or 1}"
            return data_id, {**inputs, "data_id": data_id}
        if "content_hash" in inputs:  # a WorkspaceAsset: azure-ai-ml registers an anonymous version
            kind = "codes" if inputs["kind"] == "code" else "models"
            asset_id = f"{inputs['workspace_id']}/{kind}/{inputs.get('name') or inputs['content_hash']}/versions/{inputs.get('version') or 1}"
            return asset_id, {**inputs, "asset_id": asset_id}
        return f"{args.name}-id", inputs

    def call(self, args: mocks.MockCallArgs) -> tuple[dict, list]:
        if args.token == "azure-native:machinelearningservices:listOnlineEndpointKeys":
            return {"primaryKey": "mock-primary-key", "secondaryKey": "mock-secondary-key"}, []
        if args.token == "azure-native:machinelearningservices:getWorkspace":
            rg, ws = args.args["resourceGroupName"], args.args["workspaceName"]
            workspace_id = (f"/subscriptions/{MOCK_SUBSCRIPTION}/resourceGroups/{rg}"
                            f"/providers/Microsoft.MachineLearningServices/workspaces/{ws}")
            return {"id": workspace_id, "name": ws, "location": MOCK_WORKSPACE_LOCATION}, []
        return {}, []


class RecordingMonitor(mocks.MockMonitor):
    def __init__(self, mock: mocks.Mocks, render: Render):
        super().__init__(mock)
        self.render = render

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.render.resources.append(
                Registration(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    id=response.id,
                    parent=request.parent,
                    inputs=json_format.MessageToDict(request.object),
                    dependencies=list(request.dependencies),
                    ignore_changes=list(request.ignoreChanges),
                    delete_before_replace=request.deleteBeforeReplace,
                    retain_on_delete=request.retainOnDelete,
                )
            )
        return response

    def RegisterResourceOutputs(self, request):
        if "::pulumi:pulumi:Stack::" in request.urn:
            self.render.outputs = json_format.MessageToDict(request.outputs)
        return super().RegisterResourceOutputs(request)

    def Invoke(self, request):
        self.render.invokes.append(request.tok)
        return super().Invoke(request)


def stack_config_values(config: Mapping[str, Any]) -> dict[str, str]:
    """Stack config values as the Pulumi CLI hands them to a program: objects as JSON text."""
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in config.items()
    }


def _without_aliases(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
    """A stack transformation: the resource's options without `aliases` (which a render does not record)."""
    if not args.opts.aliases:
        return None
    opts = args.opts._copy()  # ResourceOptions' own shallow copy (merge cannot unset a list)
    opts.aliases = None
    return pulumi.ResourceTransformationResult(args.props, opts)


def render_program(
    program: Path | Callable[[], None],
    config: Mapping[str, Any],
    *,
    stack: str = "dev",
    mock: mocks.Mocks | None = None,
    aliases: bool = False,
) -> Render:
    """Run `program` (a Pulumi program file, or a function) with the stack `config` (full keys,
    e.g. `mlcanary:endpoint`) under mocks. `aliases`: let the SDK compute the resources' aliases
    (only to show that the render is the same without them).

    Raises whatever the program raises (e.g. `pulumi.RunError` for an invalid config).
    """
    render = Render()

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            monitor = RecordingMonitor(mock or AzureMocks(), render)
            settings.configure(
                mocks.MockSettings(
                    monitor=monitor,
                    monitor_features=set(monitor.GetDeploymentInfo(None).supportedFeatures),
                    engine=mocks.MockEngine(None),
                    project=PROJECT,
                    stack=stack,
                    dry_run=False,
                    organization="organization",
                    callbacks=None,
                )
            )
            set_all_config(stack_config_values(config))
            run_program = program if callable(program) else lambda: runpy.run_path(str(program), run_name="__main__")

            def body() -> None:
                if not aliases:
                    register_stack_transformation(_without_aliases)
                run_program()

            _sync_await(run_in_stack(body))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            pickle._Pickler._batch_setitems = _BATCH_SETITEMS

    contextvars.Context().run(run)
    return render
