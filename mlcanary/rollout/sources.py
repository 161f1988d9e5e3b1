"""Where the judges' counts come from: the local runtime's Prometheus metrics, or Azure Monitor.

A source's `read()` returns cumulative counts per deployment (since some fixed start); the runner
turns consecutive readings into closed windows. Only closed data is ever returned.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
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

    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"requests": 0, "errors": 0, "errors_5xx": 0})
    cumulative: dict[tuple[str, str], dict[float, int]] = defaultdict(dict)
    series: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("endpoint") != endpoint:
                continue
            deployment = labels["deployment"]
            if sample.name in COUNTERS:
                into = counts[(deployment, COUNTERS[sample.name])]
                code, count = int(labels["code"]), int(sample.value)
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
MINUTE = timedelta(minutes=1)
# Endpoint metrics land in under a minute: a minute is read once it has been over for this long.
LANDING_DELAY = timedelta(minutes=1)


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


class AzureMonitorSource:
    """Endpoint metrics from Azure Monitor (`azure-monitor-querymetrics`), per closed minute.

    `RequestsPerMinute` (Total) split by `deployment` and `statusCodeClass`; `RequestLatency_P90/_P99`
    (Average) by `deployment`. Minute percentiles cannot be pooled: a window's percentile is the
    request-weighted mean of its minutes'. There is no latency histogram, so the sequential judge's
    slow-request test does not run on Azure; latency is judged by `--rule` (e.g. latency_p90_ratio).
    """

    kind = "Azure Monitor"

    def __init__(self, client: Any, endpoint_id: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.client = client
        self.endpoint_id = endpoint_id
        self.clock = clock
        self.next_minute = _floor_minute(clock())  # only minutes that start after the rollout began
        self.total: Snapshot = {}

    def read(self) -> Snapshot:
        closed_until = _floor_minute(self.clock() - LANDING_DELAY)
        if closed_until <= self.next_minute:
            return dict(self.total)
        timespan = (self.next_minute, closed_until)
        try:
            requests = self._query([REQUESTS], ["Total"], "deployment eq '*' and statusCodeClass eq '*'", timespan)
            latency = self._query(list(LATENCIES.values()), ["Average"], "deployment eq '*'", timespan)
        except Exception as err:  # azure-core's HttpResponseError, ClientAuthenticationError, ...
            raise SourceError(f"Azure Monitor query for {self.endpoint_id} failed: {err}") from None
        minutes: dict[str, dict[datetime, dict]] = defaultdict(lambda: defaultdict(
            lambda: {"requests": 0, "errors": 0, "errors_5xx": 0, "percentiles": {}}))
        for series in _series(requests, REQUESTS):
            meta = {k.lower(): v for k, v in series.metadata_values.items()}
            deployment, status_class = meta.get("deployment"), (meta.get("statuscodeclass") or "").lower()
            for point in series.data:
                count = int(point.total or 0)
                minute = minutes[deployment][point.timestamp]
                minute["requests"] += count
                minute["errors"] += count if status_class in ("4xx", "5xx") else 0
                minute["errors_5xx"] += count if status_class == "5xx" else 0
        for q, name in LATENCIES.items():
            for series in _series(latency, name):
                deployment = {k.lower(): v for k, v in series.metadata_values.items()}.get("deployment")
                for point in series.data:
                    if point.average is not None:
                        minutes[deployment][point.timestamp]["percentiles"][q] = float(point.average)
        for deployment, by_minute in minutes.items():
            if deployment is None:
                continue
            total = self.total.get(deployment, DeploymentCounts()).live
            for minute in by_minute.values():
                percentiles = minute.pop("percentiles")
                total = total + Counts(**minute, percentiles_ms=percentiles if minute["requests"] else {})
            self.total[deployment] = DeploymentCounts(total)
        self.next_minute = closed_until
        return dict(self.total)

    def _query(self, names: list[str], aggregations: list[str], filter_: str, timespan) -> list:
        return self.client.query_resources(
            resource_ids=[self.endpoint_id], metric_namespace=METRIC_NAMESPACE, metric_names=names,
            timespan=timespan, granularity=MINUTE, aggregations=aggregations, filter=filter_,
        )


def _series(results: list, metric_name: str):
    for result in results:
        for metric in result.metrics:
            if metric.name == metric_name:
                yield from metric.timeseries


def azure_source(endpoint_id: str, region: str) -> AzureMonitorSource:
    """A source with the default Azure credential chain; `region` picks the regional metrics endpoint."""
    from azure.identity import DefaultAzureCredential
    from azure.monitor.querymetrics import MetricsClient

    client = MetricsClient(f"https://{region}.metrics.monitor.azure.com", DefaultAzureCredential())
    return AzureMonitorSource(client, endpoint_id)
