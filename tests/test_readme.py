"""The claims of the README and docs/ that code can check: config reference, example error, set-up
commands, policy tables, links, and the README's length (it is the tour; the reference is in docs/)."""

from __future__ import annotations

import re

import pulumi
import pytest

from mlcanary.components.render import render_program
from mlcanary.components.spec import DeploymentSpec, EndpointSpec
from conftest import PROGRAM, PROJECT_DIR

README = (PROJECT_DIR / "README.md").read_text()
DOCS = PROJECT_DIR / "docs"
CONFIG = (DOCS / "config.md").read_text()
POLICIES_PAGE = (DOCS / "policies.md").read_text()


def table_keys(heading: str) -> list[str]:
    """First-column keys of the markdown table that follows `heading` in docs/config.md."""
    section = CONFIG.split(heading, 1)[1]
    rows = re.findall(r"^\| `([A-Za-z]+)` \|", section.split("\n\n", 2)[1], flags=re.M)
    return rows


def aliases(model) -> list[str]:
    return [field.alias for field in model.model_fields.values()]


def test_endpoint_table_matches_the_model():
    assert table_keys("`mlcanary:endpoint`:") == aliases(EndpointSpec)


def test_deployment_table_matches_the_model():
    assert table_keys("A deployment:") == ["file", *aliases(DeploymentSpec)]


def test_example_error_is_what_the_program_prints(canary_config):
    example = CONFIG.split("## An invalid config", 1)[1].split("```")[1].strip()
    canary_config["mlcanary:endpoint"]["traffic"] = {"blue": 80, "green": 10}
    canary_config["mlcanary:endpoint"]["deployments"]["green"]["instanceCount"] = 0
    with pytest.raises(pulumi.RunError) as raised:
        render_program(PROGRAM, canary_config)
    assert str(raised.value) == example


def test_ci_runs_the_readme_test_command():
    command = re.search(r"^(\./tasks test)\b", README, flags=re.M).group(1)
    ci = (PROJECT_DIR / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(command)}$", ci, flags=re.M)


def test_policy_tables_list_every_policy():
    from mlcanary.policies.azure_ml import POLICIES
    from mlcanary.policies.transitions import TRANSITION_POLICIES

    for policy in [*POLICIES, *TRANSITION_POLICIES]:
        level = policy.enforcement_level.value
        assert re.search(rf"^\| `{policy.name}` \| {level} \|", POLICIES_PAGE, flags=re.M), policy.name


def test_the_main_command_rehearses_the_local_stages():
    command = re.search(r"^(\./tasks rehearse)\b", README, flags=re.M).group(1)
    tasks = (PROJECT_DIR / "tasks").read_text()
    assert "rehearse)" in tasks and "mlcanary rehearse" in tasks and "stacks/local/stage-*.yaml" in tasks
    assert command == "./tasks rehearse"


def test_the_readme_is_a_short_tour():
    assert len(README.splitlines()) < 200
    sections = re.findall(r"^## (.+)$", README, flags=re.M)
    assert sections == ["Set-up", "A five-minute tour on the local target", "On Azure", "Reference"]


def test_every_link_of_the_readme_and_docs_reaches_a_file_and_heading():
    def anchor(heading: str) -> str:  # GitHub's: lower case, punctuation dropped, spaces to hyphens
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    for page in [PROJECT_DIR / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+\.(?:md|png))(#[^)]*)?\)", page.read_text()):
            path, fragment = (page.parent / target[0]).resolve(), target[1]
            assert path.is_file(), f"{page.name}: {target[0]}"
            if fragment:
                headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
                assert fragment[1:] in [anchor(h) for h in headings], f"{page.name}: {target[0]}{fragment}"


def test_every_page_of_the_reference_is_linked_from_the_readme_and_stands_alone():
    for page in sorted(DOCS.glob("*.md")):
        assert f"(docs/{page.name})" in README, page.name
        assert page.read_text().startswith("# "), f"{page.name} starts with its title"
