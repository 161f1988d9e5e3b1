"""Decisions of the rules module and the transition rules, pinned at their edges (issue 19).

Each test states a rule of Azure ML (design.md, "Azure facts") or of `mlcanary check` at the exact
value where allowed turns into refused, so an off-by-one or a dropped case fails here.
"""

from __future__ import annotations

import pytest

from mlcanary.check import _check_transition, policy_defaults
from mlcanary.components import rules
from mlcanary.components.spec import load_stack_config
from mlcanary.components.stage_file import namespaced
from mlcanary.policy_config import policy_settings
from conftest import PROJECT_DIR, STAGE_FILES, stage_config


@pytest.mark.parametrize("traffic", [{"blue": 0, "green": 0}, {}], ids=["all_zero", "empty_map"])
def test_nothing_live_is_an_allowed_live_traffic_sum(traffic):
    """Azure: the live shares sum to exactly 100, or to 0 when nothing is live (an endpoint before its
    first deployment goes live, or after its traffic was taken away)."""
    assert rules.traffic_problems(traffic, {}, ["blue", "green"]) == []


@pytest.mark.parametrize("total", [1, 99, 101])
def test_a_live_traffic_sum_other_than_0_or_100_is_refused(total):
    (problem,) = rules.traffic_problems({"blue": total - 1, "green": 1}, {}, ["blue", "green"])
    assert problem.field == "traffic" and f"got {total}" in problem.message


@pytest.mark.parametrize("length", [3, 31, 32])
def test_names_of_3_to_32_characters_are_allowed(length):
    name = "e" * (length - 1) + "1"
    assert rules.name_problems("endpoint.name", name) == []


@pytest.mark.parametrize("length", [2, 33])
def test_names_shorter_than_3_or_longer_than_32_characters_are_refused(length):
    (problem,) = rules.name_problems("endpoint.name", "e" * length)
    assert problem.field == "endpoint.name" and "3-32 characters" in problem.message


def _endpoint(number: str, traffic: dict[str, int]):
    """A sample stage with its live traffic replaced."""
    path = next(p for p in STAGE_FILES if p.name.startswith(f"stage-{number}"))
    config = stage_config(path)
    config["mlcanary:endpoint"]["traffic"] = traffic
    config["mlcanary:endpoint"]["mirrorTraffic"] = {}
    return load_stack_config(namespaced(config, "mlcanary"), PROJECT_DIR).endpoint


def _max_shift_violations(before, after, limit: int) -> list[str]:
    settings = policy_settings({"max-traffic-shift": {"enforcementLevel": "mandatory", "maxShiftPercent": limit}},
                               policy_defaults())
    return [v.message for v in _check_transition("A -> B", before, after, settings) if v.policy == "max-traffic-shift"]


def test_a_step_moving_exactly_max_shift_percent_is_allowed():
    before, after = _endpoint("5", {"blue": 90, "green": 10}), _endpoint("5", {"blue": 60, "green": 40})
    assert _max_shift_violations(before, after, 30) == []


def test_a_step_moving_one_point_more_than_max_shift_percent_is_refused():
    before, after = _endpoint("5", {"blue": 90, "green": 10}), _endpoint("5", {"blue": 59, "green": 41})
    assert _max_shift_violations(before, after, 30) == [
        "this step moves 31 percentage points of live traffic; at most 30 may move in one step"]
