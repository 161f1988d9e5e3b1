"""What a metric source reports for one deployment over a window: requests, errors, latency."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The local runtime's histogram bounds (seconds), plus +Inf.
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)


@dataclass(frozen=True)
class Counts:
    """Requests of one deployment in a window. `buckets` are per-bucket (not cumulative) request counts
    for `LATENCY_BOUNDS`; a source without a histogram (Azure Monitor) gives per-window percentiles."""

    requests: int = 0
    errors: int = 0  # answered with a status >= 400 (the model failed, timed out, was refused)
    errors_5xx: int = 0
    buckets: tuple[int, ...] = ()
    percentiles_ms: dict[int, float] = field(default_factory=dict)  # e.g. {90: 41.0, 99: 120.0}

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.requests + other.requests, self.errors + other.errors, self.errors_5xx + other.errors_5xx,
            _add(self.buckets, other.buckets), _merge_percentiles(self, other),
        )

    def __sub__(self, older: Counts) -> Counts:
        """The counts of a window: a cumulative reading minus an earlier one (never negative)."""
        return Counts(
            max(0, self.requests - older.requests), max(0, self.errors - older.errors),
            max(0, self.errors_5xx - older.errors_5xx),
            tuple(max(0, a - b) for a, b in zip(self.buckets, older.buckets or (0,) * len(self.buckets))),
            dict(self.percentiles_ms),
        )

    def rate(self, metric: str) -> float | None:
        if not self.requests:
            return None
        return (self.errors if metric == "error_rate" else self.errors_5xx) / self.requests

    def slower_than(self, bound_s: float) -> int | None:
        """Requests slower than `bound_s`, which must be a histogram bound; None without a histogram."""
        if not self.buckets:
            return None
        index = LATENCY_BOUNDS.index(bound_s)
        return sum(self.buckets[index + 1:])

    def percentile_ms(self, q: int) -> float | None:
        """The q-th latency percentile: from the histogram as Prometheus' histogram_quantile does it
        (linear within the bucket), else the source's own percentile."""
        if self.buckets and sum(self.buckets):
            rank = q / 100 * sum(self.buckets)
            cumulative, lower = 0, 0.0
            for bound, count in zip(LATENCY_BOUNDS, self.buckets):
                if count and cumulative + count >= rank:
                    if math.isinf(bound):
                        return lower * 1000
                    return 1000 * (lower + (bound - lower) * (rank - cumulative) / count)
                cumulative += count
                lower = bound
            return lower * 1000
        return self.percentiles_ms.get(q)

    def bound_at_percentile(self, q: int) -> float | None:
        """The smallest histogram bound with at least q % of requests at or below it."""
        total = sum(self.buckets)
        if not total:
            return None
        cumulative = 0
        for bound, count in zip(LATENCY_BOUNDS, self.buckets):
            cumulative += count
            if cumulative >= q / 100 * total and not math.isinf(bound):
                return bound
        return LATENCY_BOUNDS[-2]


def counts_json(counts: Counts) -> dict:
    """A window's counts as the record keeps what a judge folded: enough to fold them again."""
    return {"requests": counts.requests, "errors": counts.errors, "errors5xx": counts.errors_5xx,
            "buckets": list(counts.buckets), "percentilesMs": {str(q): v for q, v in counts.percentiles_ms.items()}}


def counts_from_json(data) -> Counts:
    """The inverse of counts_json; ValueError names a field no source could have counted."""
    if not isinstance(data, dict):
        raise ValueError(f"counts are not an object: {data!r}")

    def whole(key: str) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} is not a whole number of at least 0: {value!r}")
        return value

    requests, errors, errors_5xx = whole("requests"), whole("errors"), whole("errors5xx")
    if errors > requests or errors_5xx > errors:
        raise ValueError(f"errors5xx {errors_5xx} <= errors {errors} <= requests {requests} does not hold")
    buckets = data.get("buckets", [])
    if not isinstance(buckets, list) or len(buckets) not in (0, len(LATENCY_BOUNDS)) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in buckets) or sum(buckets) > requests:
        raise ValueError(f"buckets must be {len(LATENCY_BOUNDS)} whole numbers (or none) adding up to at most "
                         f"the {requests} requests, got {buckets!r}")
    percentiles = data.get("percentilesMs", {})
    if not isinstance(percentiles, dict) or not all(
            k.isdigit() and 0 < int(k) < 100 and isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v) and v >= 0 for k, v in percentiles.items()):
        raise ValueError(f"percentilesMs must map percentiles (1-99) to milliseconds, got {percentiles!r}")
    return Counts(requests, errors, errors_5xx, tuple(buckets), {int(k): float(v) for k, v in percentiles.items()})


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a:
        return b
    if not b:
        return a
    return tuple(x + y for x, y in zip(a, b))


def _merge_percentiles(a: Counts, b: Counts) -> dict[int, float]:
    """Minute percentiles cannot be pooled exactly; weight them by requests (what Azure's own
    averaging over minutes does, without the weights)."""
    if not a.requests or not a.percentiles_ms:
        return dict(b.percentiles_ms)
    if not b.requests or not b.percentiles_ms:
        return dict(a.percentiles_ms)
    total = a.requests + b.requests
    return {
        q: (a.percentiles_ms[q] * a.requests + b.percentiles_ms[q] * b.requests) / total
        for q in a.percentiles_ms.keys() & b.percentiles_ms.keys()
    }


@dataclass(frozen=True)
class DeploymentCounts:
    """One deployment's requests: `live` routed by the traffic split, `mirrored` copies, and `pinned`
    (sent with the deployment header, around the split: shown, never judged as the split's evidence).
    `series` names who counted them from zero (empty when the source cannot tell)."""

    live: Counts = field(default_factory=Counts)
    mirrored: Counts = field(default_factory=Counts)
    pinned: Counts = field(default_factory=Counts)
    series: str = ""

    def __sub__(self, older: DeploymentCounts) -> DeploymentCounts:
        return DeploymentCounts(self.live - older.live, self.mirrored - older.mirrored, self.pinned - older.pinned,
                                self.series)

    def __add__(self, other: DeploymentCounts) -> DeploymentCounts:
        return DeploymentCounts(self.live + other.live, self.mirrored + other.mirrored, self.pinned + other.pinned,
                                self.series)


Snapshot = dict[str, DeploymentCounts]


class CountsRestarted(ValueError):
    """Two readings that cannot be subtracted: the counts started again from zero in between."""


def _went_down(now: Counts, before: Counts) -> bool:
    return (now.requests < before.requests or now.errors < before.errors or now.errors_5xx < before.errors_5xx
            or any(a < b for a, b in zip(now.buckets, before.buckets)))


def window(now: Snapshot, before: Snapshot) -> Snapshot:
    """The counts between two cumulative readings; CountsRestarted when a deployment's counts restarted
    (runtime restarted, counters reset, deployment re-created): that window's counts are unknown."""
    restarted = []
    for name, older in before.items():
        current = now.get(name)
        if current is None or current.series != older.series or any(
                _went_down(a, b) for a, b in ((current.live, older.live), (current.mirrored, older.mirrored),
                                              (current.pinned, older.pinned))):
            restarted.append(name)
    if restarted:
        raise CountsRestarted(f"the counts of {', '.join(sorted(restarted))} started again from zero "
                              "(runtime restarted, counters reset or deployment re-created)")
    return {name: counts - before.get(name, DeploymentCounts()) for name, counts in now.items()}
