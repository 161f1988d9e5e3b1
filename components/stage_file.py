"""Reading a stage file: an ordinary Pulumi stack config file (`config:` mapping of full keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlcanary.components.rules import shown
from mlcanary.components.safe_yaml import load_yaml_file
from mlcanary.components.user_files import UnusableFile

STAGE_FILE_SIZE = "a stage file is a few KB"


class StageFileError(ValueError):
    """The stage file cannot be read or is not a stack config file; the message names the file."""


def read_stage_file(path: Path) -> dict[str, Any]:
    """The `config:` mapping of a stage file (keys like `mlcanary:endpoint`)."""
    try:
        document = load_yaml_file(path, "stage file", STAGE_FILE_SIZE)
    except UnusableFile as err:
        raise StageFileError(str(err)) from None
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise StageFileError(f"{path}: a stage file is a Pulumi stack config file with a top-level `config:` mapping")
    for key in document["config"]:
        if not isinstance(key, str):
            raise StageFileError(f"{path}: config keys are strings such as mlcanary:endpoint, got {shown(key)}")
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
