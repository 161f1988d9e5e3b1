"""Resource rules (mlcanary/rollout/resources.py, the grammar in mlcanary/rollout/rules.py): the target's
processes against the baseline's, so a leaking model is caught although it answers well."""

from __future__ import annotations

import json
import os

import pytest

from mlcanary.rollout.counts import Counts
from mlcanary.rollout.resources import ProcessUsage, ResourceWatch, Sample, instance_usage, per_instance, process_tree
from mlcanary.components.rollout_rules import RuleError, parse_rule
from mlcanary.rollout.rules import observe, observe_resources
from test_rollout_local import GOOD, endpoint, load_args, rollout, runtime, stage  # noqa: F401 - fixtures

MB = 2**20


def test_resource_rules_parse_as_other_rules():
    rule = parse_rule("memory_mb_ratio < 1.5")
    assert rule.is_resource and rule.is_ratio and str(rule) == "memory_mb_ratio < 1.5"
    assert parse_rule("cpu_percent <= 150").is_resource and not parse_rule("error_rate < 0.1").is_resource


@pytest.mark.parametrize("text, error", [
    ("memory_mb > 100", "a rule states what is good: < or <="),
    ("memory_gb < 1", "unknown metric 'memory_gb'"),
    ("cpu_percent_ratio < -1", "the limit must be a positive number"),
])
def test_a_bad_resource_rule_names_what_is_allowed(text, error):
    with pytest.raises(RuleError, match=error):
        parse_rule(text)


def test_a_resource_rule_is_never_judged_on_request_counts():
    assert observe(parse_rule("memory_mb < 1"), Counts(requests=10), Counts(requests=10)) is None


def test_per_instance_memory_and_cpu():
    older = Sample(0.0, {1: ProcessUsage(100 * MB, 1.0), 2: ProcessUsage(300 * MB, 2.0)})
    newer = Sample(2.0, {1: ProcessUsage(100 * MB, 2.0), 2: ProcessUsage(300 * MB, 2.5)})
    values = per_instance(older, newer)
    assert values["memory_mb"] == pytest.approx(200) and values["cpu_percent"] == pytest.approx(37.5)
    assert per_instance(None, newer) == {"memory_mb": pytest.approx(200)}  # CPU needs two samples
    restarted = Sample(2.0, {3: ProcessUsage(50 * MB, 0.1)})
    assert "cpu_percent" not in per_instance(older, restarted)
    assert per_instance(older, Sample(2.0, {})) == {}


def test_this_process_is_measured_from_proc():
    own = instance_usage(os.getpid())
    assert own.rss_bytes > 10 * MB and own.cpu_seconds > 0
    assert process_tree(os.getpid())[0] == os.getpid()
    assert instance_usage(2**22 + 12345) is None  # no such process


class FakeSource:
    def __init__(self):
        self.target_mb, self.now = 100.0, 0.0

    def sample(self, now):
        return {"green": Sample(now, {1: ProcessUsage(int(self.target_mb * MB), now * 0.1)}),
                "blue": Sample(now, {2: ProcessUsage(100 * MB, now * 0.1)})}


def test_a_leak_fails_the_ratio_rule_only_after_an_interval_in_the_step():
    source, clock = FakeSource(), [0.0]
    watch = ResourceWatch((parse_rule("memory_mb_ratio < 1.5"), parse_rule("error_rate < 0.1")), source, "green",
                          "blue", 3.0, lambda: clock[0])
    assert [str(r) for r in watch.rules] == ["memory_mb_ratio < 1.5"]
    failed = None
    for second in range(1, 8):
        clock[0] = float(second)
        source.target_mb = 100 + 30 * second  # 30 MB/s
        failed = watch.check()
        if failed:
            break
    rule, observed, seen = failed
    assert second == 3  # 190 MB vs 100: over 1.5 at 2 s already, but judged from one interval in
    assert str(rule) == "memory_mb_ratio < 1.5" and observed == pytest.approx(1.9)
    assert "green (target) memory_mb 190.0" in seen and "blue (baseline) memory_mb 100.0" in seen


def test_no_sample_is_no_data():
    class Down:
        def sample(self, now):
            raise OSError("runtime down")

    watch = ResourceWatch((parse_rule("memory_mb < 1"),), Down(), "green", "blue", 0.0, lambda: 10.0)
    assert watch.check() is None


def test_a_leaking_target_is_rolled_back_by_a_memory_rule(runtime, endpoint, tmp_path):  # noqa: F811
    record = tmp_path / "record.jsonl"
    result = rollout(runtime, stage(tmp_path, endpoint, {"LEAK_KB_PER_REQUEST": "1024"}), "--to", "green",
                     "--steps", "10,50,100", "--interval", "3s", "--min-requests", "5",
                     "--rule", "memory_mb_ratio < 1.5", *GOOD, *load_args(40), record=record)
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["decision"] == "rolled back" and summary["failure"]["judge"] == "resource"
    assert summary["failure"]["what"] == "memory_mb_ratio < 1.5" and "green (target) memory_mb" in summary["failure"]["message"]
    assert {n: s for n, s in runtime.status()["endpoints"][endpoint]["traffic"].items() if s} == {"blue": 100}


