"""Azure ML CLI v2 online deployment YAML (`az ml online-deployment create -f FILE`) -> spec keys.

Users already keep their deployments in these files; a stack config may point at one with
`file:`. This module only translates the file's snake_case keys into the spec's camelCase shape;
paths stay as written (the spec resolves them from the file's folder) and the spec validates.
Keys the CLI schema has but this project does not model are refused, never silently dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlcanary.components.rules import Problem, shown, shown_text
from mlcanary.components.safe_yaml import load_yaml_file
from mlcanary.components.user_files import UnusableFile

# CLI key -> spec key, for keys whose values need no reshaping.
_PLAIN_KEYS = {
    "name": "name",
    "endpoint_name": "endpointName",
    "type": "type",
    "description": "description",
    "tags": "tags",
    "instance_type": "instanceType",
    "instance_count": "instanceCount",
    "environment_variables": "environmentVariables",
    "app_insights_enabled": "appInsightsEnabled",
    "egress_public_network_access": "egressPublicNetworkAccess",
    "model_mount_path": "modelMountPath",
}
_NESTED_KEYS = {
    "request_settings": (
        "requestSettings",
        {
            "request_timeout_ms": "requestTimeoutMs",
            "max_concurrent_requests_per_instance": "maxConcurrentRequestsPerInstance",
            "max_queue_wait_ms": "maxQueueWaitMs",
        },
    ),
    "liveness_probe": ("livenessProbe", None),
    "readiness_probe": ("readinessProbe", None),
    "scale_settings": (
        "scaleSettings",
        {
            "type": "type",
            "min_instances": "minInstances",
            "max_instances": "maxInstances",
            "polling_interval": "pollingInterval",
            "target_utilization_percentage": "targetUtilizationPercentage",
        },
    ),
}
_PROBE_KEYS = {
    "initial_delay": "initialDelay",
    "period": "period",
    "timeout": "timeout",
    "success_threshold": "successThreshold",
    "failure_threshold": "failureThreshold",
}
# Kubernetes container requests/limits: the CLI's quantity names -> the spec's.
_QUANTITY_KEYS = {"cpu": "cpu", "memory": "memory", "nvidia.com/gpu": "gpu"}
_INLINE_MODEL_KEYS = {"path": "model", "type": "modelType", "name": "modelName", "version": "modelVersion",
                      "description": "modelDescription"}
_SPECIAL_KEYS = ("$schema", "model", "code_configuration", "environment", "resources", "data_collector")
# data_collector: azure-ai-ml's DataCollectorSchema / DeploymentCollectionSchema / DataAssetSchema keys.
_COLLECTOR_KEYS = {"collections": "collections", "rolling_rate": "rollingRate", "sampling_rate": "samplingRate",
                   "request_logging": "requestLogging"}
_COLLECTION_KEYS = {"enabled": "enabled", "client_id": "clientId", "data": "data"}
_COLLECTION_DATA_KEYS = {"name": "name", "path": "path", "version": "version"}
SUPPORTED_KEYS = tuple(_PLAIN_KEYS) + tuple(_NESTED_KEYS) + _SPECIAL_KEYS


def read_deployment_yaml(path: Path, field: str) -> tuple[dict[str, Any], list[Problem]]:
    """The deployment in `path` as spec keys, or the problems that stop it being read."""
    document, problems = _read_yaml(path, field)
    if problems:
        return {}, problems
    spec = _translate(document, f"{field} ({path})", problems)
    return spec, problems


def _read_yaml(path: Path, field: str) -> tuple[dict[str, Any], list[Problem]]:
    """The file's top-level mapping (the one place this module reads YAML)."""
    try:
        document = load_yaml_file(path, "deployment YAML file", "a deployment YAML file is a few KB")
    except UnusableFile as err:
        return {}, [Problem(field, str(err))]
    if not isinstance(document, dict):
        return {}, [Problem(field, f"{path} must hold a mapping of deployment keys, got {type(document).__name__}")]
    return document, []


def _translate(document: dict[str, Any], where: str, problems: list[Problem]) -> dict[str, Any]:
    spec: dict[str, Any] = {}

    def problem(key: str, message: str) -> None:
        problems.append(Problem(f"{where} {shown_text(str(key))}", message))

    for key, value in document.items():
        if key in _PLAIN_KEYS:
            spec[_PLAIN_KEYS[key]] = value
        elif key in _NESTED_KEYS:
            target, names = _NESTED_KEYS[key]
            spec[target] = _rename(value, names or _PROBE_KEYS, key, problem)
        elif key == "model":
            spec.update(_model(value, key, problem))
        elif key == "resources":
            spec["resources"] = _resources(value, key, problem)
        elif key == "code_configuration":
            if not isinstance(value, dict):
                problem(key, "must be a mapping with code and scoring_script")
                continue
            unknown = set(value) - {"code", "scoring_script"}
            if unknown:
                problem(key, f"unknown keys {shown(sorted(unknown, key=str))}; allowed: code, scoring_script")
            if "code" in value:
                spec["code"] = value["code"]
            if "scoring_script" in value:
                spec["scoringScript"] = value["scoring_script"]
        elif key == "environment":
            spec["environment"] = _environment(value, key, problem)
        elif key == "data_collector":
            spec["dataCollector"] = _data_collector(value, key, problem)
        elif key != "$schema":
            problem(key, f"key not supported by mlcanary; supported: {', '.join(SUPPORTED_KEYS)}")
    return spec


