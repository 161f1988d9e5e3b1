"""Where the CPU time of `mlcanary check` of the sample Azure stages goes beyond the loaded floor.

bench/check_speed.py says how much `check` costs beyond starting Python with the SDKs; this script
says where that cost is, so the floor of what `check` does can be seen: in a fresh Python, the CPU
time (time.process_time) of each phase, as `mlcanary check` runs them (gc frozen after the imports,
as the command does):
- the loaded floor: start and import pulumi, pulumi_policy and azure-native's ML module (one class used);
- the imports `check` adds: click, pydantic, the project's modules (the spec's pydantic models are
  built as they are imported);
- per stage: read the file, validate the config (pydantic), render the program under the SDK's mocks,
  judge it (the policy pack's analyzer, and the transition rules between stages).
Then the renders again, under cProfile, their own time grouped by package: the Pulumi SDK's Output and
asyncio machinery, the stack trace the SDK takes of every resource it registers, protobuf, ... Each
phase is measured RUNS times in fresh processes; the best (least disturbed by other load) is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 3

CHILD = r'''
import gc, json, sys, time
clock = time.process_time
import pulumi, pulumi_policy, pulumi_azure_native.machinelearningservices as ml; ml.OnlineEndpoint
floor = clock()
import click, pydantic.main
libraries = clock() - floor
from mlcanary import check
from mlcanary.components import program
from mlcanary.components.render import render_program
from mlcanary.components.spec import NAMESPACE, load_stack_config
from mlcanary.components.stage_file import namespaced, project_dir_of, read_stage_file
from mlcanary.local_runtime.pulumi_access import RuntimeAccess
from mlcanary.policy_config import load_policy_config
from pathlib import Path
imports = clock() - floor
gc.freeze()
stages = sorted(Path("stacks").glob("stage-*.yaml"))
settings = load_policy_config(None, check.policy_defaults())
phases = {"read": 0.0, "validate": 0.0, "render": 0.0, "judge": 0.0}
previous, resources, configs = None, 0, []
for path in stages:
    t0 = clock(); config = read_stage_file(path)
    t1 = clock(); spec = load_stack_config(namespaced(config, NAMESPACE), project_dir_of(path))
    t2 = clock(); render = render_program(lambda: program.main(project_dir_of(path), RuntimeAccess()), config)
    t3 = clock(); check.judge_stage(str(path), spec.endpoint, render, settings, before=previous)
    t4 = clock()
    for name, spent in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
        phases[name] += spent
    previous, resources = (str(path), spec.endpoint), resources + len(render.resources)
    configs.append((path, config))
import cProfile, pstats
profile = cProfile.Profile(time.process_time)  # CPU, not waiting
profile.enable()
for path, config in configs:
    render_program(lambda: program.main(project_dir_of(path), RuntimeAccess()), config)
profile.disable()
groups = {}
for (file, _, _), (_, _, own, _, _) in pstats.Stats(profile).stats.items():
    if "/traceback.py" in file or "/linecache.py" in file or "/pathlib.py" in file:
        group = "the SDK's stack trace of each resource (traceback, linecache, pathlib)"
    elif "site-packages/" in file:
        group = file.split("site-packages/")[1].split("/")[0]
        group = {"pulumi": "pulumi SDK (Outputs, registration)", "google": "protobuf"}.get(group, group)
    elif "/asyncio/" in file or "/concurrent/" in file or "threading.py" in file:
        group = "asyncio, threads (the SDK's event loop and RPC threads)"
    elif "/mlcanary/" in file or "/wt/" in file or file.startswith(str(Path.cwd())):
        group = "mlcanary (program, components, mocks)"
    elif file == "~":
        group = "builtins (called by all of the above)"
    else:
        group = "other stdlib"
    groups[group] = groups.get(group, 0.0) + own
print(json.dumps({"floor": floor, "imports": imports, "libraries": libraries, "phases": phases, "stages": len(stages),
                  "resources": resources, "groups": groups}))
'''


def main() -> None:
    runs = []
    for _ in range(RUNS):
        done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "MLCANARY_METRICS_ADDRESS": "off"})
        if done.returncode != 0:
            sys.exit(done.stderr)
        runs.append(json.loads(done.stdout))
    best = min(runs, key=lambda run: run["floor"] + run["imports"] + sum(run["phases"].values()))
    floor, stages, resources = best["floor"], best["stages"], best["resources"]
    added = best["imports"] + sum(best["phases"].values())
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; CPU times, best of {RUNS} fresh processes")
    # No ratio here: the interpreter's exit (freeing the SDKs' modules) is outside these figures and inside
    # both of bench/check_speed.py's, which gives the ratio.
    print(f"loaded floor (start, import the SDKs, one ML class)      {floor * 1000:6.0f} ms (without the exit)")
    print(f"check adds, in all                                        {added * 1000:6.0f} ms")
    print(f"  imports: click, pydantic                                {best['libraries'] * 1000:6.0f} ms")
    print(f"  imports: mlcanary (the spec's pydantic models built)    {(best['imports'] - best['libraries']) * 1000:6.0f} ms")
    for name, spent in best["phases"].items():
        print(f"  {name + ':':10s} {stages} stages, {resources} resources{'':18s} {spent * 1000:6.0f} ms "
              f"({spent / stages * 1000:.0f} ms a stage)")
    total = sum(best["groups"].values())
    print(f"the renders' own time by package (cProfile, {total * 1000:.0f} ms with its overhead):")
    for group, spent in sorted(best["groups"].items(), key=lambda item: -item[1]):
        print(f"  {100 * spent / total:5.1f} %  {group}")


if __name__ == "__main__":
    main()
