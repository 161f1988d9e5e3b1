"""Per-deployment request metrics, exposed in the Prometheus text format."""

from __future__ import annotations

import bisect
import itertools
import uuid
from collections import Counter, defaultdict

from mlcanary.local_runtime.pairing import Answers

# A mirror copy the router shed (no free instance slot, or the body budget half used) is counted under
# this status in the mirror counts: the target never got it, so it is neither its request nor its error.
MIRROR_SHED_STATUS = 429
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def label(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class DeploymentMetrics:
    def __init__(self, series: str = "") -> None:
        self.series = series  # who counted from zero: a reader seeing it change knows the counts restarted
        self.requests: Counter[int] = Counter()  # status code -> count, live and pinned requests
        self.mirrored: Counter[int] = Counter()  # status code -> count, mirror copies
        self.pinned: Counter[int] = Counter()  # status code -> count, the header-pinned part of `requests`
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.pinned_bucket_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.pinned_latency_sum = 0.0

    def observe(self, status: int, seconds: float, mirrored: bool = False, pinned: bool = False) -> None:
        (self.mirrored if mirrored else self.requests)[status] += 1
        if not mirrored:
            bucket = bisect.bisect_left(BUCKETS, seconds)
            self.bucket_counts[bucket] += 1
            self.latency_sum += seconds
            if pinned:
                self.pinned[status] += 1
                self.pinned_bucket_counts[bucket] += 1
                self.pinned_latency_sum += seconds

    def as_json(self) -> dict:
        return {"requests": {str(c): n for c, n in self.requests.items()},
                "mirrored": {str(c): n for c, n in self.mirrored.items()},
                "buckets": list(self.bucket_counts), "latencySum": self.latency_sum,
                "pinned": {str(c): n for c, n in self.pinned.items()},
                "pinnedBuckets": list(self.pinned_bucket_counts), "pinnedLatencySum": self.pinned_latency_sum,
                "series": self.series}

    @classmethod
    def from_json(cls, document: dict) -> DeploymentMetrics:
        """Counts as `as_json` wrote them; ValueError/TypeError/KeyError if they are not."""
        restored = cls(str(document.get("series", "")))  # the counts go on under the series that counted them
        for attribute in ("requests", "mirrored", "pinned"):
            counts = {int(code): int(n) for code, n in document.get(attribute, {}).items()}
            if any(n < 0 for n in counts.values()):
                raise ValueError(f"negative {attribute} count")
            getattr(restored, attribute).update(counts)
        for key, attribute in (("buckets", "bucket_counts"), ("pinnedBuckets", "pinned_bucket_counts")):
            buckets = [int(n) for n in document.get(key, getattr(restored, attribute))]
            if len(buckets) != len(restored.bucket_counts) or any(n < 0 for n in buckets):
                raise ValueError(f"expected {len(restored.bucket_counts)} latency buckets of counts")
            setattr(restored, attribute, buckets)
        restored.latency_sum = float(document["latencySum"])
        restored.pinned_latency_sum = float(document.get("pinnedLatencySum", 0.0))
        return restored

    def summary(self) -> dict:
        return {
            "requests": sum(self.requests.values()),
            "errors": sum(n for code, n in self.requests.items() if code >= 400),
            "mirrored": sum(n for code, n in self.mirrored.items() if code != MIRROR_SHED_STATUS),
            "mirrorErrors": sum(n for code, n in self.mirrored.items() if code >= 400 and code != MIRROR_SHED_STATUS),
            "mirrorShed": self.mirrored.get(MIRROR_SHED_STATUS, 0),
            "pinned": sum(self.pinned.values()),
        }


class Metrics:
    def __init__(self) -> None:
        # One id per runtime process, and a number per set of counts it started: a restarted runtime
        # or a re-created deployment counts from zero under a new series, never read as a drop in traffic.
        self.start_id = uuid.uuid4().hex[:12]
        self._numbers = itertools.count(1)
        self.by_deployment: dict[tuple[str, str], DeploymentMetrics] = defaultdict(
            lambda: DeploymentMetrics(self.new_series()))
        self.answers = Answers()  # what the models answer (pairing.py): compared pairs, output numbers
        self.malformed: Counter[str] = Counter()  # endpoint -> requests that were not valid HTTP

    def new_series(self) -> str:
        return f"{self.start_id}.{next(self._numbers)}"

    def malformed_request(self, endpoint: str) -> None:
        self.malformed[endpoint] += 1

    def of(self, endpoint: str, deployment: str) -> DeploymentMetrics:
        return self.by_deployment[(endpoint, deployment)]

    def forget(self, endpoint: str, deployment: str | None = None) -> None:
        """Drop the counts of a deleted (or re-created) deployment, or of a whole endpoint."""
        for key in [k for k in self.by_deployment if k[0] == endpoint and deployment in (None, k[1])]:
            del self.by_deployment[key]
        self.answers.forget(endpoint, deployment)

    def as_json(self) -> dict:
        """What `local stop` keeps, so counts go on after `local start` as Azure's metrics do."""
        return {"deployments": [{"endpoint": e, "deployment": d, **m.as_json()}
                                for (e, d), m in sorted(self.by_deployment.items())]}

    @classmethod
    def from_json(cls, document: dict) -> Metrics:
        restored = cls()
        for record in document["deployments"]:
            counts = DeploymentMetrics.from_json(record)
            counts.series = counts.series or restored.new_series()  # kept before series existed: cannot tell
            restored.by_deployment[(str(record["endpoint"]), str(record["deployment"]))] = counts
        return restored

    def prometheus(self) -> str:
        lines = self._counter(
            "mlcanary_requests_total", "Requests answered by a deployment (live and header-pinned).", "requests")
        lines += self._counter(
            "mlcanary_mirrored_requests_total", "Mirror copies sent to a deployment, by its status code.", "mirrored")
        lines += self._counter(
            "mlcanary_pinned_requests_total",
            "The header-pinned part of mlcanary_requests_total (azureml-model-deployment: not routed by the split).",
            "pinned")
        lines += self._histogram("mlcanary_request_duration_seconds", "Time to answer live and pinned requests.",
                                 "bucket_counts", "latency_sum")
        lines += self._histogram("mlcanary_pinned_request_duration_seconds",
                                 "The header-pinned part of mlcanary_request_duration_seconds.",
                                 "pinned_bucket_counts", "pinned_latency_sum")
        lines += ["# HELP mlcanary_counts_series Who counts a deployment's requests: a new series counts from zero "
                  "(runtime restarted, deployment re-created).", "# TYPE mlcanary_counts_series gauge"]
        for (endpoint, deployment), m in sorted(self.by_deployment.items()):
            lines.append(f'mlcanary_counts_series{{endpoint="{label(endpoint)}",deployment="{label(deployment)}",'
                         f'series="{m.series}"}} 1')
        lines += self.answers.prometheus(label)
        lines += [
            "# HELP mlcanary_malformed_requests_total Requests to a scoring URI that were not valid HTTP (answered 400).",
            "# TYPE mlcanary_malformed_requests_total counter",
            *(f'mlcanary_malformed_requests_total{{endpoint="{label(e)}"}} {n}' for e, n in sorted(self.malformed.items())),
        ]
        return "\n".join(lines) + "\n"

    def _histogram(self, name: str, description: str, buckets: str, total: str) -> list[str]:
        lines = [f"# HELP {name} {description}", f"# TYPE {name} histogram"]
        for (endpoint, deployment), m in sorted(self.by_deployment.items()):
            labels = f'endpoint="{label(endpoint)}",deployment="{label(deployment)}"'
            cumulative = 0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], getattr(m, buckets)):
                cumulative += count
                lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
            lines.append(f"{name}_sum{{{labels}}} {getattr(m, total):.6f}")
            lines.append(f"{name}_count{{{labels}}} {cumulative}")
        return lines

    def _counter(self, name: str, description: str, attribute: str) -> list[str]:
        lines = [f"# HELP {name} {description}", f"# TYPE {name} counter"]
        for (endpoint, deployment), m in sorted(self.by_deployment.items()):
            for code, count in sorted(getattr(m, attribute).items()):
                lines.append(f'{name}{{endpoint="{label(endpoint)}",deployment="{label(deployment)}",code="{code}"}} {count}')
        return lines
