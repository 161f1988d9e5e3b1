"""The local control plane's refusals of a deployment (issue 19), at the edge of each rule: what the
runtime refuses before it starts anything (the same rules as Azure's, from components/rules.py, and
the runtime's own: an existing code folder and scoring script, an existing model, probe settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcanary.local_runtime.control_plane import deployment_problems

MODELS = Path(__file__).parent / "models"


def spec(**changes) -> dict:
    return {"code": str(MODELS / "code"), "scoringScript": "score.py", "model": str(MODELS / "model"),
            "instanceCount": 1, **changes}


def refused(name: str, deployment: dict) -> list[tuple[str, str]]:
    return [(p.field, p.message) for p in deployment_problems(name, deployment)]


@pytest.mark.parametrize("changes", [
    {}, {"instanceCount": 50}, {"requestTimeoutMs": 180_000}, {"requestTimeoutMs": 1},
    {"readinessProbe": {"initialDelay": 0, "period": 1, "failureThreshold": 1, "timeout": 1}},
    {"model": None},
], ids=["plain", "most_instances", "longest_timeout", "shortest_timeout", "smallest_probe", "no_model"])
def test_a_deployment_at_the_edge_of_every_rule_is_accepted(changes):
    assert refused("dep-a", spec(**changes)) == []


@pytest.mark.parametrize("name, changes, field, message", [
    ("d", {}, "name", "'d' is not a valid deployment name"),
    ("dep-a", {"instanceCount": 0}, "instanceCount", "instance count must be a whole number from 1 to 50, got 0"),
    ("dep-a", {"instanceCount": 51}, "instanceCount", "instance count must be a whole number from 1 to 50, got 51"),
    ("dep-a", {"requestTimeoutMs": 180_001}, "requestTimeoutMs", "from 1 to 180000, got 180001"),
    ("dep-a", {"code": "/nonexistent/code"}, "code", "must be an existing folder, got '/nonexistent/code'"),
    ("dep-a", {"code": None}, "code", "input should be a valid string, got None"),
    ("dep-a", {"scoringScript": "missing.py"}, "scoringScript", "'missing.py' not found in"),
    ("dep-a", {"scoringScript": None}, "scoringScript", "input should be a valid string, got None"),
    ("dep-a", {"model": "/nonexistent/model"}, "model", "'/nonexistent/model' does not exist"),
    ("dep-a", {"readinessProbe": {"initialDelay": -1}}, "readinessProbe.initialDelay",
     "initialDelay must be a whole number from 0 to 3600, got -1"),
    ("dep-a", {"readinessProbe": {"period": 0}}, "readinessProbe.period", "period must be a whole number from 1 to 3600, got 0"),
    ("dep-a", {"readinessProbe": {"failureThreshold": 0}}, "readinessProbe.failureThreshold",
     "failureThreshold must be a whole number from 1 to 1000, got 0"),
    ("dep-a", {"readinessProbe": {"timeout": 0}}, "readinessProbe.timeout", "timeout must be a whole number from 1 to 3600, got 0"),
    ("dep-a", {"readinessProbe": {"period": True}}, "readinessProbe.period", "input should be a valid integer, got True"),
    ("dep-a", {"readinessProbe": {"period": 2.5}}, "readinessProbe.period", "input should be a valid integer, got 2.5"),
], ids=["short_name", "no_instances", "too_many_instances", "timeout_above_180s", "missing_code_folder", "no_code",
        "missing_scoring_script", "no_scoring_script", "missing_model", "negative_initial_delay", "zero_period",
        "zero_failure_threshold", "zero_probe_timeout", "boolean_period", "fractional_period"])
def test_a_deployment_breaking_one_rule_is_refused_naming_the_field(name, changes, field, message):
    (problem,) = refused(name, spec(**changes))
    assert problem[0] == field and message in problem[1]


def test_a_code_path_that_is_a_file_is_refused(tmp_path):
    script = tmp_path / "score.py"
    script.write_text("def init(): pass\n")
    assert refused("dep-a", spec(code=str(script))) == [("code", f"must be an existing folder, got {str(script)!r}")]


def test_every_broken_rule_is_reported_at_once():
    """The record's rules all at once; what the paths name is looked at only once they hold."""
    fields = [f for f, _ in refused("x", spec(instanceCount=0, requestTimeoutMs=0, model="/nonexistent",
                                              readinessProbe={"period": 0}))]
    assert fields == ["name", "instanceCount", "requestTimeoutMs", "readinessProbe.period"]
