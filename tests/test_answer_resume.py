"""`mlcanary rollout --resume` with the answer judge: what it had accumulated is restored from the record
(rollout/answer_judge.py AnswerJudge.replay), and a resumed step still needs every compared pair a step
needs.

The first tests drive the runner with the simulated world of test_rollout_runner.py (a process killed
mid-step is a runner that stops without a decision, as kill -9 leaves its record); the last ones kill a
real `mlcanary rollout` on the local target under load and resume it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mlcanary.components.answer_compare import settings_from
from mlcanary.rollout.answer_judge import AnswerCheck, AnswerJudge, AnswerOptions, AnswerWindow
from mlcanary.rollout.judges import make_judge
from mlcanary.rollout.plan import load_plan, plan_json
from mlcanary.rollout.record import Recorder, resume_point
from mlcanary.rollout.runner import Runner
from test_rollout_runner import STAGE_3, World, outputs


class Killed(BaseException):
    """kill -9: the process stops where it is; nothing after it runs, no decision is recorded."""


class PartlyCompared:
    """The answer source: one in `every` of the target's mirrored copies gives a pair that can be compared
    (the others' live answers lack the compare path, say); every compared pair agrees."""

    def __init__(self, world: World, every: int):
        self.world, self.every, self.counted = world, every, 0

    def start(self) -> None:
        """As LocalAnswerSource: count from the runtime's counters as they are now."""
        self.counted = self.world.totals["green"].mirrored.requests // self.every

    def stop(self) -> None:
        pass

    def read(self) -> AnswerWindow:
        comparable = self.world.totals["green"].mirrored.requests // self.every
        new, self.counted = max(0, comparable - self.counted), comparable
        return AnswerWindow(compared=new, agreed=new)


def run_until(world: World, plan, recorder: Recorder, *, kill_at: float | None = None, point=None):
    """One process of the rollout: from the start, or resumed from `point`; killed at `kill_at` seconds."""
    options = plan.options
    answers = AnswerCheck(AnswerJudge(AnswerOptions(settings_from(options.compare_path, options.output_tolerance),
                                                    0.01, options.alpha)), PartlyCompared(world, every=4))
    if point is not None:
        answers.judge.replay(list(point.answer_windows))
    answers.source.start()
    sleep = world.sleep
    if kill_at is not None:
        def sleep(seconds):  # noqa: F811
            world.sleep(seconds)
            if world.now >= kill_at:
                raise Killed()
    runner = Runner(plan, world, world, make_judge(options.judge, options.alpha, options.rules, options.failure_limit),
                    recorder, clock=world.clock, sleep=sleep, answers=answers)
    start = 0 if point is None else point.start_index
    recorder.write("plan", plan=plan_json(plan), resumedAt=start if point else None)
    return (runner.run(start, point.judge_state if point else None, point.target_served if point else 0,
                       resuming=point is not None), answers.judge)


def mirror_step_windows(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "judgement" and e["step"] == "mirror 50 %"]


def test_a_resumed_mirror_step_is_promoted_only_once_its_compared_answers_before_and_after_the_kill_are_enough():
    world = World(rps=20)  # 10 mirrored copies/s to green, of which 2.5/s can be compared
    plan = load_plan(STAGE_3, {"to": "green", "mirror": 50, "mirrorFor": "2s", "steps": [100], "interval": "2s",
                               "minRequests": 40, "maxHold": 10, "alpha": 0.001, "compare": {"path": "scores"}})
    recorder = Recorder(None, "r1", clock=world.clock)
    with pytest.raises(Killed):
        run_until(world, plan, recorder, kill_at=6.0)
    before = sum(e["answers"]["compared"] for e in mirror_step_windows(recorder.events))
    assert 10 <= before < 40 and not [e for e in recorder.events if e.get("decision") == "promoted"]

    point = resume_point(recorder.events, STAGE_3)
    assert point.start_index == 0 and point.how == "died"
    resumed_from = len(recorder.events)
    outcome, judge = run_until(world, plan, recorder, point=point)
    assert outcome.decision == "promoted", outcome.message
    after = recorder.events[resumed_from:]
    promoted = next(i for i, e in enumerate(after) if e.get("decision") == "promoted" and e["step"] == "mirror 50 %")
    compared_after = sum(e["answers"]["compared"] for e in mirror_step_windows(after[:promoted]))
    mirrored_after = sum(e["window"]["green"]["mirrored"]["requests"] for e in mirror_step_windows(after[:promoted]))
    # The step's requests restarted (40 more mirrored copies were needed and came first); its compared
    # answers did not: promoted once those before and after the kill reach --min-requests, not before.
    assert mirrored_after >= 40 and before + compared_after >= 40 and compared_after < 40
    held = [e["reason"] for e in after[:promoted] if e.get("decision") == "held"]
    waited = [r for r in held if r.endswith("of the 40 compared answers the answer judge needs")]
    assert waited and held[-1] == waited[-1]  # requests were enough; the compared answers were not yet
    assert int(waited[0].split()[0]) > before  # their count goes on from those before the kill
    assert judge.compared == before + compared_after + sum(
        e["answers"]["compared"] for e in after[promoted:] if e["event"] == "judgement")


def test_a_fresh_mirror_step_is_not_promoted_before_it_compared_min_requests_answers():
    world = World(rps=20)
    plan = load_plan(STAGE_3, {"to": "green", "mirror": 50, "mirrorFor": "2s", "steps": [100], "interval": "2s",
                               "minRequests": 40, "maxHold": 10, "alpha": 0.001, "compare": {"path": "scores"}})
    recorder = Recorder(None, "r1", clock=world.clock)
    outcome, _ = run_until(world, plan, recorder)
    assert outcome.decision == "promoted", outcome.message
    promoted = next(i for i, e in enumerate(recorder.events) if e.get("decision") == "promoted")
    windows = mirror_step_windows(recorder.events[:promoted])
    assert sum(e["answers"]["compared"] for e in windows) >= 40
    assert sum(e["window"]["green"]["mirrored"]["requests"] for e in windows) >= 4 * 40 - 4  # mirrored alone was enough long before


# --- a real rollout on the local target, killed mid-mirror and resumed ------------------------------------

from test_answer_rollout import stage  # noqa: E402
from test_rollout_local import REQUEST, endpoint, events, live_traffic, rollout, runtime  # noqa: E402,F401 (fixtures)


def compared_in(lines: list[dict]) -> int:
    return sum(e["answers"]["compared"] for e in lines if e["event"] == "judgement" and "answers" in e)


def test_a_constant_green_killed_mid_mirror_and_resumed_is_rolled_back_without_its_mirror_evidence_lost(
        runtime, endpoint, tmp_path):  # noqa: F811
    # 100 % of green's answers disagree; with 90 % allowed the disagreement e-value needs about 32 compared
    # pairs to reach 1/alpha (20): slow enough to kill the rollout in between, at about 3 pairs/s.
    record, stage_file = tmp_path / "record.jsonl", stage(tmp_path, endpoint, {"ANSWER": "constant"})
    args = ["--to", "green", "--mirror", "50", "--mirror-for", "60s", "--steps", "50,100", "--interval", "2s",
            "--min-requests", "10", "--compare-path", "scores", "--max-disagreement", "0.9",
            "--load", "6", "--request-file", str(REQUEST)]
    command = [sys.executable, "-m", "mlcanary.cli", "rollout", str(stage_file), "--format", "json", *args,
               "--record", str(record), "--apply-stage"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "MLCANARY_STATE_DIR": str(runtime.root)})
    deadline = time.monotonic() + 180
    try:
        while compared_in(events(record) if record.exists() else []) < 15:
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the mirror phase compared too few answers"
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)  # as a crash: no decision, the traffic left as it was
        first.communicate(timeout=60)
    before = events(record)
    assert not [e for e in before if e["event"] == "decision" and e["decision"] != "held"]
    compared_before = compared_in(before)
    assert 15 <= compared_before < 32
    assert runtime.status()["endpoints"][endpoint]["mirrorTraffic"] == {"green": 50}  # left mid-mirror

    resumed = rollout(runtime, stage_file, *args, "--resume", record=record)
    assert resumed.returncode == 1 and resumed.stdout, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["decision"] == "rolled back" and summary["step"] == "mirror 50 %", summary
    assert summary["failure"]["judge"] == "answers" and summary["failure"]["what"] == "output agreement"
    assert f"step mirror 50 % keeps its {compared_before} compared answers" in resumed.stderr
    after = events(record)[len(before):]
    compared_after = compared_in(after)
    total = compared_before + compared_after
    assert f"{total} of {total} compared answers disagreed" in summary["failure"]["message"]
    assert summary["answers"]["compared"] == total and summary["answers"]["agreed"] == 0
    # the evidence of the first run counted: a judge started from zero would not have rolled back yet
    fresh = AnswerJudge(AnswerOptions(settings_from("scores"), 0.9, 0.05))
    fresh.replay([e for e in after if e["event"] == "judgement" and "answers" in e])
    assert fresh.failure is None and compared_after < 32
    assert summary["clientRequests"]["byDeployment"].get("green", 0) == 0  # no client got a green answer
    assert live_traffic(runtime, endpoint) == {"blue": 100}
    assert not any(runtime.status()["endpoints"][endpoint]["mirrorTraffic"].values())  # the mirror ended too


