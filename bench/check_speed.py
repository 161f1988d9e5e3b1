"""How much `mlcanary check` and a no-op `local up` cost beyond merely starting Python with the SDKs.

Floor: a fresh Python that imports pulumi, pulumi_azure_native.machinelearningservices and
pulumi_policy. `import pulumi_azure_native.machinelearningservices` is lazy: it loads none of the
module's classes; the first attribute access loads the whole generated package (142 modules,
_inputs.py alone is 1.6 MB), which any program using one class pays. So the "loaded floor" is the
same imports plus one class access: what `pulumi preview` of this program would pay at least.

Measured, each as a subprocess, alternating, several times (medians compared):
- check azure: `mlcanary check` of the sample Azure stages, stacks/stage-*.yaml (target: <= 1.3 x loaded);
- check local: `mlcanary check` of the first local sample stage (target: <= 1.3 x loaded);
- local up no-op: `mlcanary local up` of that stage on a runtime already serving it (a temporary
  state directory this script starts and stops), which judges the stage and changes nothing
  (target: <= 1.3 x check local).
Each figure is given in wall-clock time and in CPU time (user + system of the process and its
children): on a machine other sessions load, the wall clock counts waiting for a core, the CPU
time does not, so the CPU ratio is the steadier one.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "stacks").glob("stage-*.yaml"))
LOCAL_STAGE = "stacks/local/stage-1-create-blue.yaml"
FLOOR = [sys.executable, "-c", "import pulumi, pulumi_azure_native.machinelearningservices, pulumi_policy"]
LOADED_FLOOR = [sys.executable, "-c",
                "import pulumi, pulumi_policy, pulumi_azure_native.machinelearningservices as ml; ml.OnlineEndpoint"]
MLCANARY = [sys.executable, "-m", "mlcanary.cli"]
RUNS = 7
TARGET = 1.3


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="mlcanary-check-speed-"))
    env = {**os.environ, "MLCANARY_STATE_DIR": str(state), "MLCANARY_METRICS_ADDRESS": "off"}
    commands = {
        "floor": FLOOR,
        "loaded": LOADED_FLOOR,
        "check azure": [*MLCANARY, "check", *STAGES],
        "check local": [*MLCANARY, "check", LOCAL_STAGE],
        "local up no-op": [*MLCANARY, "local", "up", LOCAL_STAGE],
    }
    try:
        up = subprocess.run([*MLCANARY, "local", "up", LOCAL_STAGE], cwd=ROOT, env=env, capture_output=True, text=True)
        if up.returncode != 0:
            sys.exit(f"local up failed:\n{up.stdout}{up.stderr}")
        for command in commands.values():
            timed(command, env)  # warm the file cache (and the digest cache)
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(RUNS):
            for name, command in commands.items():
                seconds, used = timed(command, env)
                wall[name].append(seconds)
                cpu[name].append(used)
    finally:
        subprocess.run([*MLCANARY, "local", "down"], cwd=ROOT, env=env, capture_output=True)
        from mlcanary.local_runtime.client import RuntimeClient
        from mlcanary.local_runtime.sandbox import stop

        stop(RuntimeClient(state))
        shutil.rmtree(state, ignore_errors=True)
    w = {name: statistics.median(values) for name, values in wall.items()}
    c = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; medians of {RUNS} alternating runs")
    print(f"{'':74s} {'wall':>9s} {'cpu':>8s}")
    rows = [("floor", "python + import pulumi, azure-native ML, pulumi_policy"),
            ("loaded", "the same + first use of one ML class (loads the package)"),
            ("check azure", f"mlcanary check of the {len(STAGES)} Azure sample stages"),
            ("check local", "mlcanary check of one local stage"),
            ("local up no-op", "mlcanary local up of the stage that already runs")]
    for name, what in rows:
        print(f"{name + ':':16s}{what:58s} {w[name] * 1000:6.0f} ms {c[name] * 1000:5.0f} ms")
    ratios = [("check azure / loaded", "check azure", "loaded"), ("check local / loaded", "check local", "loaded"),
              ("local up no-op / check local", "local up no-op", "check local")]
    for label, top, bottom in ratios:
        by_wall, by_cpu = w[top] / w[bottom], c[top] / c[bottom]
        met = lambda ratio: "met" if ratio <= TARGET else "NOT met"  # noqa: E731
        print(f"ratio {label:30s} wall {by_wall:4.2f} ({met(by_wall)})  cpu {by_cpu:4.2f} ({met(by_cpu)})  target <= {TARGET}")


if __name__ == "__main__":
    main()
