"""`OnlineEndpoint`: one Azure ML online endpoint, its deployments and its traffic, as one component.

On the local target the same three kinds of children live in the local runtime instead.

Children, in the order Azure needs them:
  1. the azure-native OnlineEndpoint, which never carries traffic (changes to it are ignored);
  2. one azure-native OnlineDeployment per deployment, instance count in `sku.capacity` (local
     code and model folders are uploaded and registered first, see uploads.py);
  3. EndpointTraffic, depending on every deployment, which sets live and mirror traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pulumi
import pulumi_azure_native.machinelearningservices as ml

from mlcanary.components import azure_args, uploads
from mlcanary.components.local_payload import deployment_payload
from mlcanary.components.spec import DeploymentSpec, EndpointSpec, InlineEnvironment, is_asset_reference
from mlcanary.components.traffic import EndpointTraffic

if TYPE_CHECKING:
    from mlcanary.components.local_target import LocalRuntime

COMPONENT_TYPE = "mlcanary:endpoint:OnlineEndpoint"
# The endpoint resource must not fight EndpointTraffic over these (engine property paths).
TRAFFIC_PROPERTIES = ["properties.traffic", "properties.mirrorTraffic"]


class OnlineEndpoint(pulumi.ComponentResource):
    scoring_uri: pulumi.Output[str]
    swagger_uri: pulumi.Output[str]
    deployment_names: pulumi.Output[list[str]]
    traffic: pulumi.Output[dict]
    mirror_traffic: pulumi.Output[dict]
    primary_key: pulumi.Output[str | None]
    secondary_key: pulumi.Output[str | None]

    def __init__(
        self,
        name: str,
        spec: EndpointSpec,
        target: str = "azure",
        opts: pulumi.ResourceOptions | None = None,
        local_runtime: LocalRuntime | None = None,
    ):
        """`local_runtime`: how the local target reaches the runtime (needed when target is local;
        mlcanary.local_runtime.pulumi_access.RuntimeAccess)."""
        super().__init__(COMPONENT_TYPE, name, None, opts)
        if target == "local":
            if local_runtime is None:
                raise ValueError("OnlineEndpoint: the local target needs local_runtime "
                                 "(mlcanary.local_runtime.pulumi_access.RuntimeAccess())")
            self._local(name, spec, local_runtime)
        else:
            self._azure(name, spec)
        self.register_outputs(
            {
                "scoring_uri": self.scoring_uri,
                "swagger_uri": self.swagger_uri,
                "deployment_names": self.deployment_names,
                "traffic": self.traffic,
                "mirror_traffic": self.mirror_traffic,
                "primary_key": self.primary_key,
                "secondary_key": self.secondary_key,
            }
        )

    def _azure(self, name: str, spec: EndpointSpec) -> None:
        where = {"resource_group_name": spec.resource_group, "workspace_name": spec.workspace}
        # Names are fixed (they are the Azure names), so a replacement must delete first:
        # create-then-delete on the same name would delete the resource just written.
        child = pulumi.ResourceOptions(parent=self, delete_before_replace=True)
        # Azure requires a location on the endpoint and its deployments; `az ml` sends the
        # workspace's region (not the provider's default location or the resource group's).
        workspace = ml.get_workspace_output(**where)
        workspace_id, location = workspace.id, workspace.location
        cloud = azure_args.cloud_name(pulumi.Config("azure-native").get("environment"))
        # Asset versions are never deleted by a content change: a rollback needs the previous one.
        asset_options = pulumi.ResourceOptions(parent=self, retain_on_delete=True)

        endpoint = ml.OnlineEndpoint(
            name,
            endpoint_name=spec.name,
            location=location,
            properties=azure_args.endpoint_properties(spec, workspace_id),
            identity=azure_args.endpoint_identity(spec.identity),
            tags=spec.tags or None,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(ignore_changes=TRAFFIC_PROPERTIES)),
            **where,
        )

        def asset(kind: str, reference: str | None, deployment: DeploymentSpec, deployment_name: str):
            """An asset's ARM id: references resolve in this workspace, local paths are registered
            by azure-ai-ml (uploads.WorkspaceAsset)."""
            if reference is None:
                return None
            if is_asset_reference(reference):
                return workspace_id.apply(lambda ws: azure_args.asset_id(reference, ws, f"{kind}s"))
            model = kind == "model"
            return uploads.WorkspaceAsset(
                f"{name}-{deployment_name}-{kind}",
                workspace_id=workspace_id, kind=kind, path=reference, cloud=cloud,
                model_type=deployment.model_type if model else None,
                asset_name=deployment.model_name if model else None,
                version=deployment.model_version if model else None,
                description=deployment.model_description if model else None,
                opts=asset_options,
            ).asset_id

        def collection_data_ids(deployment: DeploymentSpec, deployment_name: str) -> dict[str, pulumi.Output[str]]:
            """Each data collector collection's data asset, registered by azure-ai-ml as `az ml` does."""
            collector = deployment.data_collector
            return {
                collection: uploads.CollectionDataAsset(
                    f"{name}-{deployment_name}-data-{collection}",
                    workspace_id=workspace_id, endpoint_name=spec.name, deployment_name=deployment_name,
                    collection=collection, asset_name=settings.data.name if settings.data else None,
                    path=settings.data.path if settings.data else None,
                    version=settings.data.version if settings.data else None, cloud=cloud, opts=asset_options,
                ).data_id
                for collection, settings in (collector.collections.items() if collector else ())
            }

        deployments = []
        for deployment_name, deployment in spec.deployments.items():
            if isinstance(deployment.environment, InlineEnvironment):
                version, properties = azure_args.inline_environment_args(deployment.environment)
                environment_id = ml.EnvironmentVersion(
                    f"{name}-{deployment_name}-env",
                    name=deployment.environment.name or f"{spec.name}-{deployment_name}",
                    version=version,
                    properties=properties,
                    opts=asset_options,
                    **where,
                ).id
            else:
                environment_id = asset("environment", deployment.environment, deployment, deployment_name)
            properties = azure_args.deployment_properties(
                deployment,
                asset("model", deployment.model, deployment, deployment_name),
                asset("code", deployment.code, deployment, deployment_name),
                environment_id,
                collection_data_ids(deployment, deployment_name),
            )
            deployments.append(
                ml.OnlineDeployment(
                    f"{name}-{deployment_name}",
                    # The plain name (known at preview, unlike endpoint.name) lets policies group
                    # deployments by endpoint; depends_on keeps the creation order.
                    endpoint_name=spec.name,
                    deployment_name=deployment_name,
                    location=location,
                    properties=properties,
                    sku=ml.SkuArgs(name="Default", capacity=deployment.instance_count),
                    tags=deployment.tags or None,
                    opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[endpoint])),
                    **where,
                )
            )

        traffic = EndpointTraffic(
            f"{name}-traffic",
            endpoint_id=endpoint.id,
            endpoint_name=spec.name,
            traffic=spec.live_traffic,
            mirror_traffic=dict(spec.mirror_traffic),
            deployments=list(spec.deployments),
            # Any write of the endpoint (ours, a provider default, a fix of drift) re-applies traffic.
            endpoint_modified_at=endpoint.system_data.apply(lambda data: getattr(data, "last_modified_at", None)),
            cloud=cloud,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[endpoint, *deployments]),
        )

        self.scoring_uri = endpoint.properties.scoring_uri
        self.swagger_uri = endpoint.properties.swagger_uri
        self.deployment_names = pulumi.Output.all(*[d.name for d in deployments]).apply(list)
        self.traffic = traffic.traffic
        self.mirror_traffic = traffic.mirror_traffic
        self.primary_key, self.secondary_key = _keys(spec, endpoint)

    def _local(self, name: str, spec: EndpointSpec, runtime: LocalRuntime) -> None:
        """The same tree on the local runtime (components/local_target.py)."""
        from mlcanary.components import local_target

        root = runtime.default_state_dir()
        endpoint = local_target.LocalOnlineEndpoint(
            name, runtime=runtime, endpoint_name=spec.name, auth_mode=spec.auth_mode, state_dir=root,
            opts=pulumi.ResourceOptions(parent=self),
        )
        deployments = [
            local_target.LocalOnlineDeployment(
                f"{name}-{deployment_name}", runtime=runtime, endpoint_name=spec.name, deployment_name=deployment_name,
                spec=deployment_payload(deployment), state_dir=root,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[endpoint]),
            )
            for deployment_name, deployment in spec.deployments.items()
        ]
        traffic = local_target.LocalEndpointTraffic(
            f"{name}-traffic", runtime=runtime, endpoint_name=spec.name, traffic=spec.live_traffic,
            mirror_traffic=dict(spec.mirror_traffic), deployments=list(spec.deployments), state_dir=root,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[endpoint, *deployments]),
        )
        self.scoring_uri = endpoint.scoringUri
        self.swagger_uri = pulumi.Output.from_input(None)
        self.deployment_names = pulumi.Output.from_input(list(spec.deployments))
        self.traffic = traffic.traffic
        self.mirror_traffic = traffic.mirror_traffic
        self.primary_key = pulumi.Output.secret(endpoint.primaryKey)
        self.secondary_key = pulumi.Output.secret(endpoint.secondaryKey)

def _keys(spec: EndpointSpec, endpoint: ml.OnlineEndpoint) -> tuple[pulumi.Output, pulumi.Output]:
    """Endpoint keys as secrets; token-auth endpoints have none."""
    if spec.auth_mode != "key":
        return pulumi.Output.secret(None), pulumi.Output.secret(None)
    keys = ml.list_online_endpoint_keys_output(
        endpoint_name=endpoint.name,
        resource_group_name=spec.resource_group,
        workspace_name=spec.workspace,
    )
    return pulumi.Output.secret(keys.primary_key), pulumi.Output.secret(keys.secondary_key)
