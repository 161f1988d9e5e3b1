"""Where the judges' counts come from: the local runtime's Prometheus metrics, or Azure Monitor.

A source's `read()` returns cumulative counts per deployment (since some fixed start); the runner
turns consecutive readings into closed windows. Only closed data is ever returned.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mlcanary.rollout.counts import LATENCY_BOUNDS, Counts, DeploymentCounts, Snapshot


class SourceError(RuntimeError):
    pass


# --- the local runtime ------------------------------------------------------------------------------

COUNTERS = {"mlcanary_requests_total": "answered", "mlcanary_mirrored_requests_total": "mirrored",
            "mlcanary_pinned_requests_total": "pinned"}
HISTOGRAMS = {"mlcanary_request_duration_seconds_bucket": "answered",
              "mlcanary_pinned_request_duration_seconds_bucket": "pinned"}


def parse_local_metrics(text: str, endpoint: str) -> Snapshot:
    """The runtime's Prometheus text -> cumulative counts per deployment of `endpoint`. The runtime counts
    every answered request, and apart the header-pinned ones among them: the split's are the difference."""
    from prometheus_client.parser import text_string_to_metric_families

    from mlcanary.local_runtime.metrics import MIRROR_SHED_STATUS

    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"requests": 0, "errors": 0, "errors_5xx": 0})
    cumulative: dict[tuple[str, str], dict[float, int]] = defaultdict(dict)
    series: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("endpoint") != endpoint or "deployment" not in labels:
                continue  # another endpoint's, or an endpoint-wide series (malformed requests)
            deployment = labels["deployment"]
            if sample.name in COUNTERS:
                into = counts[(deployment, COUNTERS[sample.name])]
                code, count = int(labels["code"]), int(sample.value)
                if COUNTERS[sample.name] == "mirrored" and code == MIRROR_SHED_STATUS:
                    continue  # shed by the router, never sent to the target: no evidence either way
                into["requests"] += count
                into["errors"] += count if code >= 400 else 0
                into["errors_5xx"] += count if code >= 500 else 0
            elif sample.name in HISTOGRAMS:
                bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
                cumulative[(deployment, HISTOGRAMS[sample.name])][bound] = int(sample.value)
            elif sample.name == "mlcanary_counts_series":
                series[deployment] = labels.get("series", "")

    def buckets(key: tuple[str, str]) -> tuple[int, ...]:
        bounds = cumulative.get(key)
        if not bounds:
            return ()
        running = [bounds.get(b, 0) for b in LATENCY_BOUNDS]
        return tuple(b - a for a, b in zip([0, *running], running))

    snapshot = {}
    for deployment in {name for name, _ in counts.keys() | cumulative.keys()} | series.keys():
        answered = Counts(**counts[(deployment, "answered")], buckets=buckets((deployment, "answered")))
        pinned = Counts(**counts[(deployment, "pinned")], buckets=buckets((deployment, "pinned")))
        snapshot[deployment] = DeploymentCounts(answered - pinned, Counts(**counts[(deployment, "mirrored")]), pinned,
                                                series.get(deployment, ""))
    return snapshot


class LocalSource:
    """The local runtime's /metrics, through its client. Every reading is closed at once."""

    kind = "local runtime"

    def __init__(self, client: Any, endpoint: str):
        self.client = client
        self.endpoint = endpoint

    def read(self) -> Snapshot:
        from mlcanary.local_runtime.client import NotRunning, RuntimeRefusal

        try:
            return parse_local_metrics(self.client.metrics(), self.endpoint)
        except (NotRunning, RuntimeRefusal, OSError) as err:
            raise SourceError(f"cannot read the local runtime's metrics: {err}") from None


# --- Azure Monitor ------------------------------------------------------------------------------------

