"""How long the guarded reader takes to refuse hostile stage files, against reading a good one.

Baseline: reading and parsing stage 5 (the largest sample stage) with the project's YAML reader,
in the same run. Each hostile input is read the same way and must be refused; the script prints
the median time of each and its ratio to the baseline. Target: every refusal within 200x a good
stage file's read (tens of milliseconds), whatever the input stands for: an alias bomb of 9**9
strings, 3,000-deep nesting, 1 MiB of open brackets, a 2 MiB file, /dev/zero.

With --router, a second part (issue 15): a private runtime answers scoring requests and `/status`
while four clients holding the key send 1 GiB gzip bombs back to back (each refused with 413 once
100 MiB are inflated). Baseline: the same requests in the same run without the bombs; it prints
both p50s and their ratio. Target: both ratios within 10 (decompression runs off the event loop the
control plane shares; on the 2 cores of a CI machine the bombs still take CPU).

    python bench/hostile_input.py [--router]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from mlcanary.components.stage_file import StageFileError, read_stage_file

ROOT = Path(__file__).resolve().parents[1]
GOOD = ROOT / "stacks" / "stage-5-canary-green.yaml"
RUNS = 21
TARGET_RATIO = 200


def alias_bomb() -> str:
    lines = ["config:", "  mlcanary:endpoint:", "    tags:", '      a0: &a0 ["lol"]']
    lines += [f"      a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 10)]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "alias bomb (9**9 strings)": alias_bomb(),
    "3,000-deep flow lists": "config:\n  mlcanary:endpoint: {tags: " + "[" * 3000 + "]" * 3000 + "}\n",
    "1 MiB of open brackets": "config: " + "[" * (1024 * 1024 - 16),
    "2 MiB file": GOOD.read_text() + "#" * (2 * 1024 * 1024) + "\n",
    "10,001 plain values": "config:\n  tags: [" + "1, " * 10_001 + "]\n",
}


def median_ms(path: Path, refused: bool) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        try:
            read_stage_file(path)
            outcome = False
        except StageFileError:
            outcome = True
        times.append((time.perf_counter() - start) * 1000)
        if outcome != refused:
            sys.exit(f"{path}: expected {'a refusal' if refused else 'a good read'}")
    return statistics.median(times)


ROUTER_SAMPLES = 60
ROUTER_TARGET_RATIO = 10
BOMB_THREADS = 4


def gzip_bomb(size: int = 1024 ** 3) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(size // len(block))) + packer.flush()


def p50_ms(call, samples: int = ROUTER_SAMPLES) -> float:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
        time.sleep(0.01)
    return statistics.median(times)


def router_under_bombs() -> None:
    import requests

    from mlcanary.local_runtime.sandbox import private_runtime

    models = ROOT / "tests" / "models"
    with private_runtime() as client:
        client.put_endpoint("bench-bombs", "key")
        client.put_deployment("bench-bombs", "blue", {
            "code": str(models / "code"), "scoringScript": "score.py", "model": str(models / "model"),
            "instanceCount": 1, "environmentVariables": {"MODEL_NAME": "blue"}})
        client.set_traffic("bench-bombs", {"blue": 100}, {})
        uri = client.status()["endpoints"]["bench-bombs"]["scoringUri"]
        key = client.keys("bench-bombs")["primaryKey"]
        session = requests.Session()
        score = lambda: session.post(uri, data=b"{}", headers={"Authorization": f"Bearer {key}"}, timeout=60)  # noqa: E731
        status = lambda: client.status()  # noqa: E731
        baseline = (p50_ms(score), p50_ms(status))
        bomb, stop, refused = gzip_bomb(), threading.Event(), []

        def bomber() -> None:
            with requests.Session() as own:
                while not stop.is_set():
                    answer = own.post(uri, data=bomb, timeout=120, headers={
                        "Authorization": f"Bearer {key}", "Content-Encoding": "gzip", "Content-Type": "application/json"})
                    refused.append(answer.status_code)

        bombers = [threading.Thread(target=bomber) for _ in range(BOMB_THREADS)]
        for thread in bombers:
            thread.start()
        try:
            time.sleep(1)
            attacked = (p50_ms(score), p50_ms(status))
        finally:
            stop.set()
            for thread in bombers:
                thread.join()
    print(f"router with {BOMB_THREADS} clients sending 1 GiB gzip bombs ({len(refused)} refused, statuses "
          f"{sorted(set(refused))}); p50 of {ROUTER_SAMPLES} requests each:")
    worst = 0.0
    for name, before, after in (("scoring request", baseline[0], attacked[0]), ("control plane /status", baseline[1], attacked[1])):
        worst = max(worst, after / before)
        print(f"  {name:22s} baseline {before:7.2f} ms, under bombs {after:7.2f} ms, ratio {after / before:6.1f}")
    print(f"worst ratio {worst:.1f} (target <= {ROUTER_TARGET_RATIO})")


def main() -> None:
    if "--router" in sys.argv[1:]:
        router_under_bombs()
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for name, text in HOSTILE.items():
            paths[name] = Path(folder) / f"{len(paths)}.yaml"
            paths[name].write_text(text)
        paths["/dev/zero"] = Path("/dev/zero")
        baseline = median_ms(GOOD, refused=False)
        print(f"medians of {RUNS} runs; baseline: reading {GOOD.name}  {baseline:7.2f} ms")
        worst = 0.0
        for name, path in paths.items():
            elapsed = median_ms(path, refused=True)
            worst = max(worst, elapsed / baseline)
            print(f"  refused {name:30s} {elapsed:7.2f} ms   ratio {elapsed / baseline:6.1f}")
        print(f"worst ratio {worst:.1f} (target <= {TARGET_RATIO})")


if __name__ == "__main__":
    main()
