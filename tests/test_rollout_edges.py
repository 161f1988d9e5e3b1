"""The rollout's local edge without a network: the local runtime's Prometheus text. (Azure Monitor and
the Pulumi applier are tested against fakes of Azure and of the Pulumi CLI: tests/test_rollout_azure_*.py.)"""

from __future__ import annotations

import pytest

from mlcanary.local_runtime.metrics import MIRROR_SHED_STATUS, Metrics
from mlcanary.rollout.sources import parse_local_metrics


# --- the local runtime's metrics --------------------------------------------------------------------

def test_local_metrics_become_counts_per_deployment():
    metrics = Metrics()
    for status, seconds in ((200, 0.002), (200, 0.004), (424, 0.2), (503, 0.02)):
        metrics.of("ep", "green").observe(status, seconds)
    metrics.of("ep", "green").observe(500, 0.0, mirrored=True)
    metrics.of("other", "green").observe(200, 0.001)
    green = parse_local_metrics(metrics.prometheus(), "ep")["green"]
    assert (green.live.requests, green.live.errors, green.live.errors_5xx) == (4, 2, 1)
    assert (green.mirrored.requests, green.mirrored.errors) == (1, 1)
    assert sum(green.live.buckets) == 4 and green.live.slower_than(0.005) == 2


def test_mirror_copies_the_router_shed_are_not_the_targets_requests_nor_errors():
    """Under load the router sheds a mirror copy it has no free slot for (counted under 429 in the mirror
    counts): the target never got it, so a mirror phase must not judge it as the target's error."""
    metrics = Metrics()
    for status in (200, 200, 500):
        metrics.of("ep", "green").observe(status, 0.01, mirrored=True)
    for _ in range(5):
        metrics.of("ep", "green").observe(MIRROR_SHED_STATUS, 0.0, mirrored=True)
    green = parse_local_metrics(metrics.prometheus(), "ep")["green"]
    assert (green.mirrored.requests, green.mirrored.errors) == (3, 1)
    summary = metrics.of("ep", "green").summary()
    assert (summary["mirrored"], summary["mirrorErrors"], summary["mirrorShed"]) == (3, 1, 5)


def test_header_pinned_requests_are_counted_apart_from_the_split():
    """The runtime counts every answered request, and the pinned ones among them: the split's are the rest."""
    metrics = Metrics()
    metrics.of("ep", "green").observe(200, 0.002)  # routed by the split
    for status in (200, 200, 500):
        metrics.of("ep", "green").observe(status, 0.3, pinned=True)  # azureml-model-deployment: green
    green = parse_local_metrics(metrics.prometheus(), "ep")["green"]
    assert (green.live.requests, green.live.errors, sum(green.live.buckets)) == (1, 0, 1)
    assert (green.pinned.requests, green.pinned.errors, green.pinned.errors_5xx) == (3, 1, 1)
    assert green.live.slower_than(0.005) == 0  # the pinned slow requests are not the split's latency


def test_a_restarted_runtime_counts_under_a_new_series_and_the_window_is_refused():
    from mlcanary.rollout.counts import CountsRestarted, window

    before_restart = Metrics()
    for _ in range(5):
        before_restart.of("ep", "green").observe(200, 0.01)
    before = parse_local_metrics(before_restart.prometheus(), "ep")
    after_restart = Metrics()  # a new runtime process: counts from zero
    for _ in range(7):
        after_restart.of("ep", "green").observe(200, 0.01)
    after = parse_local_metrics(after_restart.prometheus(), "ep")
    assert before["green"].series and before["green"].series != after["green"].series
    with pytest.raises(CountsRestarted, match="green started again from zero"):
        window(after, before)  # 7 > 5: only the series tells that these are not 2 new requests


def test_counts_kept_across_a_clean_stop_and_start_go_on_under_their_series():
    """`local stop` keeps the counts (metrics.json) and `local start` restores them: not a restart."""
    from mlcanary.rollout.counts import window

    running = Metrics()
    running.of("ep", "green").observe(200, 0.01)
    running.of("ep", "green").observe(200, 0.01, pinned=True)
    before = parse_local_metrics(running.prometheus(), "ep")
    restored = Metrics.from_json(running.as_json())
    restored.of("ep", "green").observe(500, 0.01)
    after = parse_local_metrics(restored.prometheus(), "ep")
    assert after["green"].series == before["green"].series
    closed = window(after, before)["green"]
    assert (closed.live.requests, closed.live.errors, closed.pinned.requests) == (1, 1, 0)


def test_a_counter_going_down_is_a_restart_not_negative_traffic():
    from mlcanary.rollout.counts import Counts, CountsRestarted, DeploymentCounts, window

    with pytest.raises(CountsRestarted):
        window({"green": DeploymentCounts(Counts(3))}, {"green": DeploymentCounts(Counts(10))})
    with pytest.raises(CountsRestarted):  # a deployment whose counts vanished (re-created, forgotten)
        window({}, {"green": DeploymentCounts(Counts(10))})
    assert window({"green": DeploymentCounts(Counts(12, 1))}, {"green": DeploymentCounts(Counts(10))})["green"].live \
        == Counts(2, 1)