METRIC_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
REQUESTS = "RequestsPerMinute"
LATENCIES = {90: "RequestLatency_P90", 99: "RequestLatency_P99"}
# What the judges need of each metric: its dimensions. Percentiles are per-minute values (Average).
NEEDED = {REQUESTS: ("deployment", "statusCodeClass"), **{name: ("deployment",) for name in LATENCIES.values()}}
COUNT_AGGREGATIONS = ("Average", "Total")  # a per-minute count at PT1M: one point per minute and series
MINUTE = timedelta(minutes=1)
# Azure Monitor points land late (minutes): every reading re-reads this many closed minutes and
# replaces what it had, so a late point still counts. Older minutes are final.
TRAILING = timedelta(minutes=10)
# An endpoint has at most 20 deployments; status classes 1xx..5xx. A query asks for every series it
# can get (`max_results`, `top` on the wire: 10 by default with a filter) and refuses a full page.
MAX_SERIES = 20 * 5 * 2
METRIC_DEFINITIONS_API = "2018-01-01"


@dataclass(frozen=True)
class MetricQuery:
    metric: str
    aggregation: str
    filter: str


@dataclass(frozen=True)
class MonitorPlan:
    """The queries a rollout makes: one regional host, one resource, per metric its aggregation."""

    resource_id: str
    region: str
    queries: tuple[MetricQuery, ...]
    max_results: int = MAX_SERIES
    trailing: timedelta = TRAILING

    @property
    def host(self) -> str:
        return metrics_host(self.region)

    def describe(self) -> list[str]:
        lines = [f"metrics: Azure Monitor {self.host}, resource {self.resource_id}"]
        lines += [f"  {q.metric}: aggregation {q.aggregation}, filter \"{q.filter}\", interval PT1M, "
                  f"max_results {self.max_results}" for q in self.queries]
        lines.append(f"  every tick re-reads the last {self.trailing.total_seconds() / 60:g} closed minutes (points "
                     f"land late): counts of the last {self.trailing.total_seconds() / 60:g} minutes may still grow")
        return lines

    def as_json(self) -> dict:
        return {"host": self.host, "resource": self.resource_id, "region": self.region,
                "queries": [{"metric": q.metric, "aggregation": q.aggregation, "filter": q.filter,
                             "interval": "PT1M", "maxResults": self.max_results} for q in self.queries],
                "trailingMinutes": self.trailing.total_seconds() / 60}


def metrics_host(region: str) -> str:
    return f"https://{region}.metrics.monitor.azure.com"


def region_name(location: str) -> str:
    """ARM's `location` as the metrics host spells a region: 'West US 2' -> 'westus2'."""
    return location.replace(" ", "").lower()


def plan_queries(definitions: list[dict], resource_id: str, region: str) -> MonitorPlan:
    """The queries the judges need, from the endpoint's metric definitions (ARM `metricDefinitions`):
    each metric with the dimensions it must be split by, and an aggregation it supports. Microsoft's
    table lists Average for RequestsPerMinute; what the definitions say wins. Refuses, naming the
    metric, when something the judges need is not there."""
    by_name = {(d.get("name") or {}).get("value"): d for d in definitions}
    problems, queries = [], []
    for metric, dimensions in NEEDED.items():
        definition = by_name.get(metric)
        if definition is None:
            problems.append(f"{metric}: not among the endpoint's metric definitions")
            continue
        has = {(d.get("value") or "").lower() for d in definition.get("dimensions") or []}
        missing = [d for d in dimensions if d.lower() not in has]
        if missing:
            problems.append(f"{metric}: cannot be split by {', '.join(missing)} (dimensions: {sorted(has) or 'none'})")
            continue
        supported = definition.get("supportedAggregationTypes") or []
        usable = COUNT_AGGREGATIONS if metric == REQUESTS else ("Average",)
        primary = definition.get("primaryAggregationType")
        choice = primary if primary in usable and primary in supported else \
            next((a for a in usable if a in supported), None)
        if choice is None:
            problems.append(f"{metric}: supports aggregations {supported}, the judges need one of {list(usable)}")
            continue
        queries.append(MetricQuery(metric, choice, " and ".join(f"{d} eq '*'" for d in dimensions)))
    if problems:
        raise SourceError(f"Azure Monitor cannot give the judges what they need for {resource_id}:\n"
                          + "\n".join(f"  {p}" for p in problems))
    return MonitorPlan(resource_id, region, tuple(queries))


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


