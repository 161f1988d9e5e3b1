"""Per-deployment request metrics, exposed in the Prometheus text format."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def label(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class DeploymentMetrics:
    def __init__(self) -> None:
        self.requests: Counter[int] = Counter()  # status code -> count, live and pinned requests
        self.mirrored: Counter[int] = Counter()  # status code -> count, mirror copies
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, status: int, seconds: float, mirrored: bool = False) -> None:
        (self.mirrored if mirrored else self.requests)[status] += 1
        if not mirrored:
            self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.latency_sum += seconds

    def as_json(self) -> dict:
        return {"requests": {str(c): n for c, n in self.requests.items()},
                "mirrored": {str(c): n for c, n in self.mirrored.items()},
                "buckets": list(self.bucket_counts), "latencySum": self.latency_sum}

    @classmethod
    def from_json(cls, document: dict) -> DeploymentMetrics:
        """Counts as `as_json` wrote them; ValueError/TypeError/KeyError if they are not."""
        restored = cls()
        for attribute in ("requests", "mirrored"):
            counts = {int(code): int(n) for code, n in document[attribute].items()}
            if any(n < 0 for n in counts.values()):
                raise ValueError(f"negative {attribute} count")
            getattr(restored, attribute).update(counts)
        buckets = [int(n) for n in document["buckets"]]
        if len(buckets) != len(restored.bucket_counts) or any(n < 0 for n in buckets):
            raise ValueError(f"expected {len(restored.bucket_counts)} latency buckets of counts")
        restored.bucket_counts = buckets
        restored.latency_sum = float(document["latencySum"])
        return restored

    def summary(self) -> dict:
        return {
            "requests": sum(self.requests.values()),
            "errors": sum(n for code, n in self.requests.items() if code >= 400),
            "mirrored": sum(self.mirrored.values()),
            "mirrorErrors": sum(n for code, n in self.mirrored.items() if code >= 400),
        }


class Metrics:
    def __init__(self) -> None:
        self.by_deployment: dict[tuple[str, str], DeploymentMetrics] = defaultdict(DeploymentMetrics)
        self.malformed: Counter[str] = Counter()  # endpoint -> requests that were not valid HTTP

    def malformed_request(self, endpoint: str) -> None:
        self.malformed[endpoint] += 1

    def of(self, endpoint: str, deployment: str) -> DeploymentMetrics:
        return self.by_deployment[(endpoint, deployment)]

    def forget(self, endpoint: str, deployment: str | None = None) -> None:
        """Drop the counts of a deleted (or re-created) deployment, or of a whole endpoint."""
        for key in [k for k in self.by_deployment if k[0] == endpoint and deployment in (None, k[1])]:
            del self.by_deployment[key]

    def as_json(self) -> dict:
        """What `local stop` keeps, so counts go on after `local start` as Azure's metrics do."""
        return {"deployments": [{"endpoint": e, "deployment": d, **m.as_json()}
                                for (e, d), m in sorted(self.by_deployment.items())]}

    @classmethod
    def from_json(cls, document: dict) -> Metrics:
        restored = cls()
        for record in document["deployments"]:
            restored.by_deployment[(str(record["endpoint"]), str(record["deployment"]))] = \
                DeploymentMetrics.from_json(record)
        return restored

    def prometheus(self) -> str:
        lines = self._counter(
            "mlcanary_requests_total", "Requests answered by a deployment (live and header-pinned).", "requests")
        lines += self._counter(
            "mlcanary_mirrored_requests_total", "Mirror copies sent to a deployment, by its status code.", "mirrored")
        lines += [
            "# HELP mlcanary_request_duration_seconds Time to answer live and pinned requests.",
            "# TYPE mlcanary_request_duration_seconds histogram",
        ]
        for (endpoint, deployment), m in sorted(self.by_deployment.items()):
            labels = f'endpoint="{label(endpoint)}",deployment="{label(deployment)}"'
            cumulative = 0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], m.bucket_counts):
                cumulative += count
                lines.append(f'mlcanary_request_duration_seconds_bucket{{{labels},le="{bound}"}} {cumulative}')
            lines.append(f"mlcanary_request_duration_seconds_sum{{{labels}}} {m.latency_sum:.6f}")
            lines.append(f"mlcanary_request_duration_seconds_count{{{labels}}} {cumulative}")
        lines += [
            "# HELP mlcanary_malformed_requests_total Requests to a scoring URI that were not valid HTTP (answered 400).",
            "# TYPE mlcanary_malformed_requests_total counter",
            *(f'mlcanary_malformed_requests_total{{endpoint="{label(e)}"}} {n}' for e, n in sorted(self.malformed.items())),
        ]
        return "\n".join(lines) + "\n"

    def _counter(self, name: str, description: str, attribute: str) -> list[str]:
        lines = [f"# HELP {name} {description}", f"# TYPE {name} counter"]
        for (endpoint, deployment), m in sorted(self.by_deployment.items()):
            for code, count in sorted(getattr(m, attribute).items()):
                lines.append(f'{name}{{endpoint="{label(endpoint)}",deployment="{label(deployment)}",code="{code}"}} {count}')
        return lines