def _rename(value: Any, names: dict[str, str], key: str, problem) -> Any:
    if not isinstance(value, dict):
        problem(key, f"must be a mapping, got {shown(value)}")
        return value
    renamed = {}
    for inner, inner_value in value.items():
        if inner not in names:
            problem(f"{key}.{shown_text(str(inner))}", f"unknown key; allowed: {', '.join(names)}")
        else:
            renamed[names[inner]] = inner_value
    return renamed


def _model(value: Any, key: str, problem) -> dict[str, Any]:
    """`model: azureml:name:1`, or an inline model: `path` (the local model folder or file), `type`,
    and the `name` / `version` / `description` it is registered with."""
    if isinstance(value, str):
        return {"model": value}
    if not isinstance(value, dict):
        problem(key, f"must be an asset reference or an inline model mapping, got {shown(value)}")
        return {}
    unknown = sorted(set(value) - set(_INLINE_MODEL_KEYS))
    if unknown:
        problem(key, f"unknown keys {unknown} in the inline model; allowed: {', '.join(_INLINE_MODEL_KEYS)}")
    if "path" not in value:
        if "name" in value and "version" in value and set(value) <= {"name", "version"}:
            return {"model": f"azureml:{value['name']}:{value['version']}"}
        problem(key, "an inline model needs a path (local model folder or file), or only a name and version")
        return {}
    return {_INLINE_MODEL_KEYS[k]: v if k != "version" or not isinstance(v, int) else str(v)
            for k, v in value.items() if k in _INLINE_MODEL_KEYS}


def _resources(value: Any, key: str, problem) -> Any:
    """Kubernetes `resources: {requests: {cpu, memory, nvidia.com/gpu}, limits: {...}}`."""
    if not isinstance(value, dict):
        problem(key, f"must be a mapping with requests and/or limits, got {shown(value)}")
        return value
    resources = {}
    for part, quantities in value.items():
        if part not in ("requests", "limits"):
            problem(f"{key}.{part}", "unknown key; allowed: requests, limits")
            continue
        if not isinstance(quantities, dict):
            problem(f"{key}.{part}", f"must be a mapping of quantities, got {shown(quantities)}")
            continue
        resources[part] = {}
        for name, quantity in quantities.items():
            if name not in _QUANTITY_KEYS:
                problem(f"{key}.{part}.{name}", f"unknown resource; allowed: {', '.join(_QUANTITY_KEYS)}")
            else:
                resources[part][_QUANTITY_KEYS[name]] = str(quantity) if isinstance(quantity, (int, float)) else quantity
    return resources


def _environment(value: Any, key: str, problem) -> Any:
    """`environment: azureml:env:1`, or an inline environment with `image` and optional `conda_file`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "image" not in value:
            problem(key, "an inline environment needs an image (building from a Docker context is not supported)")
            return None
        unknown = set(value) - {"image", "conda_file", "name", "version", "description"}
        if unknown:
            problem(key, f"unknown keys {shown(sorted(unknown, key=str))}; allowed: image, conda_file, name, version, description")
        inline = {"image": value["image"]}
        if "conda_file" in value:
            inline["condaFile"] = value["conda_file"]
        for name in ("name", "version", "description"):
            if name in value:
                inline[name] = str(value[name]) if name == "version" and isinstance(value[name], int) else value[name]
        return inline
    problem(key, f"must be an asset reference or an inline environment mapping, got {shown(value)}")
    return None


def _data_collector(value: Any, key: str, problem) -> Any:
    """`data_collector: {collections: {<name>: {enabled, client_id, data}}, rolling_rate, sampling_rate,
    request_logging: {capture_headers}}`; the spec checks the values."""
    collector = _rename(value, _COLLECTOR_KEYS, key, problem)
    if not isinstance(collector, dict):
        return collector
    if isinstance(collector.get("requestLogging"), dict):
        collector["requestLogging"] = _rename(collector["requestLogging"], {"capture_headers": "captureHeaders"},
                                              f"{key}.request_logging", problem)
    collections = collector.get("collections")
    if isinstance(collections, dict):
        renamed = {}
        for name, collection in collections.items():
            where = f"{key}.collections.{shown_text(str(name))}"
            renamed[name] = _rename(collection, _COLLECTION_KEYS, where, problem)
            if not isinstance(renamed[name], dict):
                continue
            if isinstance(renamed[name].get("enabled"), bool):  # azure-ai-ml's schema takes the text only
                problem(f"{where}.enabled", f"must be the text 'true' or 'false' (quoted, as azure-ai-ml reads it), "
                        f"got the YAML boolean {str(renamed[name]['enabled']).lower()}")
            if "data" in renamed[name]:
                if isinstance(renamed[name]["data"], dict):
                    renamed[name]["data"] = _rename(renamed[name]["data"], _COLLECTION_DATA_KEYS, f"{where}.data", problem)
                else:  # az ml's create reads data.name, data.path and data.version (_register_collection_data_assets)
                    problem(f"{where}.data", f"must be a mapping with name, path and/or version, got "
                            f"{shown(renamed[name]['data'])}")
        collector["collections"] = renamed
    return collector
