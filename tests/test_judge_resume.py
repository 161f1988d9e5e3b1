"""`mlcanary rollout --resume` with the error/latency judge: the state saved at the last promotion, then
the resumed step's judged windows folded in again from the record (rollout/judge_replay.py), so the
e-process continues, nothing is counted twice and the step keeps the requests it judged before the stop.

Here a real `mlcanary rollout` on the local target is SIGKILLed mid-step and resumed (about 30 s), and a
second --resume meets the endpoint hold of a first that still runs. The fast tests (the replay fed
record lines, the runner on a simulated world killed and resumed, the CLI refusing a tampered record)
are in tests/test_decisions_resume.py, where the mutation runs use them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mlcanary.rollout.counts import counts_from_json
from mlcanary.rollout.judges import make_judge
from test_decisions_resume import e_errors_at_least, judged_target, judgements


# --- a real rollout on the local target, SIGKILLed mid-step and resumed ------------------------------------

from test_rollout_local import REQUEST, endpoint, events, live_traffic, rollout, runtime, stage  # noqa: E402,F401 (fixtures)


def test_a_failing_target_sigkilled_mid_step_at_e_10_is_rolled_back_on_evidence_a_fresh_judge_lacks(
        runtime, endpoint, tmp_path):  # noqa: F811
    # green fails 5 % of its requests, blue none; with alpha 0.01 the error e-value rolls back at 100, each
    # failed request multiplies it by about 1.6: the kill at e >= 10 leaves about half the way to go.
    record, stage_file = tmp_path / "record.jsonl", stage(tmp_path, endpoint, {"FAIL_RATE": "0.05"})
    args = ["--to", "green", "--steps", "50,100", "--interval", "2s", "--min-requests", "5000", "--max-hold", "100",
            "--alpha", "0.01", "--load", "20", "--request-file", str(REQUEST)]
    command = [sys.executable, "-m", "mlcanary.cli", "rollout", str(stage_file), "--format", "json", *args,
               "--record", str(record), "--apply-stage"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "MLCANARY_STATE_DIR": str(runtime.root)})
    deadline = time.monotonic() + 180
    try:
        while not e_errors_at_least(10)(events(record) if record.exists() else []):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the error e-value did not reach 10"
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)  # as a crash: no decision, the traffic left as it was
        first.communicate(timeout=60)
    before = events(record)
    assert not [e for e in before if e["event"] == "decision" and e["decision"] != "held"]
    lines_before = judgements(before, "50 %")
    e_at_kill = lines_before[-1]["eValues"]["errors"]
    assert 10 <= e_at_kill < 100
    assert live_traffic(runtime, endpoint) == {"blue": 50, "green": 50}  # left mid-step

    resumed = rollout(runtime, stage_file, *args, "--resume", record=record)
    assert resumed.returncode == 1 and resumed.stdout, resumed.stderr
    assert (f"sequential judge: restored from the record's {len([e for e in lines_before if 'judged' in e])} "
            f"judged window(s) of step 50 %: e(errors) {e_at_kill:.3g}") in resumed.stderr
    assert (f"step 50 % keeps its {judged_target(lines_before)} judged request(s) to green (of the 5000 it needs)"
            in resumed.stderr)
    summary = json.loads(resumed.stdout)
    assert summary["decision"] == "rolled back" and summary["step"] == "50 %", summary
    assert summary["failure"]["judge"] == "sequential" and summary["failure"]["eValue"] >= 100
    after = judgements(events(record)[len(before):], "50 %")
    # the evidence before the kill counted: a judge started from zero on the windows after it would not fail
    fresh = make_judge("sequential", 0.01, (), 1)
    for line in after:
        if "judged" in line:
            fresh.replay_window(line["judged"], *(counts_from_json(line["judged"][side])
                                                  for side in ("target", "baseline")))
    assert fresh.failure is None
    assert summary["targetServed"] == judged_target(lines_before) + judged_target(after)
    assert live_traffic(runtime, endpoint) == {"blue": 100}


# --- two processes resuming the same rollout ---------------------------------------------------------------

def test_a_second_resume_of_the_same_rollout_while_the_first_runs_is_refused_by_the_endpoint_hold(tmp_path):
    """Both --resume processes carry the record's rollout id: the hold is taken back from a dead process
    only, so the second sees the first (pid, record) and changes nothing unless --force."""
    from mlcanary.local_runtime import lease

    directory = tmp_path / "rollouts"
    lease.acquire(directory, "fraud-scorer", {"id": "r1", "step": "50 %", "record": "/r/r.jsonl"})
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        doc = lease.read(directory, "fraud-scorer")
        doc["holder"] = {**doc["holder"], "pid": first.pid, "processStart": lease.process_start(first.pid)}
        lease.write_atomically(lease.document_file(directory, "fraud-scorer"), json.dumps(doc))
        lease.forget(directory, "fraud-scorer")
        with pytest.raises(lease.EndpointHeld, match=f"pid {first.pid}.*--force"):
            lease.acquire(directory, "fraud-scorer", {"id": "r1", "step": None})
        assert lease.read(directory, "fraud-scorer")["holder"]["pid"] == first.pid  # the first keeps it
    finally:
        first.kill()
        first.wait()
    # the first is gone now (kill -9): the next --resume takes its hold back
    lease.acquire(directory, "fraud-scorer", {"id": "r1", "step": None})
    assert lease.read(directory, "fraud-scorer")["holder"]["pid"] == os.getpid()
