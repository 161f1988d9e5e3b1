"""Request bodies judged by Azure's own REST models (azure-ai-ml's generated `arm_ml_service` models).

`rest_problems(OnlineEndpoint, body)` lists what the Azure ML REST API would refuse in `body`:
missing required properties (e.g. `location`), values outside a known enum, unknown discriminator
values and properties the model does not have. Required-ness comes from the models' type hints
(not Optional), enum values from their enum types, polymorphic bodies (deployment properties by
`endpointComputeType`) from the models' discriminator mappings.
"""

from __future__ import annotations

import enum
import typing
from typing import Any

from azure.ai.ml._restclient.arm_ml_service import models

from azure.ai.ml._restclient.arm_ml_service.models import _enums, _models

# The generated modules name each other `_models` / `_enums` in their string annotations.
NAMESPACE = {**vars(_models), "_models": models, "_enums": _enums}
# Read-only properties a GET returns; a PUT may carry them back and Azure ignores them.
_READ_ONLY = ["read"]


def _fields(model: type) -> dict[str, Any]:
    """attribute -> rest field of a generated model class (the map is filled on first instantiation)."""
    if "_attr_to_rest_field" not in vars(model):
        try:
            model()
        except TypeError:
            pass
    return vars(model)["_attr_to_rest_field"]


def _unwrap(hint: Any) -> tuple[bool, list[Any]]:
    """(optional?, the non-None members) of a type hint."""
    args = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    members = [a for a in args if a is not type(None)]
    return len(members) < len(args), members


def _subtype(model: type, body: dict[str, Any], path: str, problems: list[str]) -> type:
    """The concrete model of a polymorphic body, chosen by its discriminator."""
    mapping = vars(model).get("__mapping__")
    discriminator = model._get_discriminator([]) if mapping else None
    if discriminator is None:
        return model
    value = body.get(discriminator._rest_name)
    if value not in mapping:
        problems.append(f"{path}.{discriminator._rest_name}: {value!r} is not one of {sorted(mapping)}")
        return model
    return mapping[value]


def rest_problems(model: type, body: Any, path: str = "body") -> list[str]:
    problems: list[str] = []
    if not isinstance(body, dict):
        return [f"{path}: must be an object, got {body!r}"]
    model = _subtype(model, body, path, problems)
    fields = _fields(model)
    hints = typing.get_type_hints(model, NAMESPACE)
    by_rest_name = {field._rest_name: attr for attr, field in fields.items()}
    for key in body:
        if key not in by_rest_name:
            problems.append(f"{path}.{key}: not a property of {model.__name__}")
    for attr, field in fields.items():
        rest_name, where = field._rest_name, f"{path}.{field._rest_name}"
        optional, members = _unwrap(hints.get(attr))
        if rest_name not in body or body[rest_name] is None:
            if not optional and field._visibility != _READ_ONLY:
                problems.append(f"{where}: required by {model.__name__}")
            continue
        problems += _value_problems(members, body[rest_name], where)
    return problems


def _value_problems(members: list[Any], value: Any, where: str) -> list[str]:
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    if enums and isinstance(value, str):
        allowed = {e.value for e in enums[0]}
        if value not in allowed and value.lower() not in {a.lower() for a in allowed}:
            return [f"{where}: {value!r} is not one of {sorted(allowed)}"]
    for member in members:
        if isinstance(member, type) and hasattr(member, "_attr_to_rest_field") or _is_model(member):
            return rest_problems(member, value, where)
        origin = typing.get_origin(member)
        if origin is dict and isinstance(value, dict):
            _, (inner,) = _unwrap(typing.get_args(member)[1])[0], [typing.get_args(member)[1]]
            return [p for k, v in value.items() for p in _value_problems(_unwrap(inner)[1], v, f"{where}.{k}")]
        if origin is list and isinstance(value, list):
            inner = typing.get_args(member)[0]
            return [p for i, v in enumerate(value) for p in _value_problems(_unwrap(inner)[1], v, f"{where}[{i}]")]
        if member is str and not isinstance(value, str) and not enums:
            return [f"{where}: must be a string, got {value!r}"]
    return []


def _is_model(member: Any) -> bool:
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import Model

    return isinstance(member, type) and issubclass(member, Model)
