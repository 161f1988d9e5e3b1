"""How long the everyday commands take to start, as a ratio to Python importing click and rich.

Floor: a fresh Python that imports click and rich.console (what any command with rich output pays).
Commands: `mlcanary --version`, and against a runtime this script starts in a temporary state
directory with the first local sample stage: `local status`, `local keys`, `local metrics`, `invoke`,
`logs`, the rollout steering verbs (`rollout status`, `history`, `pause`, ...: against a rollout that
ended promoted, so the steering ones say no rollout is running), and `local stop` / `local down` where nothing runs (the running one is kept for
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
    """The steering verbs of `mlcanary rollout` (status, history, pause, ...), without its default `run`."""
    from mlcanary.rollout_steer_cli import rollout

    return sorted(rollout.commands.keys() - {"run"})


def finished_rollout(state: Path) -> None:
    """A rollout of green that ended promoted, in `state`: its hold document and history, as the lease
    module writes them when a rollout ends, so `status` and `history` show it and the verbs that steer
    say no rollout is running (and change nothing: they are repeatable)."""
    from mlcanary.local_runtime import lease

    directory = lease.lease_dir(state)
    lease.acquire(directory, ENDPOINT, {
        "id": "r-bench", "target": "green", "baseline": "blue", "plan": {"steps": ["green 10", "green 100"]},
        "stepIndex": 1, "step": "green 100", "traffic": {"blue": 0, "green": 100}})
    lease.finish(directory, ENDPOINT, "r-bench", "promoted", "green takes all traffic")


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
        wait = [] if verb in ("status", "history") else ["--timeout", "0"]
        table[f"rollout {verb}"] = (["rollout", verb, ENDPOINT, *wait], running)
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
        finished_rollout(running)
        table = commands(running, idle)
        for name, (arguments, state) in table.items():  # warm the file cache; each must answer, not fail on usage
            done = subprocess.run([*mlcanary(), *arguments], cwd=ROOT, capture_output=True, text=True,
                                  env={**env, "MLCANARY_STATE_DIR": str(state)})
            if done.returncode not in (0, 1) or "Traceback" in done.stderr:
                sys.exit(f"{name} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
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
