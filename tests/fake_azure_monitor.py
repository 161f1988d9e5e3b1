"""A stand-in for Azure Monitor's metrics (and the two ARM reads the rollout makes), keeping the rules
that break a naive client:

- Metric definitions are served by ARM (`{resource}/providers/Microsoft.Insights/metricDefinitions`,
  api-version 2018-01-01) with `primaryAggregationType`, `supportedAggregationTypes` and dimensions.
  For the online endpoint metrics the values follow Microsoft's table ("Supported metrics for
  Microsoft.MachineLearningServices/workspaces/onlineEndpoints"): `RequestsPerMinute` is listed
  with aggregation Average and dimensions deployment, statusCode, statusCodeClass, modelStatusCode;
  `RequestLatency_P50/P90/P95/P99` with Average and dimension deployment.
- A query for an aggregation the definition does not support is refused.
- The metrics host is regional (`https://<region>.metrics.monitor.azure.com`) and answers only for
  resources of its region.
- `query_resources` returns at most `max_results` time series per metric, 10 when a filter is given
  and no `max_results` (azure-monitor-querymetrics `_patch.py`: "Defaults to 10"; `top` on the wire),
  the largest first: the small series (the errors) are the ones dropped.
- Points land late: each point becomes visible only at its `lands_at` time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from azure.core.exceptions import HttpResponseError
from azure.monitor.querymetrics import MetricsQueryResult
from azure.monitor.querymetrics._models import Metric, MetricValue, TimeSeriesElement

MINUTE = timedelta(minutes=1)


def microsoft_definitions(requests_aggregations=("Average",), requests_dimensions=(
        "deployment", "statusCode", "statusCodeClass", "modelStatusCode")) -> list[dict]:
    def definition(name, aggregations, dimensions):
        return {"name": {"value": name, "localizedValue": name}, "unit": "Count" if name == "RequestsPerMinute" else "Milliseconds",
                "primaryAggregationType": aggregations[0], "supportedAggregationTypes": list(aggregations),
                "metricAvailabilities": [{"timeGrain": "PT1M", "retention": "P93D"}],
                "dimensions": [{"value": d, "localizedValue": d} for d in dimensions]}

    return [definition("RequestsPerMinute", requests_aggregations, requests_dimensions),
            *(definition(f"RequestLatency_{p}", ("Average",), ("deployment",)) for p in ("P50", "P90", "P95", "P99"))]


@dataclass
class Point:
    minute: datetime
    deployment: str
    status_class: str | None  # None for latency metrics
    value: float
    lands_at: datetime


class FakeArm:
    """The two ARM reads: the endpoint (location, traffic maps) or its workspace, and metric definitions."""

    def __init__(self, endpoint_id: str, location: str | None, workspace_location: str = "westus2",
                 definitions: list[dict] | None = None, traffic=None, mirror=None):
        self.endpoint_id, self.location, self.workspace_location = endpoint_id, location, workspace_location
        self.definitions = microsoft_definitions() if definitions is None else definitions
        self.traffic, self.mirror = traffic or {}, mirror or {}
        self.calls: list[tuple] = []

    def get(self, resource_id: str, *, api_version: str | None = None, params: dict | None = None):
        self.calls.append((resource_id, api_version, params))
        if resource_id == f"{self.endpoint_id}/providers/Microsoft.Insights/metricDefinitions":
            assert api_version == "2018-01-01"
            return {"value": self.definitions}
        if resource_id == self.endpoint_id:
            if self.location is None:
                return None
            return {"location": self.location, "properties": {"traffic": self.traffic, "mirrorTraffic": self.mirror}}
        if resource_id == self.endpoint_id.split("/onlineEndpoints/")[0]:
            return {"location": self.workspace_location}
        return None


class FakeAzureMonitor:
    def __init__(self, host: str, regions: dict[str, str], definitions: list[dict], clock):
        self.host, self.regions, self.clock = host, regions, clock
        self.definitions = {d["name"]["value"]: d for d in definitions}
        self.points: dict[str, list[Point]] = defaultdict(list)
        self.queries: list[dict] = []

    def add(self, metric: str, minute: datetime, deployment: str, value: float, status_class: str | None = None,
            late: timedelta = timedelta(seconds=30)) -> None:
        self.points[metric].append(Point(minute, deployment, status_class, value, minute + MINUTE + late))

    def query_resources(self, *, resource_ids, metric_namespace, metric_names, timespan=None, granularity=None,
                        aggregations=None, max_results=None, order_by=None, filter=None, roll_up_by=None):
        self.queries.append({"metric_names": list(metric_names), "aggregations": list(aggregations or []),
                             "max_results": max_results, "filter": filter, "timespan": timespan})
        (resource_id,) = resource_ids
        region = self.regions.get(resource_id)
        if region is None or self.host != f"https://{region}.metrics.monitor.azure.com":
            raise HttpResponseError(message=f"(ResourceNotFound) {resource_id} is not served by {self.host}")
        start, end = timespan
        top = max_results if max_results is not None else (10 if filter else None)
        now = self.clock()
        metrics = []
        for name in metric_names:
            definition = self.definitions[name]
            for aggregation in aggregations:
                if aggregation not in definition["supportedAggregationTypes"]:
                    raise HttpResponseError(message=f"(BadRequest) Aggregation {aggregation} is not supported for "
                                                    f"metric {name}; supported: {definition['supportedAggregationTypes']}")
            by_series: dict[tuple, list[Point]] = defaultdict(list)
            for point in self.points[name]:
                if start <= point.minute < end and point.lands_at <= now:
                    by_series[(point.deployment, point.status_class)].append(point)
            ranked = sorted(by_series.items(), key=lambda item: -sum(p.value for p in item[1]))
            field = aggregations[0].lower()
            timeseries = []
            for (deployment, status_class), points in ranked[:top]:
                metadata = {"deployment": deployment}
                if status_class:
                    metadata["statusCodeClass"] = status_class
                timeseries.append(TimeSeriesElement(metadata_values=metadata, data=[
                    MetricValue(timestamp=p.minute, **{field: p.value}) for p in sorted(points, key=lambda p: p.minute)]))
            metrics.append(Metric(id=f"{resource_id}/providers/Microsoft.Insights/metrics/{name}",
                                  type="Microsoft.Insights/metrics", name=name, unit="Count", timeseries=timeseries,
                                  display_description=""))
        return [MetricsQueryResult(timespan="", metrics=metrics, granularity=granularity)]