class LiveOutputs:
    """One output per live answer of each side; the first reading after the traffic changed still
    brings 3 of the baseline's outputs of the step before (the runtime books answers as they finish)."""

    def __init__(self, world: World):
        self.world, self.seen, self.traffic = world, {}, None

    def start(self) -> None:
        self.seen = {n: self.world.totals[n].live.requests for n in ("blue", "green")}

    def new_answers(self) -> dict[str, int]:
        """The live answers each side gave since the last reading."""
        now = {n: self.world.totals[n].live.requests for n in ("blue", "green")}
        new = {n: now[n] - self.seen[n] for n in now}
        self.seen = now
        return new

    def read(self) -> AnswerWindow:
        new = self.new_answers()
        stragglers = 3 if self.traffic is not None and self.traffic != self.world.traffic else 0
        self.traffic = dict(self.world.traffic)
        return AnswerWindow(target_outputs=outputs(new["green"]), baseline_outputs=outputs(new["blue"] + stragglers))



def rolled_out_with(source, world: World, **flags):
    plan = load_plan(STAGE_3, {"to": "green", "steps": [50, 100], "interval": "2s", "minRequests": 300,
                               "alpha": 0.001, "compare": {"path": "scores"}, **flags})
    options = plan.options
    answers = AnswerCheck(AnswerJudge(AnswerOptions(settings_from("scores"), 0.01, options.alpha)), source(world))
    answers.source.start()
    recorder = Recorder(None, "r1", clock=world.clock)
    runner = Runner(plan, world, world, make_judge(options.judge, options.alpha, options.rules, options.failure_limit),
                    recorder, clock=world.clock, sleep=world.sleep, answers=answers)
    return runner.run(), recorder.events


class NoTargetNumbers(LiveOutputs):
    """The target's answers carry no number at the compare path: its outputs are never tested."""

    def read(self) -> AnswerWindow:
        window = super().read()
        return AnswerWindow(baseline_outputs=window.baseline_outputs)


def test_a_split_step_halted_for_want_of_tested_outputs_says_the_answer_judge_waited_not_for_requests():
    outcome, events = rolled_out_with(NoTargetNumbers, World(rps=100), maxHold=2)
    assert outcome.decision == "halted" and outcome.step == "50 %"
    assert outcome.message.startswith("at step 50 %: not enough data for the answer judge (0 of the 300 target "
                                      "outputs the answer judge needs tested), after 2 extra interval(s)")
    halted = next(e for e in events if e.get("decision") == "halted")
    assert halted["waitedFor"] == "0 of the 300 target outputs the answer judge needs tested"


def test_a_100_percent_step_whose_first_window_brings_the_baselines_last_outputs_is_promoted_not_halted():
    outcome, events = rolled_out_with(LiveOutputs, World(rps=100))
    assert outcome.decision == "promoted", outcome.message
    assert [e["step"] for e in events if e.get("decision") == "promoted"] == ["50 %", "100 %"]
