"""The rollout's edges without a network: Azure Monitor (pytest-mock on the documented response
shapes), the Pulumi Automation API applier (pytest-mock), the local runtime's Prometheus text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from azure.monitor.querymetrics import MetricsQueryResult
from azure.monitor.querymetrics._models import Metric, MetricValue, TimeSeriesElement

from mlcanary.local_runtime.metrics import Metrics
from mlcanary.rollout.appliers import ApplyError, PulumiApplier
from mlcanary.rollout.plan import load_plan
from mlcanary.rollout.sources import METRIC_NAMESPACE, AzureMonitorSource, SourceError, parse_local_metrics
from conftest import PROJECT_DIR

ENDPOINT_ID = ("/subscriptions/sub/resourceGroups/ml-rg/providers/Microsoft.MachineLearningServices/workspaces/ml-ws/"
               "onlineEndpoints/fraud-scorer")
T0 = datetime(2026, 11, 22, 10, 0, 30, tzinfo=UTC)


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


# --- Azure Monitor --------------------------------------------------------------------------------

def series(deployment: str, points: list[tuple[datetime, float]], status_class: str | None = None, field="total"):
    metadata = {"deployment": deployment}
    if status_class:
        metadata["statusCodeClass"] = status_class
    return TimeSeriesElement(metadata_values=metadata,
                             data=[MetricValue(timestamp=t, **{field: v}) for t, v in points])


def result(name: str, timeseries: list) -> MetricsQueryResult:
    metric = Metric(id=f"{ENDPOINT_ID}/providers/Microsoft.Insights/metrics/{name}", type="Microsoft.Insights/metrics",
                    name=name, unit="Count", timeseries=timeseries, display_description="")
    return MetricsQueryResult(timespan="", metrics=[metric], granularity=timedelta(minutes=1))


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_azure_source_reads_only_closed_minutes_with_the_documented_query(mocker):
    client = mocker.Mock()
    clock = Clock(T0)
    source = AzureMonitorSource(client, ENDPOINT_ID, clock)
    assert source.read() == {} and not client.query_resources.called  # nothing has closed yet

    m1 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    client.query_resources.side_effect = [
        [result("RequestsPerMinute", [series("green", [(m1, 95.0)], "2xx"), series("green", [(m1, 3.0)], "4xx"),
                                      series("green", [(m1, 2.0)], "5xx"), series("blue", [(m1, 900.0)], "2xx")])],
        [result("RequestLatency_P90", [series("green", [(m1, 40.0)], field="average"),
                                       series("blue", [(m1, 20.0)], field="average")]),
         result("RequestLatency_P99", [series("green", [(m1, 90.0)], field="average")])],
    ]
    clock.now = T0 + timedelta(minutes=2)  # 10:02:30: minute 10:00 has landed, 10:01 may still be landing
    snapshot = source.read()
    green, blue = snapshot["green"].live, snapshot["blue"].live
    assert (green.requests, green.errors, green.errors_5xx) == (100, 5, 2)
    assert green.percentile_ms(90) == 40.0 and green.percentile_ms(99) == 90.0 and blue.requests == 900
    first, second = client.query_resources.call_args_list
    assert first.kwargs == {
        "resource_ids": [ENDPOINT_ID], "metric_namespace": METRIC_NAMESPACE, "metric_names": ["RequestsPerMinute"],
        "timespan": (m1, m1 + timedelta(minutes=1)), "granularity": timedelta(minutes=1), "aggregations": ["Total"],
        "filter": "deployment eq '*' and statusCodeClass eq '*'"}
    assert second.kwargs["metric_names"] == ["RequestLatency_P90", "RequestLatency_P99"]
    assert second.kwargs["aggregations"] == ["Average"] and second.kwargs["filter"] == "deployment eq '*'"


def test_azure_source_adds_minutes_and_weights_their_percentiles(mocker):
    client = mocker.Mock()
    clock = Clock(T0)
    source = AzureMonitorSource(client, ENDPOINT_ID, clock)
    m1, m2 = (datetime(2026, 11, 22, 10, m, tzinfo=UTC) for m in (0, 1))
    client.query_resources.side_effect = [
        [result("RequestsPerMinute", [series("green", [(m1, 100.0)], "2xx")])],
        [result("RequestLatency_P90", [series("green", [(m1, 10.0)], field="average")])],
        [result("RequestsPerMinute", [series("green", [(m2, 300.0)], "2xx")])],
        [result("RequestLatency_P90", [series("green", [(m2, 50.0)], field="average")])],
    ]
    clock.now = T0 + timedelta(minutes=2)
    source.read()
    clock.now = T0 + timedelta(minutes=3)
    green = source.read()["green"].live
    assert green.requests == 400 and green.percentile_ms(90) == pytest.approx(40.0)
    assert client.query_resources.call_args_list[2].kwargs["timespan"] == (m2, m2 + timedelta(minutes=1))


def test_a_failing_azure_query_is_a_source_error(mocker):
    client = mocker.Mock()
    client.query_resources.side_effect = RuntimeError("(AuthorizationFailed) no access")
    clock = Clock(T0)
    source = AzureMonitorSource(client, ENDPOINT_ID, clock)
    clock.now = T0 + timedelta(minutes=3)
    with pytest.raises(SourceError, match="AuthorizationFailed"):
        source.read()


# --- Pulumi's Automation API ------------------------------------------------------------------------

AZURE_STAGE = PROJECT_DIR / "stacks" / "stage-3-green-dark.yaml"


@pytest.fixture
def plan():
    return load_plan(AZURE_STAGE, {"to": "green", "steps": [10, 100], "mirror": 10, "mirrorFor": "1m", "deleteOld": True})


def config_calls(stack) -> list[dict]:
    """The values of each set_all_config call (none of them secret)."""
    calls = [call.args[0] for call in stack.set_all_config.call_args_list]
    assert not any(value.secret for call in calls for value in call.values())
    return [{key: value.value for key, value in call.items()} for call in calls]


def test_each_step_sets_the_traffic_in_the_stack_config_and_runs_up_with_the_policy_pack(mocker, plan):
    stack = mocker.Mock()
    applier = PulumiApplier(stack, PROJECT_DIR / "policies", PROJECT_DIR / "policies" / "policy-config.sample.json")
    applier.apply(plan.start)
    start_config = config_calls(stack)[0]
    stack.remove_config.assert_called_once_with("mlcanary:endpoint", path=False)
    assert start_config["mlcanary:endpoint.traffic.blue"] == "100"
    assert start_config["mlcanary:endpoint.deployments.green.file"] == "./stacks/deployments/green.yml"
    assert start_config["mlcanary:endpoint.deployments.blue.instanceCount"] == "2"
    stack.reset_mock()

    expected = [
        {"mlcanary:endpoint.traffic.blue": "100", "mlcanary:endpoint.traffic.green": "0", "mlcanary:endpoint.mirrorTraffic.green": "10"},
        {"mlcanary:endpoint.traffic.blue": "100", "mlcanary:endpoint.traffic.green": "0"},  # the mirror ends first
        {"mlcanary:endpoint.traffic.blue": "90", "mlcanary:endpoint.traffic.green": "10"},
        {"mlcanary:endpoint.traffic.blue": "0", "mlcanary:endpoint.traffic.green": "100"},
        {"mlcanary:endpoint.traffic.green": "100"},
    ]
    removed = [[], [("mlcanary:endpoint.mirrorTraffic.green",)], [], [],
               [("mlcanary:endpoint.traffic.blue",), ("mlcanary:endpoint.deployments.blue",)]]
    for step, values, removals in zip(plan.steps, expected, removed):
        applier.apply(step)
        assert config_calls(stack) == [values]
        assert stack.set_all_config.call_args.kwargs == {"path": True}
        assert [c.args for c in stack.remove_config.call_args_list] == removals
        stack.up.assert_called_once_with(
            message=f"mlcanary rollout: {step.label}", on_output=None,
            policy_packs=[str(PROJECT_DIR / "policies")],
            policy_pack_configs=[str(PROJECT_DIR / "policies" / "policy-config.sample.json")])
        stack.reset_mock()


def test_a_rollback_takes_the_same_path_at_once(mocker, plan):
    stack = mocker.Mock()
    applier = PulumiApplier(stack, PROJECT_DIR / "policies")
    applier.apply(plan.start)
    applier.apply(plan.steps[1])  # 10 % live
    stack.reset_mock()
    applier.apply(plan.rollback)
    assert config_calls(stack) == [{"mlcanary:endpoint.traffic.blue": "100", "mlcanary:endpoint.traffic.green": "0"}]
    stack.up.assert_called_once_with(message="mlcanary rollout: rollback", on_output=None,
                                     policy_packs=[str(PROJECT_DIR / "policies")])


def test_a_failing_up_is_an_apply_error_and_the_rollback_ends_the_mirror(mocker, plan):
    from pulumi.automation.errors import CommandError

    stack = mocker.Mock()
    applier = PulumiApplier(stack, PROJECT_DIR / "policies")
    applier.apply(plan.start)
    stack.up.side_effect = CommandError(mocker.Mock(stdout="", stderr="policy violation", code=255, __str__=lambda s: "up failed"))
    with pytest.raises(ApplyError, match="pulumi up for step 'mirror 10 %' failed"):
        applier.apply(plan.steps[0])
    stack.reset_mock()
    stack.up.side_effect = None
    applier.apply(plan.rollback)
    stack.remove_config.assert_called_once_with("mlcanary:endpoint.mirrorTraffic.green", path=True)
    stack.up.assert_called_once()
