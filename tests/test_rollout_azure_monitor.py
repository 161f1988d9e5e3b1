"""The rollout's Azure Monitor source against a fake that keeps Azure's rules (tests/fake_azure_monitor.py:
regional hosts, metric definitions with the aggregations Microsoft's table lists, `max_results` 10 by
default with a filter as azure-monitor-querymetrics `_patch.py` documents, points landing late)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from mlcanary.rollout.sources import (
    AzureMonitorSource, MonitorPlan, SourceError, endpoint_region, monitor_plan, plan_queries)
from fake_azure_monitor import FakeArm, FakeAzureMonitor, microsoft_definitions

ENDPOINT_ID = ("/subscriptions/sub/resourceGroups/ml-rg/providers/Microsoft.MachineLearningServices/workspaces/ml-ws/"
               "onlineEndpoints/fraud-scorer")
T0 = datetime(2026, 11, 22, 10, 0, 30, tzinfo=UTC)
M0 = datetime(2026, 11, 22, 10, 1, tzinfo=UTC)  # the first minute that starts after the rollout began


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def source_on(region: str, clock: Clock, definitions=None, arm: FakeArm | None = None, max_results=None):
    arm = arm or FakeArm(ENDPOINT_ID, "eastus")
    plan = monitor_plan(arm, ENDPOINT_ID, region)
    if max_results is not None:
        plan = MonitorPlan(plan.resource_id, plan.region, plan.queries, max_results=max_results)
    monitor = FakeAzureMonitor(plan.host, {ENDPOINT_ID: "eastus"}, definitions or microsoft_definitions(), clock)

    def mirror_state():
        endpoint = arm.get(ENDPOINT_ID) or {}
        return endpoint["properties"]["traffic"], endpoint["properties"]["mirrorTraffic"]

    return AzureMonitorSource(monitor, plan, mirror_state, clock), monitor


# --- finding 2: the region -----------------------------------------------------------------------

def test_the_metrics_region_is_the_endpoints_own_not_the_providers_default():
    """The stage's azure-native:location (westus2 in the samples) is not where the endpoint lives; the
    endpoint's ARM `location` is, and before the endpoint exists its workspace's (az ml's rule)."""
    assert endpoint_region(FakeArm(ENDPOINT_ID, "East US"), ENDPOINT_ID) == "eastus"
    assert endpoint_region(FakeArm(ENDPOINT_ID, None, workspace_location="northeurope"), ENDPOINT_ID) == "northeurope"


def test_a_source_on_another_regions_host_fails_where_the_endpoints_region_reads():
    clock = Clock(T0)
    wrong, _ = source_on("westus2", clock)
    clock.now = T0 + timedelta(minutes=3)
    with pytest.raises(SourceError, match="not served by https://westus2.metrics.monitor.azure.com"):
        wrong.read()
    right, monitor = source_on(None, Clock(T0 + timedelta(minutes=3)))
    assert right.plan.host == "https://eastus.metrics.monitor.azure.com"


# --- finding 3: the aggregation, from the metric definitions -----------------------------------------

def test_requests_are_asked_with_an_aggregation_the_definitions_support():
    """Microsoft's table lists Average for RequestsPerMinute; asking Total is refused (or null, read as
    0 requests before: every step held, then halted)."""
    plan = plan_queries(microsoft_definitions(), ENDPOINT_ID, "eastus")
    assert {q.metric: q.aggregation for q in plan.queries} == {
        "RequestsPerMinute": "Average", "RequestLatency_P90": "Average", "RequestLatency_P99": "Average"}
    clock = Clock(T0)
    source, monitor = source_on(None, clock)
    monitor.add("RequestsPerMinute", M0, "green", 95.0, "2xx")
    monitor.add("RequestsPerMinute", M0, "green", 5.0, "5xx")
    clock.now = M0 + timedelta(minutes=2)
    green = source.read()["green"].live
    assert (green.requests, green.errors, green.errors_5xx) == (100, 5, 5)
    assert {tuple(q["aggregations"]) for q in monitor.queries} == {("Average",)}


@pytest.mark.parametrize("definitions, named", [
    (microsoft_definitions(requests_dimensions=("deployment", "statusCode")), "RequestsPerMinute: cannot be split by statusCodeClass"),
    (microsoft_definitions(requests_aggregations=("Maximum", "Minimum")), "RequestsPerMinute: supports aggregations ['Maximum', 'Minimum']"),
    ([d for d in microsoft_definitions() if d["name"]["value"] != "RequestLatency_P99"], "RequestLatency_P99: not among"),
], ids=["no_status_class_dimension", "no_count_aggregation", "no_p99_metric"])
def test_the_rollout_refuses_to_start_naming_the_metric_the_judges_cannot_have(definitions, named):
    with pytest.raises(SourceError, match=re.escape(named)):
        monitor_plan(FakeArm(ENDPOINT_ID, "eastus", definitions=definitions), ENDPOINT_ID, None)


# --- finding 4: no series dropped ----------------------------------------------------------------------

def test_every_series_is_read_when_there_are_more_than_ten():
    """Four deployments x three status classes = 12 series: with the default of 10 the two smallest -
    the 5xx of two deployments - were dropped silently."""
    clock = Clock(T0)
    source, monitor = source_on(None, clock)
    for deployment in ("blue", "green", "red", "gold"):
        monitor.add("RequestsPerMinute", M0, deployment, 500.0, "2xx")
        monitor.add("RequestsPerMinute", M0, deployment, 20.0, "4xx")
        monitor.add("RequestsPerMinute", M0, deployment, 1.0 if deployment != "green" else 3.0, "5xx")
    clock.now = M0 + timedelta(minutes=2)
    snapshot = source.read()
    assert {name: counts.live.errors_5xx for name, counts in snapshot.items()} == {
        "blue": 1, "green": 3, "red": 1, "gold": 1}
    assert all(q["max_results"] == source.plan.max_results for q in monitor.queries)


def test_a_full_page_of_series_is_an_error_not_a_silent_cut():
    clock = Clock(T0)
    source, monitor = source_on(None, clock, max_results=3)
    for status in ("2xx", "4xx", "5xx"):
        monitor.add("RequestsPerMinute", M0, "green", 10.0, status)
    clock.now = M0 + timedelta(minutes=2)
    with pytest.raises(SourceError, match="3 series of RequestsPerMinute .* some may be missing"):
        source.read()


# --- finding 5: late points ---------------------------------------------------------------------------

def test_points_that_land_minutes_late_are_still_counted():
    """Minute M0's errors land 4 minutes after it closed: read once, they were lost for good."""
    clock = Clock(T0)
    source, monitor = source_on(None, clock)
    monitor.add("RequestsPerMinute", M0, "green", 100.0, "2xx")
    monitor.add("RequestsPerMinute", M0, "green", 30.0, "5xx", late=timedelta(minutes=4))
    clock.now = M0 + timedelta(minutes=2)
    assert source.read()["green"].live.errors == 0
    clock.now = M0 + timedelta(minutes=6)
    green = source.read()["green"].live
    assert (green.requests, green.errors) == (130, 30)
    last = monitor.queries[-1]["timespan"]
    assert last[0] == M0 and last[1] - last[0] <= source.plan.trailing
    assert "re-reads the last 10 closed minutes" in source.plan.describe()[-1]


def test_minutes_before_the_trailing_window_are_final_and_not_asked_again():
    clock = Clock(T0)
    source, monitor = source_on(None, clock)
    monitor.add("RequestsPerMinute", M0, "green", 100.0, "2xx")
    clock.now = M0 + timedelta(minutes=2)
    source.read()
    clock.now = M0 + timedelta(minutes=30)
    assert source.read()["green"].live.requests == 100
    start, end = monitor.queries[-1]["timespan"]
    assert end - start == source.plan.trailing and start > M0


# --- finding 13: mirrored requests --------------------------------------------------------------------

def test_requests_of_a_mirror_deployment_are_booked_as_mirrored():
    """Azure counts mirrored copies in the mirror deployment's RequestsPerMinute like live requests;
    the record showed `mirrored 0`. The endpoint's maps (ARM) say which deployment is mirrored to."""
    clock = Clock(T0)
    arm = FakeArm(ENDPOINT_ID, "eastus", traffic={"blue": 100}, mirror={"green": 10})
    source, monitor = source_on(None, clock, arm=arm)
    monitor.add("RequestsPerMinute", M0, "blue", 1000.0, "2xx")
    monitor.add("RequestsPerMinute", M0, "green", 100.0, "2xx")
    clock.now = M0 + timedelta(minutes=2)
    snapshot = source.read()
    assert snapshot["green"].mirrored.requests == 100 and snapshot["green"].live.requests == 0
    assert snapshot["blue"].live.requests == 1000
    arm.traffic, arm.mirror = {"blue": 90, "green": 10}, {}  # the next step: live 10 %
    monitor.add("RequestsPerMinute", M0 + timedelta(minutes=2), "green", 50.0, "2xx")
    clock.now = M0 + timedelta(minutes=4)
    green = source.read()["green"]
    assert (green.mirrored.requests, green.live.requests) == (100, 50)  # the mirror minute stays mirrored
