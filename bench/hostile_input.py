"""How long the guarded reader takes to refuse hostile stage files, against reading a good one.

Baseline: reading and parsing stage 5 (the largest sample stage) with the project's YAML reader,
in the same run. Each hostile input is read the same way and must be refused; the script prints
the median time of each and its ratio to the baseline. Target: every refusal within 200x a good
stage file's read (tens of milliseconds), whatever the input stands for: an alias bomb of 9**9
strings, 3,000-deep nesting, 1 MiB of open brackets, a 2 MiB file, /dev/zero.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
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


def main() -> None:
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
