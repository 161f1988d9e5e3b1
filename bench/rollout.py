"""`mlcanary rollout` end to end on the local target, with its own runtime and --load traffic.

1. A bad target (30 % of requests fail): time from its first live traffic to the rollback, and the
   client requests that failed, against what the 10 % step sends it.
2. A good target: time to promote it to 100 % against the schedule's minimum (steps x interval).
It starts a runtime in a temporary state directory and stops it at the end, by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlcanary.local_runtime.client import RuntimeClient  # noqa: E402
from mlcanary.local_runtime.sandbox import stop  # noqa: E402

MODEL = ROOT / "tests" / "rollout_model"


def stage(folder: Path, name: str, green_env: dict) -> Path:
    deployment = {"model": str(MODEL / "model"), "code": str(MODEL / "code"), "scoringScript": "score.py"}
    config = {"mlcanary:target": "local", "mlcanary:endpoint": {
        "name": name, "deployments": {"blue": deployment, "green": {**deployment, "environmentVariables": green_env}},
        "traffic": {"blue": 100, "green": 0}}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


def rollout(state: Path, stage_file: Path, record: Path, args) -> tuple[int, dict, list[dict]]:
    command = [sys.executable, "-m", "mlcanary.cli", "rollout", str(stage_file), "--to", "green", "--format", "json",
               "--steps", args.steps, "--interval", f"{args.interval}s", "--min-requests", str(args.min_requests),
               "--load", str(args.rps), "--request-file", str(ROOT / "samples" / "request.json"), "--record", str(record),
               "--apply-stage"]  # the stage file creates the endpoint: the rollout may apply it
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "MLCANARY_STATE_DIR": str(state)})
    events = [json.loads(line) for line in record.read_text().splitlines()]
    return result.returncode, json.loads(result.stdout), events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rps", type=int, default=50)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--steps", default="10,25,50,100")
    parser.add_argument("--min-requests", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        client = RuntimeClient(folder / "state", metrics_address="off")  # never the user's scrape address
        client.ensure_running()
        try:
            code, summary, events = rollout(folder / "state", stage(folder, "bench-bad", {"FAIL_RATE": "0.3"}),
                                            folder / "bad.jsonl", args)
            first_live = next(e["time"] for e in events if e["event"] == "step" and e["traffic"].get("green"))
            decided = next(e for e in events if e["event"] == "decision" and e["decision"] == "rolled-back")
            clients = summary["clientRequests"]
            elapsed = decided["time"] - first_live
            print(f"bad target (30 % failing), {args.rps} req/s, interval {args.interval:g} s: exit {code}, "
                  f"{summary['failure']['judge']} judge on {summary['failure']['what']} at step {summary['step']}")
            print(f"  first live traffic -> rollback: {elapsed:.2f} s = {elapsed / args.interval:.2f} x interval")
            print(f"  failed client requests: {clients['failed']} of {clients['sent']} sent "
                  f"({100 * clients['failed'] / max(1, clients['sent']):.2f} %; the 10 % step x 30 % failing = 3 %); "
                  f"the target served {summary['targetServed']} requests")
            steps = len(args.steps.split(","))
            code, summary, events = rollout(folder / "state", stage(folder, "bench-good", {}), folder / "good.jsonl", args)
            if code != 0:
                print(f"good target: NOT promoted: exit {code}: {summary['message']}")
                return
            start = next(e["time"] for e in events if e["event"] == "step" and e["index"] == 0)
            end = next(e["time"] for e in events if e["event"] == "decision" and e["decision"] == "finished")
            minimum = steps * args.interval
            print(f"good target: exit {code} ({summary['decision']}), failed client requests "
                  f"{summary['clientRequests']['failed']} of {summary['clientRequests']['sent']}")
            print(f"  first step -> promoted: {end - start:.2f} s vs the schedule's minimum {minimum:g} s "
                  f"({steps} steps x {args.interval:g} s): ratio {(end - start) / minimum:.2f}")
        finally:
            stop(client)  # the runtime and its recorded workers, whatever state it is in


if __name__ == "__main__":
    main()
