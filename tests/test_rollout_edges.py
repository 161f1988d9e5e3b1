"""The rollout's local edge without a network: the local runtime's Prometheus text. (Azure Monitor and
the Pulumi applier are tested against fakes of Azure and of the Pulumi CLI: tests/test_rollout_azure_*.py.)"""

from __future__ import annotations

from mlcanary.local_runtime.metrics import Metrics
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
