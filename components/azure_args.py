"""Spec -> azure-native argument objects. Pure functions: no resources are registered here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pulumi
import pulumi_azure_native.machinelearningservices as ml

from mlcanary.components.durations import iso_seconds
from mlcanary.components.rules import AUTH_MODES, instance_type_on_azure
from mlcanary.components.spec import (DataCollector, DeploymentSpec, EndpointIdentity, EndpointSpec, InlineEnvironment,
                                      Probe)
from mlcanary.components.user_files import read_conda_file

# `azure-native:environment` (Pulumi's name of the cloud) -> azure-ai-ml's / Azure CLI's cloud name.
CLOUDS = {"public": "AzureCloud", "usgovernment": "AzureUSGovernment", "china": "AzureChinaCloud"}
CURATED_ENVIRONMENT_PREFIX = "azureml:AzureML-"


def cloud_name(azure_native_environment: str | None) -> str:
    """The cloud the stack deploys to (public unless `azure-native:environment` says otherwise)."""
    return CLOUDS.get((azure_native_environment or "public").lower(), "AzureCloud")


def asset_id(reference: str, workspace_id: str, kind: str) -> str:
    """An asset reference as `az ml` sends it (azure-ai-ml's OperationOrchestrator.get_asset_arm_id):
    `azureml:name:version` -> the asset's ARM id in this workspace, `azureml:/subscriptions/...` -> that
    ARM id; curated environments (`azureml:AzureML-<env>:<n>`), registry URIs and ARM ids unchanged."""
    if reference.startswith("azureml:/subscriptions/"):
        return reference.removeprefix("azureml:")
    if kind == "environments" and reference.startswith(CURATED_ENVIRONMENT_PREFIX):
        return reference
    if reference.startswith("azureml:") and not reference.startswith("azureml://"):
        name, version = reference.removeprefix("azureml:").rsplit(":", 1)
        return f"{workspace_id}/{kind}/{name}/versions/{version}"
    return reference


def compute_id(compute: str, workspace_id: str) -> str:
    """A Kubernetes endpoint's compute: `azureml:<name>` (or a bare name) -> the workspace compute's ARM id."""
    if compute.startswith("/subscriptions/"):
        return compute
    return f"{workspace_id}/computes/{compute.removeprefix('azureml:')}"


IDENTITY_TYPES = {"system_assigned": "SystemAssigned", "user_assigned": "UserAssigned", "none": "None"}


def endpoint_identity(identity: EndpointIdentity | None) -> ml.ManagedServiceIdentityArgs:
    """The endpoint's identity as azure-ai-ml sends it (`IdentityConfiguration._to_online_endpoint_rest_object`:
    the type in PascalCase, user-assigned ids as keys of `userAssignedIdentities`; SystemAssigned when the
    file has none). azure-native takes the ids as a list and sends the map."""
    if identity is None:
        return ml.ManagedServiceIdentityArgs(type="SystemAssigned")
    return ml.ManagedServiceIdentityArgs(type=IDENTITY_TYPES[identity.type],
                                         user_assigned_identities=list(identity.user_assigned_identities) or None)


def endpoint_properties(spec: EndpointSpec, workspace_id: pulumi.Input[str]) -> ml.OnlineEndpointPropertiesArgs:
    """The endpoint without traffic: traffic belongs to the EndpointTraffic resource."""
    compute = None
    if spec.compute is not None:
        compute = pulumi.Output.from_input(workspace_id).apply(lambda ws: compute_id(spec.compute, ws))
    return ml.OnlineEndpointPropertiesArgs(
        auth_mode=AUTH_MODES[spec.auth_mode],
        description=spec.description,
        compute=compute,
    )


def _probe(probe: Probe | None) -> ml.ProbeSettingsArgs | None:
    if probe is None:
        return None
    return ml.ProbeSettingsArgs(
        initial_delay=iso_seconds(probe.initial_delay) if probe.initial_delay is not None else None,
        period=iso_seconds(probe.period) if probe.period is not None else None,
        timeout=iso_seconds(probe.timeout) if probe.timeout is not None else None,
        success_threshold=probe.success_threshold,
        failure_threshold=probe.failure_threshold,
    )


def _scale_settings(spec: DeploymentSpec):
    """Kubernetes deployments always carry scale settings (Azure would otherwise autoscale them)."""
    settings = spec.scale_settings
    if settings is None:
        return ml.DefaultScaleSettingsArgs(scale_type="Default") if spec.type == "kubernetes" else None
    if settings.type == "default":
        return ml.DefaultScaleSettingsArgs(scale_type="Default")
    return ml.TargetUtilizationScaleSettingsArgs(
        scale_type="TargetUtilization",
        min_instances=settings.min_instances,
        max_instances=settings.max_instances,
        polling_interval=iso_seconds(settings.polling_interval) if settings.polling_interval is not None else None,
        target_utilization_percentage=settings.target_utilization_percentage,
    )


def _container_resources(spec: DeploymentSpec) -> ml.ContainerResourceRequirementsArgs | None:
    resources = spec.resources
    if resources is None:
        return None

    def settings(quantities):
        if quantities is None:
            return None
        return ml.ContainerResourceSettingsArgs(cpu=quantities.cpu, memory=quantities.memory, gpu=quantities.gpu)

    return ml.ContainerResourceRequirementsArgs(
        container_resource_requests=settings(resources.requests),
        container_resource_limits=settings(resources.limits),
    )


def _request_settings(spec: DeploymentSpec) -> ml.OnlineRequestSettingsArgs | None:
    settings = spec.request_settings
    if settings is None:
        return None
    ms_to_iso = lambda ms: iso_seconds(ms / 1000) if ms is not None else None  # noqa: E731
    return ml.OnlineRequestSettingsArgs(
        request_timeout=ms_to_iso(settings.request_timeout_ms),
        max_queue_wait=ms_to_iso(settings.max_queue_wait_ms),
        max_concurrent_requests_per_instance=settings.max_concurrent_requests_per_instance,
    )


def data_collector(collector: DataCollector | None,
                   data_ids: dict[str, pulumi.Input[str]]) -> ml.DataCollectorArgs | None:
    """The `dataCollector` body as azure-ai-ml's DataCollector._to_rest_object builds it: the mode spelled
    "enabled"/"disabled", the rolling rate as written (lowercase), the sampling rate copied into every
    collection, and each collection's data asset id (registered first, as `az ml` does)."""
    if collector is None:
        return None
    collections = {
        name: ml.CollectionArgs(
            data_collection_mode="enabled" if collection.enabled else "disabled",
            sampling_rate=collector.sampling_rate,
            data_id=data_ids.get(name),
            client_id=collection.client_id,
        )
        for name, collection in collector.collections.items()
    }
    logging = collector.request_logging
    return ml.DataCollectorArgs(
        collections=collections,
        rolling_rate=collector.rolling_rate,
        request_logging=ml.RequestLoggingArgs(capture_headers=logging.capture_headers) if logging else None,
    )


