"""Rehearse a rollout on the local target: apply each stage, send probe traffic, compare with the plan."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from mlcanary.components.spec import NAMESPACE, StackSpec, load_stack_config
from mlcanary.components.stage_file import namespaced, project_dir_of, read_stage_file
from mlcanary.local_runtime.apply import apply_stage
from mlcanary.local_runtime.client import RuntimeClient
from mlcanary.local_runtime.protocol import PIN_HEADER


@dataclass
class DeploymentReport:
    name: str
    configured_live: int
    configured_mirror: int
    answered: int = 0
    mirrored: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    compared: int = 0  # its mirrored answers compared with the live answers (pairing.py)
    agreed: int = 0

    def observed_live(self, total: int) -> float:
        return 100.0 * self.answered / total if total else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]


@dataclass
class StageReport:
    stage: str
    requests: int
    deployments: list[DeploymentReport]
    unrouted: int = 0  # answers from no deployment (e.g. 404 when nothing is live)


def load_stage(path: Path) -> StackSpec:
    return load_stack_config(namespaced(read_stage_file(path), NAMESPACE), project_dir_of(path))


def probe(client: RuntimeClient, endpoint: str, body: bytes, count: int, compare: dict | None = None) -> StageReport:
    """`compare` ({"comparePath", "outputTolerance"}): compare the mirror's answers with the live ones."""
    status = client.status()["endpoints"][endpoint]
    mirrored_to = [n for n, share in status["mirrorTraffic"].items() if share]
    if compare and mirrored_to:
        client.set_comparison(endpoint, compare["comparePath"], compare["outputTolerance"])
    pairs_before = _pairs(client, endpoint) if compare and mirrored_to else {}
    key = client.keys(endpoint)["primaryKey"]
    before = {n: d["metrics"] for n, d in status["deployments"].items()}
    reports = {
        name: DeploymentReport(name, status["traffic"].get(name, 0), status["mirrorTraffic"].get(name, 0))
        for name in status["deployments"]
    }
    report = StageReport("", count, list(reports.values()))
    session = requests.Session()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for _ in range(count):
        started = time.perf_counter()
        answer = session.post(status["scoringUri"], data=body, headers=headers, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        deployment = reports.get(answer.headers.get(PIN_HEADER, ""))
        if deployment is None:
            report.unrouted += 1
            continue
        deployment.answered += 1
        deployment.latencies_ms.append(elapsed)
        deployment.errors += answer.status_code != 200
    _collect_mirrored(client, endpoint, before, reports)
    if compare and mirrored_to:
        _collect_pairs(client, endpoint, pairs_before, reports)
        client.stop_comparison(endpoint)
    return report


def _pairs(client: RuntimeClient, endpoint: str) -> dict[str, tuple[int, int, int]]:
    """Per mirror deployment: (compared, agreed, not compared) so far."""
    totals: dict[str, tuple[int, int, int]] = {}
    for pair in client.answers(endpoint)["pairs"]:
        c, a, n = totals.get(pair["mirror"], (0, 0, 0))
        totals[pair["mirror"]] = (c + pair["compared"], a + pair["agreed"], n + pair["notCompared"])
    return totals


def _collect_pairs(client: RuntimeClient, endpoint: str, before: dict, reports: dict) -> None:
    """A pair is compared once both answers are in: wait until every mirrored request is accounted for."""
    deadline = time.monotonic() + 10
    while True:
        now = _pairs(client, endpoint)
        done = all(sum(now.get(n, (0, 0, 0))) - sum(before.get(n, (0, 0, 0))) >= reports[n].mirrored
                   for n in now if n in reports)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for name, (compared, agreed, _) in now.items():
        if name in reports:
            start = before.get(name, (0, 0, 0))
            reports[name].compared, reports[name].agreed = compared - start[0], agreed - start[1]


def _collect_mirrored(client: RuntimeClient, endpoint: str, before: dict, reports: dict) -> None:
    """Mirror copies run in the background: read the counts once they stop moving."""
    last = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = {n: d["metrics"] for n, d in client.status()["endpoints"][endpoint]["deployments"].items()}
        if now == last:
            break
        last = now
        time.sleep(0.2)
    for name, metrics in (last or {}).items():
        if name in reports:
            start = before.get(name, {})
            reports[name].mirrored = metrics["mirrored"] - start.get("mirrored", 0)
            reports[name].errors += metrics["mirrorErrors"] - start.get("mirrorErrors", 0)


def rehearse(
    stages: list[tuple[Path, StackSpec]], client: RuntimeClient, body: bytes, count: int,
    progress: Callable[[str], None] = lambda _: None,
    completed: Callable[[StageReport], None] = lambda _: None,
    compare: dict | None = None,
) -> list[StageReport]:
    """Apply each (stage file, validated spec) in order and probe it; validate them all before calling this.

    `completed` gets each stage's report as soon as that stage is done, so it can be shown at once.
    """
    reports = []
    for path, spec in stages:
        progress(f"{path.name}: applying")
        apply_stage(spec, client, lambda message, name=path.name: progress(f"{name}: {message}"), stage=str(path))
        progress(f"{path.name}: sending {count} probe requests")
        report = probe(client, spec.endpoint.name, body, count, compare)
        report.stage = path.name
        reports.append(report)
        completed(report)
    return reports