def test_a_good_target_passes_its_memory_rule(runtime, endpoint, tmp_path):  # noqa: F811
    result = rollout(runtime, stage(tmp_path, endpoint), "--to", "green", "--steps", "50,100", "--interval", "3s",
                     "--min-requests", "5", "--rule", "memory_mb_ratio < 1.5", *GOOD, *load_args(20))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decision"] == "promoted"


# --- Azure: the deployments' utilisation metrics -----------------------------------------------------------

def test_azure_resources_read_each_deployments_utilisation_per_instance(mocker):
    from datetime import UTC, datetime, timedelta

    from azure.monitor.querymetrics import MetricsQueryResult
    from azure.monitor.querymetrics._models import Metric, MetricValue, TimeSeriesElement

    from mlcanary.rollout.resources import DEPLOYMENT_NAMESPACE, AzureResources

    def series(_deployment, points, field):
        return TimeSeriesElement(metadata_values={"instanceid": "i"}, data=[MetricValue(timestamp=t, **{field: v})
                                                                             for t, v in points])

    def result(name, timeseries):  # the shape azure-monitor-querymetrics returns
        metric = Metric(id=f"x/providers/Microsoft.Insights/metrics/{name}", type="Microsoft.Insights/metrics",
                        name=name, unit="Percent", timeseries=timeseries, display_description="")
        return MetricsQueryResult(timespan="", metrics=[metric], granularity=timedelta(minutes=1))

    endpoint_id = ("/subscriptions/sub/resourceGroups/ml-rg/providers/Microsoft.MachineLearningServices/workspaces/"
                   "ml-ws/onlineEndpoints/fraud-scorer")
    minute = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

    def instances(values):  # one series per instance (dimension instanceId), Average per minute
        return [series("", [(minute, v)], field="average") for v in values]

    client = mocker.Mock()
    client.query_resources.side_effect = [
        [result("CpuUtilizationPercentage", instances([40.0, 60.0])),
         result("CpuMemoryUtilizationPercentage", instances([70.0, 80.0]))],
        [result("CpuUtilizationPercentage", instances([50.0])),
         result("CpuMemoryUtilizationPercentage", instances([40.0]))],
    ]
    clock = [minute + timedelta(minutes=2, seconds=30)]
    resources = AzureResources(client, endpoint_id, ["green", "blue"], clock=lambda: clock[0])
    values = resources.values()
    assert values == {"green": {"cpu_percent": 50.0, "memory_mb": 75.0}, "blue": {"cpu_percent": 50.0, "memory_mb": 40.0}}
    green_call = client.query_resources.call_args_list[0].kwargs
    assert green_call == {
        "resource_ids": [f"{endpoint_id}/deployments/green"], "metric_namespace": DEPLOYMENT_NAMESPACE,
        "metric_names": ["CpuUtilizationPercentage", "CpuMemoryUtilizationPercentage"],
        "timespan": (minute, minute + timedelta(minutes=1)), "granularity": timedelta(minutes=1),
        "aggregations": ["Average"], "filter": "instanceId eq '*'"}
    clock[0] += timedelta(seconds=20)  # the same minute: not asked again
    assert resources.values() == values and client.query_resources.call_count == 2
    ratio = observe_resources(parse_rule("memory_mb_ratio < 1.5"), values["green"], values["blue"])
    assert ratio == pytest.approx(1.875)


def test_azure_memory_rules_that_cannot_be_judged_are_refused():
    from mlcanary.rollout.resources import azure_resource_problem

    same = {"green": "Standard_DS3_v2", "blue": "Standard_DS3_v2"}
    assert azure_resource_problem((parse_rule("memory_mb_ratio < 1.5"), parse_rule("cpu_percent < 90")), same) is None
    assert "not MB" in azure_resource_problem((parse_rule("memory_mb < 900"),), same)
    assert "same instance type" in azure_resource_problem(
        (parse_rule("memory_mb_ratio < 1.5"),), {"green": "Standard_DS4_v2", "blue": "Standard_DS3_v2"})


def test_a_values_source_is_judged_from_an_interval_in():
    class Values:
        def values(self):
            return {"green": {"memory_mb": 90.0}, "blue": {"memory_mb": 40.0}}

    clock = [0.0]
    watch = ResourceWatch((parse_rule("memory_mb_ratio < 1.5"),), Values(), "green", "blue", 60.0, lambda: clock[0])
    assert watch.check() is None
    clock[0] = 60.0
    rule, observed, _ = watch.check()
    assert observed == pytest.approx(2.25)
