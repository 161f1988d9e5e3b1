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
}
_PROBE_KEYS = {
    "initial_delay": "initialDelay",
    "period": "period",
    "timeout": "timeout",
    "success_threshold": "successThreshold",
    "failure_threshold": "failureThreshold",
}
_SPECIAL_KEYS = ("$schema", "model", "code_configuration", "environment")
SUPPORTED_KEYS = tuple(_PLAIN_KEYS) + tuple(_NESTED_KEYS) + _SPECIAL_KEYS


def read_deployment_yaml(path: Path, field: str) -> tuple[dict[str, Any], list[Problem]]:
    """The deployment in `path` as spec keys, or the problems that stop it being read."""
    try:
        document = load_yaml_file(path, "deployment YAML file", "a deployment YAML file is a few KB")
    except UnusableFile as err:
        return {}, [Problem(field, str(err))]
    if not isinstance(document, dict):
        return {}, [Problem(field, f"{path} must hold a mapping of deployment keys, got {type(document).__name__}")]
    problems: list[Problem] = []
    spec = _translate(document, f"{field} ({path})", problems)
    return spec, problems


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
            spec["model"] = _model(value, key, problem)
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


def _model(value: Any, key: str, problem) -> Any:
    """`model: azureml:name:1`, or an inline model whose `path` is the local model folder or file."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "path" in value:
            return value["path"]
        if "name" in value and "version" in value:
            return f"azureml:{value['name']}:{value['version']}"
        problem(key, "an inline model needs a path (local model folder or file), or a name and version")
        return None
    problem(key, f"must be an asset reference or an inline model mapping, got {shown(value)}")
    return None


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
        return inline
    problem(key, f"must be an asset reference or an inline environment mapping, got {shown(value)}")
    return None
