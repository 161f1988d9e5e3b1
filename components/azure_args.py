"""Spec -> azure-native argument objects. Pure functions: no resources are registered here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pulumi
import pulumi_azure_native.machinelearningservices as ml

from mlcanary.components.durations import iso_seconds
from mlcanary.components.rules import AUTH_MODES
from mlcanary.components.spec import DeploymentSpec, EndpointSpec, InlineEnvironment, Probe
from mlcanary.components.user_files import read_conda_file


def workspace_id_of(endpoint_id: str) -> str:
    """The workspace ARM id of an online endpoint ARM id."""
    marker = "/onlineendpoints/"
    at = endpoint_id.lower().rfind(marker)
    if at < 0:
        raise ValueError(f"not an online endpoint ARM id: {endpoint_id!r}")
    return endpoint_id[:at]


def asset_id(reference: str, workspace_id: str, kind: str) -> str:
    """`azureml:name:version` -> the asset's ARM id in this workspace; registry URIs and ARM ids as they are."""
    if reference.startswith("azureml:") and not reference.startswith("azureml://"):
        name, version = reference.removeprefix("azureml:").rsplit(":", 1)
        return f"{workspace_id}/{kind}/{name}/versions/{version}"
    return reference


def endpoint_properties(spec: EndpointSpec) -> ml.OnlineEndpointPropertiesArgs:
    """The endpoint without traffic: traffic belongs to the EndpointTraffic resource."""
    return ml.OnlineEndpointPropertiesArgs(
        auth_mode=AUTH_MODES[spec.auth_mode],
        description=spec.description,
        compute=spec.compute,
    )


def endpoint_revision(spec: EndpointSpec) -> str:
    """Fingerprint of what the endpoint resource itself sends to Azure.

    Any change to it means the endpoint is PUT again, and a PUT without traffic may clear
    Azure's traffic map; feeding this into the traffic resource makes Pulumi re-apply traffic
    right after every such endpoint update.
    """
    sent = {
        "authMode": spec.auth_mode,
        "description": spec.description,
        "compute": spec.compute,
        "tags": spec.tags,
    }
    return hashlib.sha256(json.dumps(sent, sort_keys=True).encode()).hexdigest()[:16]


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


def deployment_properties(
    spec: DeploymentSpec,
    model_id: pulumi.Input[str] | None,
    code_id: pulumi.Input[str] | None,
    environment_id: pulumi.Input[str] | None,
):
    """ManagedOnlineDeploymentArgs or KubernetesOnlineDeploymentArgs for one deployment."""
    args_type = ml.ManagedOnlineDeploymentArgs if spec.type == "managed" else ml.KubernetesOnlineDeploymentArgs
    code_configuration = None
    if code_id is not None:
        code_configuration = ml.CodeConfigurationArgs(code_id=code_id, scoring_script=spec.scoring_script)
    return args_type(
        endpoint_compute_type="Managed" if spec.type == "managed" else "Kubernetes",
        model=model_id,
        code_configuration=code_configuration,
        environment_id=environment_id,
        environment_variables=spec.environment_variables or None,
        instance_type=spec.instance_type,
        request_settings=_request_settings(spec),
        liveness_probe=_probe(spec.liveness_probe),
        readiness_probe=_probe(spec.readiness_probe),
        app_insights_enabled=spec.app_insights_enabled,
        description=spec.description,
    )


def inline_environment_args(environment: InlineEnvironment) -> tuple[str, ml.EnvironmentVersionPropertiesArgs]:
    """A content-addressed version and the properties of an environment given inline."""
    conda = read_conda_file(Path(environment.conda_file)) if environment.conda_file else None
    version = hashlib.sha256(f"{environment.image}\n{conda or ''}".encode()).hexdigest()[:12]
    return version, ml.EnvironmentVersionPropertiesArgs(image=environment.image, conda_file=conda)
