"""What the local runtime is given to serve one deployment: the payload shape, from the spec.

Shared by `mlcanary local up` (mlcanary/local_runtime/apply.py), `mlcanary rollout` and the
local-target Pulumi resources (local_target.py), so all three ask the runtime for the same thing.
"""

from __future__ import annotations

from typing import Any

from mlcanary.components.spec import DeploymentSpec
from mlcanary.components.content_digest import content_digest

# payload key of a user path -> payload key of its digest (the runtime serves the pinned copy)
PINNED = {"code": "codeDigest", "model": "modelDigest"}


def deployment_payload(spec: DeploymentSpec) -> dict[str, Any]:
    """What the runtime needs to serve one deployment (environment and instance type do not apply).

    The code and model carry the digest Azure registers them under: the runtime serves that pinned
    version, and changed content is a changed deployment (mlcanary/local_runtime/snapshots.py).
    """
    payload: dict[str, Any] = {
        "code": spec.code,
        "scoringScript": spec.scoring_script,
        "model": spec.model,
        "instanceCount": spec.instance_count,
        "environmentVariables": dict(spec.environment_variables),
    }
    for key, digest_key in PINNED.items():
        if payload[key]:
            payload[digest_key] = content_digest(payload[key])
    settings = spec.request_settings
    for key, value in (("requestTimeoutMs", settings and settings.request_timeout_ms),
                       ("maxConcurrentRequestsPerInstance", settings and settings.max_concurrent_requests_per_instance),
                       ("maxQueueWaitMs", settings and settings.max_queue_wait_ms)):
        if value:
            payload[key] = value
    probe = spec.readiness_probe
    if probe:
        settings = (("initialDelay", probe.initial_delay), ("period", probe.period),
                    ("failureThreshold", probe.failure_threshold), ("timeout", probe.timeout))
        if any(value is not None for _, value in settings):
            payload["readinessProbe"] = {key: value for key, value in settings if value is not None}
    return payload