class AzureMonitorSource:
    """Endpoint metrics from Azure Monitor (`azure-monitor-querymetrics`), per closed minute.

    `RequestsPerMinute` split by `deployment` and `statusCodeClass`; `RequestLatency_P90/_P99` by
    `deployment`, each with the aggregation its definition supports (`plan_queries`). Minute
    percentiles cannot be pooled: a window's percentile is the request-weighted mean of its minutes'.
    There is no latency histogram, so the sequential judge's slow-request test does not run on Azure;
    latency is judged by `--rule` (e.g. latency_p90_ratio).

    Azure books a mirrored copy in the mirror deployment's metrics like a live request; a deployment
    that the endpoint mirrors to (and sends no live traffic) when a minute is first read has that
    minute's requests booked as mirrored (`mirror_state` reads the endpoint's maps from ARM).
    """

    kind = "Azure Monitor"

    def __init__(self, client: Any, plan: MonitorPlan,
                 mirror_state: Callable[[], tuple[dict, dict]] = lambda: ({}, {}),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.client = client
        self.plan = plan
        self.mirror_state = mirror_state
        self.clock = clock
        now = clock()
        # only whole minutes that start once the rollout has begun
        self.started = _floor_minute(now) + (MINUTE if now != _floor_minute(now) else timedelta(0))
        self.minutes: dict[str, dict[datetime, Counts]] = defaultdict(dict)
        self.mirrored_in: dict[datetime, frozenset[str]] = {}

    def read(self) -> Snapshot:
        closed_until = _floor_minute(self.clock())
        if closed_until <= self.started:
            return self._snapshot()
        since = max(self.started, closed_until - self.plan.trailing)
        try:
            live, mirror = self.mirror_state()
            results = {q.metric: self._query(q, (since, closed_until)) for q in self.plan.queries}
        except SourceError:
            raise
        except Exception as err:  # azure-core's HttpResponseError, ClientAuthenticationError, ArmError ...
            raise SourceError(f"Azure Monitor query for {self.plan.resource_id} failed: {err}") from None
        mirrored_now = frozenset(n.lower() for n, s in (mirror or {}).items() if s and not (live or {}).get(n))
        fresh: dict[str, dict[datetime, dict]] = defaultdict(lambda: defaultdict(
            lambda: {"requests": 0, "errors": 0, "errors_5xx": 0, "percentiles": {}}))
        requests = next(q for q in self.plan.queries if q.metric == REQUESTS)
        for series in _series(results[REQUESTS], REQUESTS):
            meta = {k.lower(): v for k, v in series.metadata_values.items()}
            deployment, status_class = meta.get("deployment"), (meta.get("statuscodeclass") or "").lower()
            for point in series.data:
                count = round(getattr(point, requests.aggregation.lower()) or 0)
                minute = fresh[deployment][point.timestamp]
                minute["requests"] += count
                minute["errors"] += count if status_class in ("4xx", "5xx") else 0
                minute["errors_5xx"] += count if status_class == "5xx" else 0
        for q, name in LATENCIES.items():
            for series in _series(results[name], name):
                deployment = {k.lower(): v for k, v in series.metadata_values.items()}.get("deployment")
                for point in series.data:
                    if point.average is not None and deployment in fresh and point.timestamp in fresh[deployment]:
                        fresh[deployment][point.timestamp]["percentiles"][q] = float(point.average)
        for deployment, by_minute in fresh.items():
            if deployment is None:
                continue
            for minute, values in by_minute.items():
                if minute < since or minute >= closed_until:
                    continue
                percentiles = values.pop("percentiles")
                self.minutes[deployment][minute] = Counts(**values, percentiles_ms=percentiles if values["requests"] else {})
                self.mirrored_in.setdefault(minute, mirrored_now)
        return self._snapshot()

    def _snapshot(self) -> Snapshot:
        snapshot = {}
        for deployment, by_minute in self.minutes.items():
            live, mirrored = Counts(), Counts()
            for minute in sorted(by_minute):
                if deployment.lower() in self.mirrored_in.get(minute, frozenset()):
                    mirrored = mirrored + by_minute[minute]
                else:
                    live = live + by_minute[minute]
            snapshot[deployment] = DeploymentCounts(live, mirrored)
        return snapshot

    def _query(self, query: MetricQuery, timespan: tuple[datetime, datetime]) -> list:
        results = self.client.query_resources(
            resource_ids=[self.plan.resource_id], metric_namespace=METRIC_NAMESPACE, metric_names=[query.metric],
            timespan=timespan, granularity=MINUTE, aggregations=[query.aggregation], filter=query.filter,
            max_results=self.plan.max_results,
        )
        count = sum(1 for _ in _series(results, query.metric))
        if count >= self.plan.max_results:
            raise SourceError(f"Azure Monitor returned {count} series of {query.metric} for "
                              f"{self.plan.resource_id}, as many as asked for: some may be missing")
        return results


def _series(results: list, metric_name: str):
    for result in results:
        for metric in result.metrics:
            if metric.name == metric_name:
                yield from metric.timeseries


# --- wiring to Azure (credentials from ARM_* like azure-native: components/arm.py) -----------------

def endpoint_region(arm: Any, endpoint_id: str) -> str:
    """The region Azure Monitor keeps the endpoint's metrics in: the endpoint's own `location`, or,
    before it exists, its workspace's (`az ml` creates endpoints in the workspace's region)."""
    endpoint = arm.get(endpoint_id)
    if endpoint is None:
        workspace_id = endpoint_id.split("/onlineEndpoints/")[0]
        endpoint = arm.get(workspace_id)
        if endpoint is None:
            raise SourceError(f"cannot find the workspace {workspace_id} to learn its region")
    return region_name(endpoint["location"])


def metric_definitions(arm: Any, resource_id: str) -> list[dict]:
    """ARM's metric definitions of a resource (supported aggregations, dimensions)."""
    body = arm.get(f"{resource_id}/providers/Microsoft.Insights/metricDefinitions",
                   api_version=METRIC_DEFINITIONS_API, params={"metricnamespace": METRIC_NAMESPACE})
    return (body or {}).get("value") or []


def monitor_plan(arm: Any, endpoint_id: str, region: str | None) -> MonitorPlan:
    """Read once at start: the region (unless given) and the metric definitions -> the queries."""
    from mlcanary.components.arm import ArmError

    try:
        region = region or endpoint_region(arm, endpoint_id)
        definitions = metric_definitions(arm, endpoint_id)
    except ArmError as err:
        raise SourceError(f"cannot prepare the Azure Monitor queries for {endpoint_id}: {err}") from None
    return plan_queries(definitions, endpoint_id, region)


def azure_source(plan: MonitorPlan, arm: Any) -> AzureMonitorSource:
    """A source on the plan's regional host, with the credential azure-native would use (ARM_*)."""
    from azure.monitor.querymetrics import MetricsClient

    from mlcanary.components.arm import azure_credential

    def mirror_state() -> tuple[dict, dict]:
        endpoint = arm.get(plan.resource_id) or {}
        properties = endpoint.get("properties") or {}
        return properties.get("traffic") or {}, properties.get("mirrorTraffic") or {}

    client = MetricsClient(plan.host, azure_credential())
    return AzureMonitorSource(client, plan, mirror_state)
