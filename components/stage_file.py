"""Reading a stage file: an ordinary Pulumi stack config file (`config:` mapping of full keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlcanary.components.rules import shown
from mlcanary.components.safe_yaml import load_yaml_file
from mlcanary.components.user_files import UnusableFile

STAGE_FILE_SIZE = "a stage file is a few KB"
PROJECT_FILE = "Pulumi.yaml"


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
    """The folder relative paths in the stage file `path` resolve from, wherever the command runs:
    the Pulumi project it belongs to (the nearest folder upward holding Pulumi.yaml, where `pulumi up`
    resolves them too), else, for a stage file outside any project, the stage file's own folder."""
    stage = path.resolve()
    for folder in stage.parents:
        if (folder / PROJECT_FILE).is_file():
            return folder
    return stage.parent


def described_base(base: Path) -> str:
    """Which folder relative paths resolved from, and why, for an error message."""
    if (base / PROJECT_FILE).is_file():
        return f"{base}, the project directory: it holds {PROJECT_FILE}"
    return f"{base}, the stage file's folder: no {PROJECT_FILE} in it or above it"


def namespaced(config: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The keys of one config namespace, without the namespace (`mlcanary:endpoint` -> `endpoint`)."""
    prefix = f"{namespace}:"
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}
