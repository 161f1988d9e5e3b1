"""How much `mlcanary check` over the seven sample stages costs beyond merely starting Python.

Floor: a fresh Python that imports pulumi, pulumi_azure_native.machinelearningservices and
pulumi_policy. Check: a fresh `mlcanary check` of the seven stage files. Both are run as
subprocesses in the same run, alternating, several times; the medians are compared.
Target: check / floor <= 1.5.

`import pulumi_azure_native.machinelearningservices` is lazy: it loads none of the module's
classes. The first attribute access loads the whole generated package (142 modules, _inputs.py
alone is 1.6 MB), which any program using one class pays. So the script also times that "loaded
floor" (the same imports plus one class access) and prints check against both.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "stacks").glob("stage-*.yaml"))
FLOOR = [sys.executable, "-c", "import pulumi, pulumi_azure_native.machinelearningservices, pulumi_policy"]
LOADED_FLOOR = [sys.executable, "-c", "import pulumi, pulumi_policy, pulumi_azure_native.machinelearningservices as ml; ml.OnlineEndpoint"]
CHECK = [sys.executable, "-m", "mlcanary.cli", "check", *STAGES]
RUNS = 7


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def main() -> None:
    commands = {"floor": FLOOR, "loaded": LOADED_FLOOR, "check": CHECK}
    for command in commands.values():
        timed(command)  # warm the file cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(RUNS):
        for name, command in commands.items():
            times[name].append(timed(command))
    floor, loaded, check = (statistics.median(times[name]) for name in commands)
    print(f"machine: {os.cpu_count()} cores; medians of {RUNS} alternating runs")
    print(f"floor:  python + import pulumi, pulumi_azure_native.machinelearningservices, pulumi_policy  {floor * 1000:6.0f} ms")
    print(f"loaded: the same + first use of one ML class (loads the package)                       {loaded * 1000:6.0f} ms")
    print(f"check:  mlcanary check over {len(STAGES)} stages                                              {check * 1000:6.0f} ms")
    print(f"ratio check / floor:  {check / floor:.2f}  (target <= 1.50; loaded / floor alone is {loaded / floor:.2f})")
    print(f"ratio check / loaded: {check / loaded:.2f}")


if __name__ == "__main__":
    main()
