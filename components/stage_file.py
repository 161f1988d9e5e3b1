"""Reading a stage file: an ordinary Pulumi stack config file (`config:` mapping of full keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class StageFileError(ValueError):
    """The stage file cannot be read or is not a stack config file; the message names the file."""


def read_stage_file(path: Path) -> dict[str, Any]:
    """The `config:` mapping of a stage file (keys like `mlcanary:endpoint`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageFileError(f"{path}: stage file not found") from None
    except OSError as err:
        raise StageFileError(f"{path}: cannot read: {err.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StageFileError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise StageFileError(f"{path}: a stage file is a Pulumi stack config file with a top-level `config:` mapping")
    return document["config"]


def project_dir_of(path: Path) -> Path:
    """The Pulumi project a stage file belongs to: the nearest folder upward holding Pulumi.yaml
    (relative paths in the config resolve from there), else the current directory."""
    for folder in path.resolve().parents:
        if (folder / "Pulumi.yaml").is_file():
            return folder
    return Path.cwd()


def namespaced(config: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The keys of one config namespace, without the namespace (`mlcanary:endpoint` -> `endpoint`)."""
    prefix = f"{namespace}:"
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}
