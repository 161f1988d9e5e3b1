"""The runtime's own files, state.json and workers.json, and the deployment specs the control plane
is sent: read as untrusted input, with the project's one copy of each rule.

A state file is JSON the runtime wrote, but anyone who can edit it (or a bug, or a half-restored
backup) can put anything there: a port of 99999, 0 or 51 instances, traffic of 250 and -150 or to a
deployment that does not exist, an endpoint named `../../x`, an integer where a string goes. Each
is refused at start with the file and the field, by the same rules as a stage file
(mlcanary.components.rules, the probe and request bounds of components/spec.py), and the file is kept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from mlcanary.components import rules
from mlcanary.components.rules import Problem
from mlcanary.components.spec import PROBE_BOUNDS, REQUEST_SETTING_BOUNDS, bounded_settings_problems
from mlcanary.components.user_files import MIB, UnusableFile, read_bytes

STATE_FILE_LIMIT = 16 * MIB  # a state of 20 deployments on many endpoints is tens of KB
WORKERS_FILE_LIMIT = 1 * MIB
MAX_ENDPOINTS = 100
RUNTIME_PROBE_KEYS = ("initialDelay", "period", "failureThreshold", "timeout")
_DIGEST = r"[0-9a-f]{16,128}"
_KEY = re.compile(r"[A-Za-z0-9_\-]{16,256}")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProbeRecord(_Record):
    initialDelay: StrictInt | None = None
    period: StrictInt | None = None
    failureThreshold: StrictInt | None = None
    timeout: StrictInt | None = None


class DeploymentRecord(_Record):
    """What the runtime serves one deployment from (apply.deployment_payload builds it)."""

    code: StrictStr
    scoringScript: StrictStr
    model: StrictStr | None = None
    instanceCount: StrictInt
    environmentVariables: dict[StrictStr, StrictStr] = {}
    codeDigest: str | None = Field(None, pattern=_DIGEST)
    modelDigest: str | None = Field(None, pattern=_DIGEST)
    requestTimeoutMs: StrictInt | None = None
    maxConcurrentRequestsPerInstance: StrictInt | None = None
    maxQueueWaitMs: StrictInt | None = None
    readinessProbe: ProbeRecord | None = None


class Keys(_Record):
    primary: StrictStr
    secondary: StrictStr


class EndpointRecord(_Record):
    authMode: StrictStr
    keys: Keys
    port: StrictInt
    deployments: dict[str, DeploymentRecord]
    traffic: dict[str, StrictInt]
    mirrorTraffic: dict[str, StrictInt]


class StateRecord(_Record):
    endpoints: dict[str, EndpointRecord]


class WorkerEntry(_Record):
    pid: StrictInt = Field(ge=2, le=2**22)
    started: StrictInt = Field(ge=0)  # /proc/<pid>/stat start time, clock ticks after boot
    socket: StrictStr


class WorkersRecord(_Record):
    socketDir: StrictStr
    workers: list[WorkerEntry] = Field(max_length=100_000)


class UnusableRecord(ValueError):
    """The file cannot be used; the message names the file and the first problems, with their fields."""


def _pydantic_problems(err: ValidationError) -> list[Problem]:
    problems = []
    for error in err.errors():
        field = ".".join(rules.shown_text(str(part)) for part in error["loc"])
        got = rules.shown(error.get("input"))
        if error["type"] == "extra_forbidden":
            problems.append(Problem(field, "unknown key"))
        elif error["type"] == "missing":
            problems.append(Problem(field, "required"))
        else:
            problems.append(Problem(field, f"{error['msg'].lower()}, got {got}"))
    return problems


def deployment_problems(field: str, name: object, spec: Any) -> list[Problem]:
    """The rules a deployment spec (a PUT body, or a record in state.json) must keep, with fields under `field`."""
    problems = rules.name_problems(rules.join(field) or "name", name, "deployment name")
    try:
        record = DeploymentRecord.model_validate(spec)
    except ValidationError as err:
        return problems + [Problem(rules.join(field, p.field), p.message) for p in _pydantic_problems(err)]
    problems += rules.instance_count_problems(rules.join(field, "instanceCount"), record.instanceCount)
    if record.requestTimeoutMs is not None:
        problems += rules.request_timeout_problems(rules.join(field, "requestTimeoutMs"), record.requestTimeoutMs)
    problems += bounded_settings_problems(field, spec, REQUEST_SETTING_BOUNDS)
    probe = spec.get("readinessProbe") or {}
    problems += bounded_settings_problems(rules.join(field, "readinessProbe"), probe,
                                          {k: PROBE_BOUNDS[k] for k in RUNTIME_PROBE_KEYS})
    problems += rules.environment_variable_problems(rules.join(field, "environmentVariables"),
                                                    record.environmentVariables)
    return problems


def state_problems(state: Any) -> list[Problem]:
    try:
        record = StateRecord.model_validate(state)
    except ValidationError as err:
        return _pydantic_problems(err)
    problems = []
    if len(record.endpoints) > MAX_ENDPOINTS:
        problems.append(Problem("endpoints", f"at most {MAX_ENDPOINTS} endpoints, got {len(record.endpoints)}"))
    for name, endpoint in record.endpoints.items():
        field = rules.join("endpoints", name)
        problems += rules.name_problems(field, name, "endpoint name")
        problems += rules.auth_mode_problems(rules.join(field, "authMode"), endpoint.authMode)
        if not 1 <= endpoint.port <= 65535:
            problems.append(Problem(rules.join(field, "port"), f"a TCP port is 1 to 65535, got {endpoint.port}"))
        for which in ("primary", "secondary"):
            if not _KEY.fullmatch(getattr(endpoint.keys, which)):
                problems.append(Problem(rules.join(field, "keys", which),
                                        "a key is 16-256 letters, digits, '-' and '_' (the runtime makes them so)"))
        problems += rules.deployment_count_problems(rules.join(field, "deployments"), len(endpoint.deployments))
        raw_deployments = state["endpoints"][name]["deployments"]
        for dep_name in endpoint.deployments:
            problems += deployment_problems(rules.join(field, "deployments", dep_name), dep_name,
                                            raw_deployments[dep_name])
        problems += rules.traffic_problems(endpoint.traffic, endpoint.mirrorTraffic, endpoint.deployments, field=field)
    return problems


def read_json_record(path: Path, what: str, limit: int) -> Any:
    """The JSON document in `path`: a regular file (no FIFO, no device) of at most `limit` bytes.
    Raises UnusableRecord naming the file; FileNotFoundError if there is none."""
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(path)
    try:
        data = read_bytes(path, what, limit, f"a {what} is a few KB")
    except UnusableFile as err:
        raise UnusableRecord(f"{what} {err}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UnusableRecord(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise UnusableRecord(f"{what} {path} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise UnusableRecord(f"{what} {path} is nested too deeply to be a runtime record") from None


def refusal(what: str, path: Path, problems: list[Problem], most: int = 5) -> str:
    shown = "; ".join(str(p) for p in problems[:most])
    more = f" (and {len(problems) - most} more)" if len(problems) > most else ""
    return f"{what} {path} is not a runtime state: {shown}{more}"
