"""Soak: the local router for minutes under concurrent load, with idle gaps, worker kills and changes.

A runtime of its own (temporary state directory, short worker keep-alive so every idle gap outlasts
it), one endpoint with two deployments of the sample model, each with two instances. The load runs
in bursts; between bursts the endpoint idles longer than the keep-alive. During each burst one
event happens, in turn: a worker's gunicorn child is killed (gunicorn replaces it), a worker's
gunicorn master is killed (the runtime restarts it), live traffic moves between the deployments,
a deployment is replaced with new settings.

Prints requests, failed requests (any answer but 200, or no answer) by cause, p50/p99 latency, and
the router's memory (RSS) at start and end. Target: 0 failed requests.

Then a slow-mirror phase (issue 15): live traffic to a fast deployment, half of it mirrored to one
whose run() takes 4 s, 1 MiB bodies from 8 clients. Copies beyond what the slow instance takes at
once are shed; it prints the router's memory and open descriptors before, at peak and 10 s after.
Target: back to the level before within those 10 s, and no failed live request.

    python bench/soak.py --minutes 3 [--slow-mirror-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlcanary.local_runtime.client import RuntimeClient  # noqa: E402
from mlcanary.local_runtime.workers import KEEPALIVE_ENV  # noqa: E402

SAMPLE = ROOT / "samples" / "fraud-model"
BODY = (ROOT / "samples" / "request.json").read_bytes()
TEST_MODELS = ROOT / "tests" / "models"  # a scoring script whose run() sleeps as told (ALWAYS_SLEEP)
ENDPOINT = "soak-scorer"
MIRROR_ENDPOINT = "soak-slow-mirror"
EVENTS = ("kill a worker child", "kill a worker master", "move traffic", "replace a deployment")


def deployment(version: str, count: int = 2, **env: str) -> dict:
    return {"code": str(SAMPLE / "onlinescoring"), "scoringScript": "score.py",
            "model": str(SAMPLE / version / "model"), "instanceCount": count, "environmentVariables": env}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Result:
    requests: int = 0
    failures: collections.Counter = field(default_factory=collections.Counter)
    latencies_ms: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[q - 1] if len(self.latencies_ms) > 1 else 0.0

    def report(self) -> str:
        causes = ", ".join(f"{cause}: {n}" for cause, n in self.failures.most_common()) or "none"
        return (f"requests {self.requests}, failed {self.failed} ({causes}), p50 {self.percentile(50):.1f} ms, "
                f"p99 {self.percentile(99):.1f} ms, router RSS {self.rss_start_mib:.1f} MiB at start, "
                f"{self.rss_end_mib:.1f} MiB at end; events: "
                + ", ".join(f"{event} x{n}" for event, n in collections.Counter(self.events).items()))


class Load:
    """`clients` concurrent clients sending back to back while `running` is set."""

    def __init__(self, uri: str, key: str, clients: int, result: Result, body: bytes = BODY):
        self.uri, self.headers = uri, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.body = body
        self.clients, self.result = clients, result
        self.running, self.stopped = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self.stopped.is_set():
            if not self.running.is_set():
                await asyncio.sleep(0.02)
                continue
            started = time.perf_counter()
            try:
                async with session.post(self.uri, data=self.body, headers=self.headers,
                                        timeout=aiohttp.ClientTimeout(total=30)) as answer:
                    await answer.read()
                    if answer.status != 200:
                        self.result.failures[f"HTTP {answer.status}"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                self.result.failures[type(err).__name__] += 1
            self.result.requests += 1
            self.result.latencies_ms.append((time.perf_counter() - started) * 1000)


def _children(pid: int) -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


class Events:
    def __init__(self, client: RuntimeClient):
        self.client = client
        self.live = "blue"
        self.version = 0

    def _deployment(self, name: str) -> dict:
        return self.client.status()["endpoints"][ENDPOINT]["deployments"][name]

    def _wait_healthy(self, name: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self._deployment(name)
            if info["healthy"] == info["instances"]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not return to full health within {timeout_s:.0f} s")

    def run(self, event: str) -> None:
        if event == "kill a worker child":
            master = self._deployment(self.live)["pids"][0]
            for child in _children(master):
                os.kill(child, signal.SIGKILL)
            time.sleep(0.5)
            self._wait_healthy(self.live)
        elif event == "kill a worker master":
            master = self._deployment(self.live)["pids"][-1]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master, signal.SIGKILL)
            time.sleep(0.5)
            self._wait_healthy(self.live)
        elif event == "move traffic":
            self.live = "green" if self.live == "blue" else "blue"
            self.client.set_traffic(ENDPOINT, {self.live: 100, ("blue" if self.live == "green" else "green"): 0}, {})
        elif event == "replace a deployment":
            self.version += 1
            self.client.put_deployment(ENDPOINT, self.live, deployment("v1", 2, SOAK_GENERATION=str(self.version)))
        else:
            raise ValueError(event)


def soak(client: RuntimeClient, seconds: float, clients: int = 4, burst_s: float = 4.0, idle_s: float = 3.0,
         events: tuple[str, ...] = EVENTS) -> Result:
    """Run the soak against a started runtime; bursts of load, each with one event, then an idle gap."""
    client.put_endpoint(ENDPOINT, "key")
    client.put_deployment(ENDPOINT, "blue", deployment("v1"))
    client.put_deployment(ENDPOINT, "green", deployment("v2"))
    client.set_traffic(ENDPOINT, {"blue": 100, "green": 0}, {})
    uri = client.status()["endpoints"][ENDPOINT]["scoringUri"]
    result = Result(rss_start_mib=rss_mib(client.pid()))
    load = Load(uri, client.keys(ENDPOINT)["primaryKey"], clients, result)
    chaos = Events(client)
    load.thread.start()
    deadline = time.monotonic() + seconds
    turn = 0
    try:
        while time.monotonic() < deadline or turn < len(events):  # every event at least once
            load.running.set()
            time.sleep(burst_s / 2)
            event = events[turn % len(events)]
            chaos.run(event)
            result.events.append(event)
            turn += 1
            time.sleep(burst_s / 2)
            load.running.clear()
            time.sleep(idle_s)  # longer than the workers' keep-alive: every kept connection is closed
            result.events.append(f"idle {idle_s:g} s")
    finally:
        load.running.clear()
        load.stopped.set()
        load.thread.join(60)
    result.rss_end_mib = rss_mib(client.pid())
    client.delete_endpoint(ENDPOINT)
    return result


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slow_mirror(client: RuntimeClient, seconds: float = 20.0, clients: int = 8) -> tuple[Result, dict[str, tuple]]:
    """The slow-mirror phase; (result, {"rss_mib" | "fds": (before, peak, 10 s after)})."""
    def test_model(name: str, **env: str) -> dict:
        return {"code": str(TEST_MODELS / "code"), "scoringScript": "score.py", "model": str(TEST_MODELS / "model"),
                "instanceCount": 1, "environmentVariables": {"MODEL_NAME": name, **env}}

    client.put_endpoint(MIRROR_ENDPOINT, "key")
    client.put_deployment(MIRROR_ENDPOINT, "blue", {**test_model("blue"), "maxConcurrentRequestsPerInstance": clients})
    client.put_deployment(MIRROR_ENDPOINT, "green", test_model("green", ALWAYS_SLEEP="4"))
    client.set_traffic(MIRROR_ENDPOINT, {"blue": 100, "green": 0}, {"green": 50})
    uri = client.status()["endpoints"][MIRROR_ENDPOINT]["scoringUri"]
    pid = client.pid()
    result = Result(rss_start_mib=rss_mib(pid))
    before = (rss_mib(pid), open_fds(pid))
    peak = list(before)
    body = b'{"x": "' + b"a" * (1024 * 1024) + b'"}'
    load = Load(uri, client.keys(MIRROR_ENDPOINT)["primaryKey"], clients, result, body)
    load.thread.start()
    load.running.set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = [max(peak[0], rss_mib(pid)), max(peak[1], open_fds(pid))]
        time.sleep(0.1)
    load.running.clear()
    load.stopped.set()
    load.thread.join(60)
    time.sleep(10)
    after = (rss_mib(pid), open_fds(pid))
    result.rss_end_mib = after[0]
    mirror = client.status()["endpoints"][MIRROR_ENDPOINT]["deployments"]["green"]["metrics"]
    result.events.append(f"mirror copies {mirror['mirrored']} ({mirror['mirrorErrors']} shed or failed)")
    client.delete_endpoint(MIRROR_ENDPOINT)
    return result, {"rss_mib": (before[0], peak[0], after[0]), "fds": (before[1], peak[1], after[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keepalive", type=float, default=2.0, help="the workers' keep-alive, seconds")
    parser.add_argument("--slow-mirror-seconds", type=float, default=20.0, help="length of the slow-mirror phase (0: skip)")
    args = parser.parse_args()
    os.environ[KEEPALIVE_ENV] = str(args.keepalive)
    with tempfile.TemporaryDirectory(prefix="mlc-soak-") as state:
        client = RuntimeClient(Path(state), metrics_address="off")  # never the user's scrape address
        client.ensure_running()
        try:
            result = soak(client, args.minutes * 60, args.clients, idle_s=args.keepalive + 1.5)
            mirrored = slow_mirror(client, args.slow_mirror_seconds) if args.slow_mirror_seconds > 0 else None
        finally:
            client.shutdown()
    print(f"soak, {args.minutes:g} min, {args.clients} clients, instanceCount 2, worker keep-alive {args.keepalive:g} s:")
    print("  " + result.report())
    failed = result.failed
    if mirrored is not None:
        phase, levels = mirrored
        rss, fds = levels["rss_mib"], levels["fds"]
        print(f"slow mirror, {args.slow_mirror_seconds:g} s, 8 clients, 1 MiB bodies, 50 % mirrored to a 4 s model:")
        print(f"  live requests {phase.requests}, failed {phase.failed}; {', '.join(phase.events)}")
        print(f"  router RSS MiB before {rss[0]:.1f}, peak {rss[1]:.1f}, 10 s after {rss[2]:.1f} "
              f"(after/before {rss[2] / rss[0]:.2f})")
        print(f"  router open fds before {fds[0]}, peak {fds[1]}, 10 s after {fds[2]} (after - before {fds[2] - fds[0]:+d})")
        failed += phase.failed
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
