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

from mlcanary.components.rules import shown, shown_text
from mlcanary.components.user_files import UnusableFile, read_text

LEVELS = [level.value for level in EnforcementLevel]
MAX_DEPTH = 50  # a policy config is 2-3 levels deep


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
            f"{path}: unknown policy {', '.join(map(shown, unknown))}; policies: {', '.join(defaults)}"
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
                f"{path}: {name}: must be an enforcement level ({', '.join(LEVELS)}) or an object, got {shown(entry)}"
            )
        settings[name] = PolicySettings(level, properties)
    return settings


def _read(path: Path) -> dict[str, Any]:
    try:
        text = read_text(path, "policy config file", typical="a policy config is a few KB")
    except UnusableFile as err:
        raise PolicyConfigError(str(err)) from None
    try:
        document = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as err:
        raise PolicyConfigError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except _DuplicateKey as err:
        raise PolicyConfigError(f"{path}: duplicate key {shown(err.args[0])}; a key may appear once in an object") from None
    except RecursionError:
        raise PolicyConfigError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    if _depth(document) > MAX_DEPTH:
        raise PolicyConfigError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(document, dict):
        raise PolicyConfigError(f"{path}: must be a JSON object keyed by policy name")
    return document


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json keeps the last of duplicate keys silently; a policy config has each key once."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKey(key)
        document[key] = value
    return document


def _depth(value: Any) -> int:
    """How deeply `value` nests (a scalar is 0), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            pending += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            pending += [(v, depth + 1) for v in item]
    return deepest


def _level(value: Any, where: str) -> EnforcementLevel:
    if value not in LEVELS:
        raise PolicyConfigError(f"{where}: enforcement level must be one of {', '.join(LEVELS)}, got {shown(value)}")
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
        path = ".".join(shown_text(str(p)) for p in error.absolute_path)
        message = error.message
        if len(message) > 200:  # jsonschema's message repeats the whole value: say it again, cut short
            message = f"{shown(error.instance)} breaks the schema's {error.validator!r} rule ({shown(error.validator_value)})"
        if error.validator == "additionalProperties":
            if len(error.message) > 200:
                unknown = sorted(set(properties) - set(json_schema["properties"]))
                message = f"unknown knob {', '.join(map(shown, unknown))}"
            raise PolicyConfigError(f"{where}: {message}; allowed: {allowed}")
        raise PolicyConfigError(f"{where}.{path}: {message}" if path else f"{where}: {message}")
