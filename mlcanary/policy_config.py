"""`--policy-pack-config FILE`: the JSON format `pulumi preview --policy-pack-config` takes.

    {"all": "advisory",
     "instance-count-in-range": {"enforcementLevel": "mandatory", "minInstanceCount": 2},
     "dark-before-live": "mandatory"}

A policy's value is an enforcement level, or an object with an optional `enforcementLevel` and the
policy's knobs, which are validated against the policy's own `PolicyConfigSchema`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulumi_policy import EnforcementLevel, PolicyConfigSchema

LEVELS = [level.value for level in EnforcementLevel]


class PolicyConfigError(ValueError):
    """The policy config file is unreadable or invalid; the message names the file and the field."""


@dataclass(frozen=True)
class PolicySettings:
    level: EnforcementLevel
    properties: dict[str, Any] = field(default_factory=dict)


def load_policy_config(
    path: Path | None,
    defaults: Mapping[str, tuple[EnforcementLevel, PolicyConfigSchema | None]],
) -> dict[str, PolicySettings]:
    """Effective settings of every policy: its default level, overridden by `all`, then by its own entry.

    `defaults` maps each policy name to its default enforcement level and config schema.
    """
    return policy_settings(_read(path) if path else {}, defaults, str(path))


def policy_settings(
    raw: Mapping[str, Any],
    defaults: Mapping[str, tuple[EnforcementLevel, PolicyConfigSchema | None]],
    path: str = "policy config",
) -> dict[str, PolicySettings]:
    """Effective settings from an already parsed policy config document."""
    unknown = sorted(set(raw) - set(defaults) - {"all"})
    if unknown:
        raise PolicyConfigError(
            f"{path}: unknown policy {', '.join(map(repr, unknown))}; policies: {', '.join(defaults)}"
        )
    all_level = _level(raw["all"], f"{path}: all") if "all" in raw else None
    settings = {}
    for name, (default_level, schema) in defaults.items():
        level, properties = all_level or default_level, {}
        entry = raw.get(name)
        if isinstance(entry, str):
            level = _level(entry, f"{path}: {name}")
        elif isinstance(entry, dict):
            entry = dict(entry)
            if "enforcementLevel" in entry:
                level = _level(entry.pop("enforcementLevel"), f"{path}: {name}.enforcementLevel")
            _validate(entry, schema, f"{path}: {name}")
            properties = entry
        elif entry is not None:
            raise PolicyConfigError(
                f"{path}: {name}: must be an enforcement level ({', '.join(LEVELS)}) or an object, got {entry!r}"
            )
        settings[name] = PolicySettings(level, properties)
    return settings


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyConfigError(f"{path}: policy config file not found") from None
    except OSError as err:
        raise PolicyConfigError(f"{path}: cannot read: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise PolicyConfigError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(document, dict):
        raise PolicyConfigError(f"{path}: must be a JSON object keyed by policy name")
    return document


def _level(value: Any, where: str) -> EnforcementLevel:
    if value not in LEVELS:
        raise PolicyConfigError(f"{where}: enforcement level must be one of {', '.join(LEVELS)}, got {value!r}")
    return EnforcementLevel(value)


def _validate(properties: dict[str, Any], schema: PolicyConfigSchema | None, where: str) -> None:
    import jsonschema

    json_schema = {
        "type": "object",
        "properties": schema.properties if schema else {},
        "required": (schema.required or []) if schema else [],
        "additionalProperties": False,
    }
    allowed = ", ".join(["enforcementLevel", *json_schema["properties"]])
    for error in jsonschema.Draft7Validator(json_schema).iter_errors(properties):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties":
            raise PolicyConfigError(f"{where}: {error.message}; allowed: {allowed}")
        raise PolicyConfigError(f"{where}.{path}: {error.message}" if path else f"{where}: {error.message}")
