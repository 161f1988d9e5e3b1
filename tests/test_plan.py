"""The plan of a stage against the running endpoint: pure, so every case is cheap to pin down."""

from __future__ import annotations

from mlcanary.components.local_payload import deployment_payload
from mlcanary.local_runtime.apply import plan_of
from mlcanary.local_runtime.plan import running_endpoint, transition_view
from mlcanary.local_runtime.rehearse import load_stage
from test_local_cli import STAGE


def running_as(stage: str, **states: str) -> dict:
    """The runtime's status view of the endpoint after `stage` was applied (deployments ready unless given)."""
    spec = load_stage(STAGE[stage]).endpoint
    return {
        "traffic": dict(spec.live_traffic), "mirrorTraffic": dict(spec.mirror_traffic),
        "deployments": {n: {"state": states.get(n, "ready"), "spec": deployment_payload(d)}
                        for n, d in spec.deployments.items()},
    }


def plan(stage: str, running: dict | None):
    return plan_of(load_stage(STAGE[stage]).endpoint, running)


def test_the_same_stage_changes_nothing():
    p = plan("5", running_as("5"))
    assert (p.started, p.updated, p.removed, p.unchanged) == ([], {}, [], ["blue", "green"])
    assert not p.traffic_changes


def test_a_zero_share_routes_like_no_share():
    """Stage 3 lists green at 0 %: the same live traffic as stage 2's blue 100."""
    p = plan("3", running_as("2"))
    assert p.started == ["green"] and not p.traffic_changes
    assert p.lines()[-2:] == ["  live traffic: blue 100 (unchanged)", "  mirror traffic: none (unchanged)"]


def test_a_scaled_deployment_is_an_update_naming_the_counts():
    p = plan("5", running_as("4"))
    assert p.updated == {"green": "instances 1 -> 2"}
    p = plan("1", running_as("3"))
    assert p.removed == ["green"] and p.updated == {"blue": "instances 2 -> 1"}


def test_a_deployment_that_is_not_ready_is_started_again():
    p = plan("3", running_as("3", green="failed"))
    assert p.updated == {"green": "was failed"}


def test_changed_settings_are_named():
    running = running_as("3")
    running["deployments"]["green"]["spec"] = {**running["deployments"]["green"]["spec"], "model": "/elsewhere"}
    assert plan("3", running).updated == {"green": "model changed"}


def test_a_new_endpoint_starts_everything():
    p = plan("3", None)
    assert (p.exists, p.started, p.traffic_before, p.traffic_after) == (False, ["blue", "green"], {}, {"blue": 100})


def test_the_running_endpoint_as_the_transition_rules_see_it():
    before = running_endpoint("fraud-scorer", running_as("4"))
    assert sorted(before.deployments) == ["blue", "green"]
    assert before.live_traffic == {"blue": 100, "green": 0} and before.mirror_traffic == {"green": 10}


def test_the_gate_verdict_depends_only_on_the_transition_view():
    """Health and per-deployment settings do not change the verdict; names and traffic do."""
    assert transition_view(running_as("3", green="starting")) == transition_view(running_as("3"))
    assert transition_view(running_as("2")) != transition_view(running_as("3"))
    assert transition_view(running_as("4")) != transition_view(running_as("3"))  # the mirror
    assert transition_view(None) is None
