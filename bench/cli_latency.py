"""How long the everyday commands take to start, as a ratio to Python importing click and rich.

Floor: a fresh Python that imports click and rich.console (what any command with rich output pays).
Commands: `mlcanary --version`, and against a runtime this script starts in a temporary state
directory with the first local sample stage: `local status`, `local keys`, `local metrics`, `invoke`,
`logs`, the rollout steering verbs the CLI has (`rollout status`, `history`, ...; read-only ones
against no rollout), and `local stop` / `local down` where nothing runs (the running one is kept for
the other commands). Each is run as a subprocess, alternating with the floor, several times; the
medians are compared. Target: each command / floor <= 2.0.
It stops the runtime it started (by `local down`, then by PID) and removes its directory.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = 7
TARGET = 2.0
FLOOR = [sys.executable, "-c", "import click, rich.console"]
STAGE = ROOT / "stacks" / "local" / "stage-1-create-blue.yaml"
REQUEST = ROOT / "samples" / "request.json"
ENDPOINT = "fraud-scorer"


def mlcanary() -> list[str]:
    script = Path(sys.executable).parent / "mlcanary"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlcanary.cli"]


def rollout_verbs() -> list[str]:
    """The steering verbs of `mlcanary rollout`, if it is a group of them (status, history, ...)."""
    from mlcanary.cli import main

    rollout = main.get_command(None, "rollout")
    return sorted(getattr(rollout, "commands", {}) or [])


def commands(running: Path, idle: Path) -> dict[str, tuple[list[str], Path]]:
    """name -> (arguments, state directory)."""
    table = {
        "--version": (["--version"], idle),
        "local status": (["local", "status"], running),
        "local keys": (["local", "keys", ENDPOINT], running),
        "local metrics": (["local", "metrics"], running),
        "invoke": (["invoke", ENDPOINT, "--request-file", str(REQUEST)], running),
        "logs": (["logs", ENDPOINT, "--deployment", "blue", "--lines", "5"], running),
        "local stop (idle)": (["local", "stop"], idle),
        "local down (idle)": (["local", "down"], idle),
    }
    for verb in rollout_verbs():
        if verb in ("status", "history"):  # read-only: repeatable; pause/resume/... change a rollout
            table[f"rollout {verb}"] = (["rollout", verb, "--stage-file", str(STAGE)], running)
    return table


def timed(command: list[str], state: Path | None = None) -> float:
    env = {**os.environ, "MLCANARY_METRICS_ADDRESS": "off"}
    if state is not None:
        env["MLCANARY_STATE_DIR"] = str(state)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="mlcanary-cli-latency-"))
    running, idle = base / "running", base / "idle"
    env = {**os.environ, "MLCANARY_METRICS_ADDRESS": "off", "MLCANARY_STATE_DIR": str(running)}
    try:
        up = subprocess.run([*mlcanary(), "local", "up", str(STAGE)], cwd=ROOT, env=env, capture_output=True, text=True)
        if up.returncode != 0:
            sys.exit(f"local up failed:\n{up.stdout}{up.stderr}")
        table = commands(running, idle)
        for arguments, state in table.values():  # warm the file cache
            timed([*mlcanary(), *arguments], state)
        times: dict[str, list[float]] = {"floor": [], **{name: [] for name in table}}
        for _ in range(RUNS):
            for name, (arguments, state) in table.items():
                times["floor"].append(timed(FLOOR))
                times[name].append(timed([*mlcanary(), *arguments], state))
        floor = statistics.median(times["floor"])
        print(f"machine: {os.cpu_count()} cores; medians of {RUNS} runs, each command alternating with the floor")
        print(f"floor: python + import click, rich.console  {floor * 1000:6.0f} ms")
        worst = 0.0
        for name in table:
            median = statistics.median(times[name])
            worst = max(worst, median / floor)
            print(f"{name:22s} {median * 1000:6.0f} ms   ratio {median / floor:4.2f}")
        print(f"worst ratio: {worst:.2f} (target <= {TARGET:.2f}): {'met' if worst <= TARGET else 'NOT met'}")
    finally:
        subprocess.run([*mlcanary(), "local", "down"], cwd=ROOT, env=env, capture_output=True)
        from mlcanary.local_runtime.client import RuntimeClient
        from mlcanary.local_runtime.sandbox import stop

        stop(RuntimeClient(running))  # by PID if it did not go down
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
