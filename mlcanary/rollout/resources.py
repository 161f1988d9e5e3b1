"""Resource rules (`memory_mb_ratio < 1.5`, `cpu_percent < 150`, ...): the target's processes against
the baseline's, so a model that leaks memory or burns CPU is caught although it answers well.

On the local target each instance of a deployment is a worker process (the inference server) with its
children; its usage is read from /proc: resident memory (statm) and CPU time (stat utime + stime). A
deployment's value is the mean per instance: memory now, CPU as % of one core over the last interval.
A rule is judged once the step has run for an interval and both sides have been sampled twice;
before that there is no data, and no data never fails nor passes a rule.

On Azure (AzureResources) the deployment's own metrics are read from Azure Monitor: CPU and memory
utilisation in % of an instance, per instance (dimension instanceId), per minute. A percentage of an
instance is not a number of MB: there `memory_mb_ratio` compares the memory percentages, which is the
MB ratio only when both deployments run on the same instance type (checked before the rollout starts),
and an absolute `memory_mb` rule cannot be judged (refused).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlcanary.components.rollout_rules import Rule
from mlcanary.rollout.rules import observe_resources

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessUsage:
    rss_bytes: int
    cpu_seconds: float


def process_tree(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """`pid` and its descendants (the inference server forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def usage(pid: int, proc: Path = Path("/proc")) -> ProcessUsage | None:
    """One process's resident memory and CPU time; None when it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        statm = (proc / str(pid) / "statm").read_text().split()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return ProcessUsage(int(statm[1]) * PAGE_BYTES, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)


def instance_usage(pid: int, proc: Path = Path("/proc")) -> ProcessUsage | None:
    """An instance: its worker process and every process under it, summed."""
    parts = [u for u in (usage(p, proc) for p in process_tree(pid, proc)) if u is not None]
    if not parts:
        return None
    return ProcessUsage(sum(u.rss_bytes for u in parts), sum(u.cpu_seconds for u in parts))


@dataclass(frozen=True)
class Sample:
    at: float
    instances: dict[int, ProcessUsage]  # per worker pid


def per_instance(older: Sample | None, newer: Sample) -> dict[str, float]:
    """{'memory_mb': mean RSS per instance, 'cpu_percent': mean % of a core since `older`} (what is known)."""
    if not newer.instances:
        return {}
    values = {"memory_mb": sum(u.rss_bytes for u in newer.instances.values()) / len(newer.instances) / 2**20}
    if older is not None and newer.at > older.at:
        both = [pid for pid in newer.instances if pid in older.instances]  # an instance restarted: not comparable
        if both:
            used = sum(max(0.0, newer.instances[p].cpu_seconds - older.instances[p].cpu_seconds) for p in both)
            values["cpu_percent"] = 100 * used / len(both) / (newer.at - older.at)
    return values


class LocalResources:
    """Samples each deployment's instances from the local runtime's status (worker pids) and /proc."""

    def __init__(self, client: Any, endpoint: str, proc: Path = Path("/proc")):
        self.client, self.endpoint, self.proc = client, endpoint, proc

    def sample(self, now: float) -> dict[str, Sample]:
        status = self.client.status().get("endpoints", {}).get(self.endpoint) or {}
        samples = {}
        for name, deployment in status.get("deployments", {}).items():
            instances = {}
            for pid in deployment.get("pids") or []:
                if pid:
                    found = instance_usage(int(pid), self.proc)
                    if found is not None:
                        instances[int(pid)] = found
            samples[name] = Sample(now, instances)
        return samples


class ResourceWatch:
    """Resource rules of a step: sampled each tick, judged over the last interval."""

    def __init__(self, rules: tuple[Rule, ...], source: Any, target: str, baseline: str, interval_s: float,
                 clock: Callable[[], float]):
        self.rules = tuple(r for r in rules if r.is_resource)
        self.source, self.target, self.baseline = source, target, baseline
        self.interval_s, self.clock = interval_s, clock
        self.history: list[dict[str, Sample]] = []
        self.step_started = clock()
        self.values: dict[str, dict[str, float]] = {}

    def start_step(self) -> None:
        self.history, self.step_started, self.values = [], self.clock(), {}

    def check(self) -> tuple[Rule, float, str] | None:
        """The first resource rule that fails now (rule, observed value, what was seen), or None."""
        if not self.rules:
            return None
        now = self.clock()
        if hasattr(self.source, "values"):  # a source of per-instance values (Azure Monitor)
            try:
                values = self.source.values()
            except Exception:  # noqa: BLE001 - a failed query: no data
                return None
            self.values = {side: values[name] for side, name in (("target", self.target), ("baseline", self.baseline))
                           if values.get(name)}
            return self._judge(now)
        try:
            self.history.append(self.source.sample(now))
        except Exception:  # noqa: BLE001 - the runtime restarting: no sample, no data
            return None
        older = next((h for h in self.history if now - _at(h) <= self.interval_s + 1e-6), None)
        self.history = self.history[self.history.index(older):] if older is not None else self.history[-1:]
        if older is self.history[-1]:
            older = None
        newest = self.history[-1]
        self.values = {side: per_instance(older.get(name) if older else None, newest[name])
                       for side, name in (("target", self.target), ("baseline", self.baseline)) if name in newest}
        return self._judge(now)

    def _judge(self, now: float) -> tuple[Rule, float, str] | None:
        if now - self.step_started < self.interval_s - 1e-6:
            return None
        target, baseline = self.values.get("target", {}), self.values.get("baseline", {})
        for rule in self.rules:
            observed = observe_resources(rule, target, baseline)
            if observed is not None and not rule.holds(observed):
                return rule, observed, self.describe()
        return None

    def describe(self) -> str:
        parts = []
        for side, name in (("target", self.target), ("baseline", self.baseline)):
            values = self.values.get(side, {})
            shown = ", ".join(f"{k} {v:.1f}" for k, v in values.items())
            parts.append(f"{name} ({side}) {shown or 'no data'}")
        return "per instance: " + "; ".join(parts)


def _at(samples: dict[str, Sample]) -> float:
    return next(iter(samples.values())).at if samples else 0.0


# --- Azure Monitor ------------------------------------------------------------------------------------------

DEPLOYMENT_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments"
# Microsoft's table of the deployments' metrics: Percent, Average, dimension instanceId, PT1M.
AZURE_METRICS = {"cpu_percent": "CpuUtilizationPercentage", "memory_mb": "CpuMemoryUtilizationPercentage"}
LANDING_DELAY = timedelta(minutes=2)


class AzureResources:
    """Per-instance CPU and memory utilisation of each deployment, the mean over its instances of the last
    closed minute's averages; asked at most once a minute (points are per minute)."""

    def __init__(self, client: Any, endpoint_id: str, deployments: list[str],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.client, self.endpoint_id, self.deployments, self.clock = client, endpoint_id, list(deployments), clock
        self._last: tuple[datetime, dict[str, dict[str, float]]] | None = None

    def values(self) -> dict[str, dict[str, float]]:
        minute = (self.clock() - LANDING_DELAY).replace(second=0, microsecond=0)
        if self._last is not None and self._last[0] == minute:
            return self._last[1]
        found = {}
        for name in self.deployments:
            results = self.client.query_resources(
                resource_ids=[f"{self.endpoint_id}/deployments/{name}"], metric_namespace=DEPLOYMENT_NAMESPACE,
                metric_names=list(AZURE_METRICS.values()), timespan=(minute, minute + timedelta(minutes=1)),
                granularity=timedelta(minutes=1), aggregations=["Average"], filter="instanceId eq '*'")
            values = {}
            for key, metric_name in AZURE_METRICS.items():
                per_instance = [point.average for result in results for metric in result.metrics
                                if metric.name == metric_name for series in metric.timeseries
                                for point in series.data if point.average is not None]
                if per_instance:
                    values[key] = sum(per_instance) / len(per_instance)
            found[name] = values
        self._last = (minute, found)
        return found


def azure_resource_problem(rules: tuple[Rule, ...], instance_types: dict[str, str | None]) -> str | None:
    """Why these resource rules cannot be judged on Azure (None when they can)."""
    for rule in rules:
        if rule.metric == "memory_mb":
            return (f"--rule {rule}: Azure reports memory as % of an instance, not MB; use memory_mb_ratio "
                    "(target against baseline on the same instance type)")
        if rule.metric == "memory_mb_ratio" and len(set(instance_types.values())) > 1:
            shown = ", ".join(f"{n} {t}" for n, t in instance_types.items())
            return (f"--rule {rule}: on Azure memory is compared as % of an instance, which is a MB ratio only on "
                    f"the same instance type; these differ ({shown})")
    return None
