"""One rule for relative paths in a stage file, whatever the current directory (docs/config.md):
they resolve from the Pulumi project the stage file belongs to (the nearest folder upward holding
Pulumi.yaml, as `pulumi up` resolves them), else from the stage file's own folder. Paths inside a
deployment YAML resolve from that file's folder. A missing path names the base it was looked for in.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import PROJECT_DIR
from mlcanary.cli import main
from mlcanary.local_runtime.rehearse import load_stage

MODEL = PROJECT_DIR / "samples" / "fraud-model"


def stage(code: str, model: str, **deployment) -> dict:
    return {"config": {"mlcanary:target": "local", "mlcanary:endpoint": {
        "name": "paths-scorer",
        "deployments": {"blue": {"code": code, "model": model, "scoringScript": "score.py", "instanceCount": 1,
                                 **deployment}},
        "traffic": {"blue": 100}}}}


@pytest.fixture
def project(tmp_path) -> Path:
    """myproj/ (a Pulumi project) with its model under myproj/model-1 and a stage under myproj/stages/."""
    root = tmp_path / "myproj"
    shutil.copytree(MODEL / "onlinescoring", root / "model-1" / "onlinescoring")
    shutil.copytree(MODEL / "v1" / "model", root / "model-1" / "model")
    (root / "Pulumi.yaml").write_text("name: myproj\nruntime: python\n")
    (root / "stages").mkdir()
    (root / "stages" / "dark.yaml").write_text(yaml.safe_dump(stage("./model-1/onlinescoring", "./model-1/model")))
    return root


def check(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check", str(path)])
    return result.exit_code, result.output


@pytest.mark.parametrize("where", ["parent", "project", "stages", "elsewhere"])
def test_a_stage_in_a_project_resolves_from_the_project_wherever_it_is_run(project, monkeypatch, tmp_path, where):
    folders = {"parent": project.parent, "project": project, "stages": project / "stages",
               "elsewhere": tmp_path / "elsewhere"}
    folders["elsewhere"].mkdir()
    monkeypatch.chdir(folders[where])
    named = Path(os.path.relpath(project / "stages" / "dark.yaml", folders[where]))  # as a user types it
    code, output = check(named)
    assert code == 0, output
    blue = load_stage(named).endpoint.deployments["blue"]
    assert blue.code == str(project / "model-1" / "onlinescoring")


def test_a_stage_outside_any_project_resolves_from_its_own_folder(tmp_path, monkeypatch):
    folder = tmp_path / "loose"
    shutil.copytree(MODEL / "onlinescoring", folder / "onlinescoring")
    shutil.copytree(MODEL / "v1" / "model", folder / "model")
    (folder / "stage.yaml").write_text(yaml.safe_dump(stage("./onlinescoring", "./model")))
    assert not any((p / "Pulumi.yaml").exists() for p in folder.parents)
    monkeypatch.chdir(tmp_path)
    code, output = check(Path("loose") / "stage.yaml")
    assert code == 0, output
    assert load_stage(Path("loose") / "stage.yaml").endpoint.deployments["blue"].model == str(folder / "model")


def test_a_missing_path_names_the_project_directory_it_was_looked_for_in(project, monkeypatch):
    (project / "stages" / "dark.yaml").write_text(yaml.safe_dump(stage("./onlinescoring", "./model-1/model")))
    monkeypatch.chdir(project.parent)
    code, output = check(Path("myproj") / "stages" / "dark.yaml")
    assert code == 2
    assert (f"mlcanary:endpoint.deployments.blue.code: local path './onlinescoring' does not exist (looked for "
            f"{project}/onlinescoring; relative paths resolve from {project}, the project directory: it holds "
            "Pulumi.yaml)") in output


def test_a_missing_path_names_the_stage_files_folder_outside_a_project(tmp_path, monkeypatch):
    (tmp_path / "stage.yaml").write_text(yaml.safe_dump(stage("./code", "./model")))
    monkeypatch.chdir(PROJECT_DIR)  # a folder that has ./model would not matter: the base is the stage's folder
    code, output = check(tmp_path / "stage.yaml")
    assert code == 2
    assert (f"relative paths resolve from {tmp_path}, the stage file's folder: no Pulumi.yaml in it or above it"
            in output)


def test_paths_in_a_deployment_yaml_resolve_from_its_folder(project, monkeypatch, tmp_path):
    deploy = project / "deploy"
    deploy.mkdir()
    (deploy / "blue.yml").write_text(yaml.safe_dump({
        "name": "blue", "code_configuration": {"code": "../model-1/onlinescoring", "scoring_script": "score.py"},
        "model": "../model-1/model", "instance_count": 1}))
    (project / "stages" / "file.yaml").write_text(yaml.safe_dump({"config": {
        "mlcanary:target": "local", "mlcanary:endpoint": {
            "name": "paths-scorer", "deployments": {"blue": {"file": "./deploy/blue.yml"}}, "traffic": {"blue": 100}}}}))
    monkeypatch.chdir(tmp_path)
    code, output = check(project / "stages" / "file.yaml")
    assert code == 0, output
    (deploy / "blue.yml").write_text((deploy / "blue.yml").read_text().replace("../model-1/model", "./model"))
    code, output = check(project / "stages" / "file.yaml")
    assert code == 2
    assert f"relative paths resolve from {deploy}, the deployment YAML's folder" in output


def test_a_missing_deployment_yaml_names_the_base(project, monkeypatch):
    (project / "stages" / "file.yaml").write_text(yaml.safe_dump({"config": {
        "mlcanary:target": "local", "mlcanary:endpoint": {
            "name": "paths-scorer", "deployments": {"blue": {"file": "./deploy/nope.yml"}}, "traffic": {"blue": 100}}}}))
    monkeypatch.chdir(project / "stages")
    code, output = check(Path("file.yaml"))
    assert code == 2
    assert (f"{project}/deploy/nope.yml: deployment YAML file not found (relative paths resolve from {project}, "
            "the project directory: it holds Pulumi.yaml)") in output