def deployment_properties(
    spec: DeploymentSpec,
    model_id: pulumi.Input[str] | None,
    code_id: pulumi.Input[str] | None,
    environment_id: pulumi.Input[str] | None,
    data_ids: dict[str, pulumi.Input[str]] | None = None,
):
    """ManagedOnlineDeploymentArgs or KubernetesOnlineDeploymentArgs for one deployment."""
    code_configuration = None
    if code_id is not None:
        code_configuration = ml.CodeConfigurationArgs(code_id=code_id, scoring_script=spec.scoring_script)
    if spec.type == "managed":
        args_type, extra = ml.ManagedOnlineDeploymentArgs, {
            "egress_public_network_access": spec.egress_public_network_access.capitalize()
            if spec.egress_public_network_access else None,
        }
    else:
        args_type, extra = ml.KubernetesOnlineDeploymentArgs, {
            "container_resource_requirements": _container_resources(spec),
        }
    return args_type(
        endpoint_compute_type="Managed" if spec.type == "managed" else "Kubernetes",
        scale_settings=_scale_settings(spec),
        model_mount_path=spec.model_mount_path,
        **extra,
        model=model_id,
        code_configuration=code_configuration,
        environment_id=environment_id,
        environment_variables=spec.environment_variables or None,
        instance_type=instance_type_on_azure(spec.type, spec.instance_type),
        request_settings=_request_settings(spec),
        liveness_probe=_probe(spec.liveness_probe),
        readiness_probe=_probe(spec.readiness_probe),
        app_insights_enabled=spec.app_insights_enabled,
        data_collector=data_collector(spec.data_collector, data_ids or {}),
        description=spec.description,
    )


def inline_environment_args(environment: InlineEnvironment) -> tuple[str, ml.EnvironmentVersionPropertiesArgs]:
    """The version and the properties of an environment given inline: its own version if it names
    one, else a content-addressed one."""
    conda = read_conda_file(Path(environment.conda_file)) if environment.conda_file else None
    version = environment.version or hashlib.sha256(f"{environment.image}\n{conda or ''}".encode()).hexdigest()[:12]
    return version, ml.EnvironmentVersionPropertiesArgs(
        image=environment.image, conda_file=conda, description=environment.description
    )
