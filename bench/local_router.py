"""The local target's data plane, measured in one run against the same worker.

1. Latency p50/p99 and throughput through the router vs straight to the worker (its Unix socket, what
   a client calling the worker directly gets), at concurrency 1 and 8, printed as ratios measured in
   the same run: router p50 / direct p50 and router throughput / direct (absolute figures differ across
   machines; the ratios travel better). Targets at concurrency 1: p50 <= 1.2x, throughput >= 0.85x.
   Beside them, at concurrency 1, the floor of one extra hop in Python on this machine
   (bench/floor_proxies.py: a byte pipe, and aiohttp's server with the router's worker client and
   nothing else), and each process's CPU time per request. The load average is printed before and
   after: on a shared machine the ratios move with it.
2. Split accuracy: 1,000 requests at 90/10 (target: within 1 percentage point).
3. Mirror share: 1,000 requests with 10 % mirrored (target: within 1 point).
4. Transition: the seven local sample stages applied while a client sends >= 50 requests/s
   (target: 0 failed client requests).
It starts its own runtime in a temporary state directory and stops it at the end, by PID.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlcanary.local_runtime.apply import apply_stage  # noqa: E402
from mlcanary.local_runtime.client import RuntimeClient  # noqa: E402
from mlcanary.local_runtime.rehearse import load_stage  # noqa: E402

BODY = (ROOT / "samples" / "request.json").read_bytes()
SAMPLE = ROOT / "samples" / "fraud-model"
STAGES = sorted((ROOT / "stacks" / "local").glob("stage-*.yaml"))


def deployment(count: int = 1) -> dict:
    return {"code": str(SAMPLE / "onlinescoring"), "scoringScript": "score.py", "model": str(SAMPLE / "v1" / "model"),
            "instanceCount": count, "environmentVariables": {}}


async def load(url: str, headers: dict, total: int, concurrency: int,
               unix_socket: str | None = None) -> tuple[list[float], float, int]:
    """Send `total` requests with `concurrency` in flight; latencies (ms), elapsed s, failures."""
    latencies: list[float] = []
    failures = 0
    remaining = total
    connector = aiohttp.UnixConnector(path=unix_socket, limit=0) if unix_socket else aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            nonlocal remaining, failures
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(url, data=BODY, headers=headers) as answer:
                    await answer.read()
                    failures += answer.status != 200
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started, failures


async def interleaved(contenders: dict[str, tuple[str, dict, str | None]], total: int
                      ) -> dict[str, tuple[list[float], float, int]]:
    """One request at a time, taking turns: request i goes to every contender before request i+1 goes to
    any (the first of each turn rotates), so the machine's load, which moves within seconds on a shared
    machine, weighs on every contender alike. Per contender: latencies (ms), seconds spent, failures."""
    sessions = {name: aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=unix_socket) if unix_socket
                                            else aiohttp.TCPConnector())
                for name, (_, _, unix_socket) in contenders.items()}
    results = {name: ([], 0.0, 0) for name in contenders}
    order = list(contenders)
    try:
        for i in range(total):
            for name in order[i % len(order):] + order[:i % len(order)]:
                url, headers, _ = contenders[name]
                started = time.perf_counter()
                async with sessions[name].post(url, data=BODY, headers=headers) as answer:
                    await answer.read()
                latency = time.perf_counter() - started
                latencies, spent, failures = results[name]
                latencies.append(latency * 1000)
                results[name] = (latencies, spent + latency, failures + (answer.status != 200))
    finally:
        for session in sessions.values():
            await session.close()
    return results


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_floor_proxy(kind: str, socket_path: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor_proxies.py"), kind, str(port), socket_path],
                             stdout=subprocess.PIPE, text=True)
    if proxy.stdout.readline().strip() != "ready":
        proxy.kill()
        proxy.wait()
        raise RuntimeError(f"the {kind} reference proxy did not start")
    return proxy, f"http://127.0.0.1:{port}/score"


def overhead(client: RuntimeClient) -> None:
    client.put_endpoint("bench-router", "key")
    status = client.put_deployment("bench-router", "only", deployment(1))
    client.set_traffic("bench-router", {"only": 100}, {})
    endpoint = client.status()["endpoints"]["bench-router"]
    key = client.keys("bench-router")["primaryKey"]
    worker_socket = status["sockets"][0]
    router_pid = client.pid()
    plain = {"Content-Type": "application/json"}
    routed = (endpoint["scoringUri"], {"Authorization": f"Bearer {key}", **plain}, None, router_pid)
    direct = ("http://localhost/score", plain, worker_socket, None)
    floors = [start_floor_proxy(kind, worker_socket) for kind in ("pipe", "aiohttp")]
    try:
        pipe, bare = ((url, plain, None, proxy.pid) for proxy, url in floors)
        print("1. router vs direct to the same worker (sample model). Concurrency 1: 20 rounds of 250 requests to each "
              "contender, taking turns request by request; concurrency 8: 5 rounds of 2,000, contenders alternating. "
              "Medians and best of the per-round ratios to direct")
        for concurrency, rounds, total, contenders in (
                (1, 20, 250, {"router": routed, "direct": direct, "pipe": pipe, "aiohttp": bare}),
                (8, 5, 2000, {"router": routed, "direct": direct})):
            for url, headers, unix_socket, _ in contenders.values():  # warm up
                asyncio.run(load(url, headers, 300, concurrency, unix_socket))
            figures = {name: [] for name in contenders}  # per round: (p50, p99, req/s, failures)
            cpu = dict.fromkeys(contenders, 0.0)
            for _ in range(rounds):
                if concurrency == 1:
                    before = {name: cpu_seconds(pid) for name, (_, _, _, pid) in contenders.items() if pid}
                    measured = asyncio.run(interleaved({n: c[:3] for n, c in contenders.items()}, total))
                    for name, (latencies, spent, failures) in measured.items():
                        cpu[name] += cpu_seconds(contenders[name][3]) - before[name] if name in before else 0.0
                        figures[name].append((pct(latencies, 50), pct(latencies, 99), total / spent, failures))
                    continue
                for name, (url, headers, unix_socket, pid) in contenders.items():
                    before = cpu_seconds(pid) if pid else 0.0
                    latencies, elapsed, failures = asyncio.run(load(url, headers, total, concurrency, unix_socket))
                    cpu[name] += cpu_seconds(pid) - before if pid else 0.0
                    figures[name].append((pct(latencies, 50), pct(latencies, 99), total / elapsed, failures))
            med = lambda name, i: statistics.median(f[i] for f in figures[name])  # noqa: E731
            failures = sum(f[3] for runs in figures.values() for f in runs)

            def ratios(name: str) -> tuple[list[float], list[float], list[float]]:
                pairs = list(zip(figures[name], figures["direct"]))
                return ([r[0] / d[0] for r, d in pairs], [r[1] / d[1] for r, d in pairs],
                        [r[2] / d[2] for r, d in pairs])

            p50, p99, throughput = ratios("router")
            print(f"   concurrency {concurrency}: router/direct p50 ratio {statistics.median(p50):.2f} "
                  f"(best {min(p50):.2f}), p99 ratio {statistics.median(p99):.2f}, throughput ratio "
                  f"{statistics.median(throughput):.2f} (best {max(throughput):.2f}) | failures {failures}")
            for name, what in (("pipe", "a byte pipe, no HTTP"), ("aiohttp", "aiohttp's server + the worker client")):
                if name in contenders:
                    p50, _, throughput = ratios(name)
                    print(f"      floor, {what}: p50 ratio {statistics.median(p50):.2f} (best {min(p50):.2f}), "
                          f"throughput ratio {statistics.median(throughput):.2f} (best {max(throughput):.2f}); "
                          f"{1e6 * cpu[name] / (rounds * total):.0f} us CPU per request")
            print(f"      router: {1e6 * cpu['router'] / (rounds * total):.0f} us CPU per request (its process)")
            print(f"      for reference, this machine: direct p50 {med('direct', 0):.2f} ms, {med('direct', 2):.0f} req/s; "
                  f"router p50 {med('router', 0):.2f} ms, {med('router', 2):.0f} req/s")
    finally:
        for proxy, _ in floors:
            proxy.kill()
            proxy.wait()
    client.delete_endpoint("bench-router")


def split_and_mirror(client: RuntimeClient) -> None:
    client.put_endpoint("bench-split", "key")
    for name in ("blue", "green", "shadow"):
        client.put_deployment("bench-split", name, deployment(1))
    key = client.keys("bench-split")["primaryKey"]
    uri = client.status()["endpoints"]["bench-split"]["scoringUri"]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    client.set_traffic("bench-split", {"blue": 90, "green": 10, "shadow": 0}, {"shadow": 10})
    asyncio.run(load(uri, headers, 1000, 4))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        deployments = client.status()["endpoints"]["bench-split"]["deployments"]
        if sum(d["metrics"]["mirrored"] for d in deployments.values()) >= 100:
            break
        time.sleep(0.1)
    metrics = {n: d["metrics"] for n, d in deployments.items()}
    blue, green = metrics["blue"]["requests"], metrics["green"]["requests"]
    print(f"2. split over 1,000 requests at 90/10: blue {100 * blue / 1000:.1f}%, green {100 * green / 1000:.1f}% "
          f"(error {abs(100 * green / 1000 - 10):.1f} points, target <= 1)")
    mirrored = metrics["shadow"]["mirrored"]
    print(f"3. mirror over 1,000 requests at 10%: {mirrored} mirrored = {mirrored / 10:.1f}% "
          f"(error {abs(mirrored / 10 - 10):.1f} points, target <= 1); shadow live requests: {metrics['shadow']['requests']}")
    client.delete_endpoint("bench-split")


def transition(client: RuntimeClient) -> None:
    specs = [load_stage(p) for p in STAGES]
    apply_stage(specs[0], client)
    uri = client.status()["endpoints"]["fraud-scorer"]["scoringUri"]
    headers = {"Authorization": f"Bearer {client.keys('fraud-scorer')['primaryKey']}", "Content-Type": "application/json"}
    stop = threading.Event()
    counts = {"sent": 0, "failed": 0}

    async def steady(rate: float) -> None:
        async with aiohttp.ClientSession() as session:
            async def one() -> None:
                try:
                    async with session.post(uri, data=BODY, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as a:
                        await a.read()
                        counts["failed"] += a.status != 200
                except aiohttp.ClientError:
                    counts["failed"] += 1
            tasks = []
            next_at = time.perf_counter()
            while not stop.is_set():
                tasks.append(asyncio.create_task(one()))
                counts["sent"] += 1
                next_at += 1 / rate
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.gather(*tasks)

    loader = threading.Thread(target=lambda: asyncio.run(steady(100)))
    started = time.perf_counter()
    loader.start()
    time.sleep(1)
    for spec in specs[1:]:
        apply_stage(spec, client)
        time.sleep(1)  # each stage serves a while before the next
    stop.set()
    loader.join()
    elapsed = time.perf_counter() - started
    print(f"4. transition: stages 2-7 applied under load (it starts once stage 1 has made the endpoint): {counts['sent']} requests in {elapsed:.1f} s "
          f"({counts['sent'] / elapsed:.0f} req/s, target >= 50), failed client requests: {counts['failed']} (target 0)")
    client.delete_endpoint("fraud-scorer")


def load_average() -> str:
    return "load average (1, 5, 15 min): " + ", ".join(f"{n:.2f}" for n in os.getloadavg())


def main() -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}; {load_average()}")
    with tempfile.TemporaryDirectory() as state:
        client = RuntimeClient(Path(state), metrics_address="off")  # never the user's scrape address
        client.ensure_running()
        try:
            overhead(client)
            split_and_mirror(client)
            transition(client)
        finally:
            client.shutdown()
    print(f"at the end: {load_average()}")


if __name__ == "__main__":
    main()
