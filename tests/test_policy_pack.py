"""policies/__main__.py builds the pack (PolicyPack is mocked: the real one starts a blocking server)."""

from __future__ import annotations

import runpy

from pulumi_policy import EnforcementLevel

from conftest import PROJECT_DIR
from mlcanary.policies.azure_ml import POLICIES


def test_pack_entry_point_builds_the_pack_from_the_shared_policies(mocker):
    pack = mocker.patch("pulumi_policy.PolicyPack")
    runpy.run_path(str(PROJECT_DIR / "policies" / "__main__.py"), run_name="__main__")
    pack.assert_called_once_with(name="mlcanary", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)


def test_pack_files_for_the_pulumi_cli():
    folder = PROJECT_DIR / "policies"
    assert "name: python" in (folder / "PulumiPolicy.yaml").read_text()
    requirements = (folder / "requirements.txt").read_text().split()
    assert "-e" in requirements and ".." in requirements  # the pack imports the project's rules


def test_the_pulumi_program_installs_what_the_local_target_needs():
    """pulumi up -s local runs the local providers in the program's venv, built from requirements.txt."""
    assert (PROJECT_DIR / "requirements.txt").read_text().strip() == "-e .[local]"
