"""The rollout loop's decisions pinned where a plausible bug would change them (issue 19): how long a
step is held on counted windows, what a resumed rollout does first, what every ending records and
shows, and that the evidence judged is the split's. The simulated world of test_rollout_runner.py."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest

from mlcanary.local_runtime import lease
from mlcanary.components.rollout_rules import parse_rule
from mlcanary.rollout.judges import ThresholdJudge, make_judge
from mlcanary.rollout.notify import Confirmer
from test_rollout_ownership import ENDPOINT, ReadBackWorld
from test_rollout_runner import (World, decisions, fail_reads_while,
                                 failing_on, interrupted_at, restarted_once_when, run)
from test_rollout_steering import steered_run


class ExactWorld(World):
    """The simulated world on a clock that advances by exactly what is slept: an interval of 2 s with
    ticks of 1 s ends at exactly 2.0 (the float drift of 0.1 s slices cannot blur a boundary)."""

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self._serve(seconds)


def when(events, decision: str, step: str) -> float:
    return next(e["time"] for e in events if e["event"] == "decision" and (e["decision"], e["step"]) == (decision, step))


def step_started(events, label: str) -> float:
    return next(e["time"] for e in events if e["event"] == "step" and e["label"] == label)


def views(into: list):
    """on_update: what the live table shows at each update, copied (the runner updates one view)."""
    return lambda view: into.append(dataclasses.replace(view, counts=dict(view.counts), pinned=dict(view.pinned),
                                                        judge=dict(view.judge) if view.judge is not None else None))


# --- how long a step is held: mirrorFor seconds of counted windows ---------------------------------------

def test_a_mirror_phase_is_promoted_only_after_mirror_for_seconds_of_counted_windows():
    """mirrorFor 6 s, intervals of 2 s. The runtime restarts just before the reading at 1 s (the window up
    to 1 s is lost: its counts cannot be subtracted) and the reading at 3 s fails (its span is counted by
    the next reading).
    Counted: 5 s at 6 s, so the phase is held to 8 s; it is never promoted on time it did not count."""
    world = ExactWorld()
    restarted = restarted_once_when(world, lambda: bool(world.mirror) and world.now > 0.5)
    fail_reads_while(world, lambda: bool(world.mirror) and 2.9 < world.now < 3.1)
    outcome, events = run(world, steps=[100], mirror=50, mirrorFor="6s", maxHold=5)
    assert outcome.exit_code == 0 and restarted
    start = step_started(events, "mirror 50 %")
    assert when(events, "promoted", "mirror 50 %") - start == pytest.approx(8.0, abs=0.01)
    held = [e for e in events if e["event"] == "decision" and e["decision"] == "held"]
    assert [(e["step"], e["noDataWindows"]) for e in held] == [("mirror 50 %", 1), ("mirror 50 %", 1)]


def test_a_mirror_phase_with_every_window_read_is_promoted_at_mirror_for_not_an_interval_before():
    world = ExactWorld()
    outcome, events = run(world, steps=[100], mirror=50, mirrorFor="3s", interval="1s")
    assert outcome.exit_code == 0
    assert when(events, "promoted", "mirror 50 %") - step_started(events, "mirror 50 %") == 3.0


def test_a_hold_is_met_within_a_microsecond_of_its_length():
    """A duration is read to the microsecond: mirrorFor 3.000001 s counted as 3 s of windows is met
    (promoted at 3 s, not a tick later), and so is the hold of a starved phase (halted at 3 s)."""
    world = ExactWorld()
    outcome, events = run(world, steps=[100], mirror=50, mirrorFor="3.000001s", interval="1s")
    assert outcome.exit_code == 0
    assert when(events, "promoted", "mirror 50 %") - step_started(events, "mirror 50 %") == 3.0
    world = ExactWorld(rps=1)
    outcome, events = run(world, steps=[100], mirror=10, mirrorFor="3.000001s", interval="1s", maxHold=0)
    assert outcome.decision == "halted"
    assert when(events, "halted", "mirror 10 %") - step_started(events, "mirror 10 %") == 3.0


def test_an_interval_of_2_s_is_judged_at_its_second_tick_and_a_starved_step_held_then():
    """On an exact clock the first interval ends at exactly 2.0 s: the hold comes then, not a tick later."""
    world = ExactWorld(rps=1)
    outcome, events = run(world, steps=[50, 100], maxHold=0)
    assert outcome.decision == "halted"
    held = next(e for e in events if e["event"] == "decision" and e["decision"] == "held")
    assert held["time"] - step_started(events, "50 %") == 2.0
    assert when(events, "halted", "50 %") == held["time"]


def test_a_starved_mirror_phase_is_held_at_mirror_for_not_before():
    world = ExactWorld(rps=1)
    outcome, events = run(world, steps=[100], mirror=10, mirrorFor="3s", interval="1s", maxHold=0)
    assert outcome.decision == "halted" and outcome.step == "mirror 10 %"
    assert when(events, "halted", "mirror 10 %") - step_started(events, "mirror 10 %") == 3.0


# --- what the step judges: the split's requests, the step's baseline -----------------------------------------

def test_mirrored_copies_still_arriving_after_the_mirror_phase_are_not_the_live_steps_evidence():
    """Copies in flight when the mirror is switched off finish during the next steps: they are recorded,
    never judged as requests the split sent the target."""
    world = World()
    serve = world.sleep

    def sleep(seconds):
        if world.traffic.get("green", 0) == 50:
            world.mirror = {"green": 20}  # late copies keep landing during the 50 % step
        serve(seconds)

    world.sleep = sleep
    outcome, events = run(world, steps=[50, 100], mirror=20, mirrorFor="2s")
    assert outcome.exit_code == 0
    step = [e for e in events if e["event"] == "judgement" and e["step"] == "50 %" and "judged" in e]
    assert sum(e["window"]["green"]["mirrored"]["requests"] for e in step) > 0
    assert [e["judged"]["target"]["requests"] for e in step] == [e["window"]["green"]["requests"] for e in step]


@pytest.mark.parametrize("kind", ["sequential", "threshold"])
def test_ratio_rules_compare_the_target_with_the_baseline_of_the_same_step_or_interval(kind):
    """Both deployments err 20 % during the 50 % step (a shared dependency failing), after a 10 % step
    where neither erred: error_rate_ratio is 1 against this step's baseline, 2.8 against the rollout's."""
    world = World()
    serve = world.sleep

    def sleep(seconds):
        both = 0.2 if world.traffic.get("green") == 50 else 0.0
        world.green_error_rate = world.blue_error_rate = both
        serve(seconds)

    world.sleep = sleep
    rules = (parse_rule("error_rate_ratio < 1.5"),)
    outcome, events = run(world, make_judge(kind, 0.001, rules, 1), steps=[10, 50, 100], rule=["error_rate_ratio < 1.5"])
    assert outcome.exit_code == 0, outcome.message
    assert [d for d, _ in decisions(events)] == ["promoted", "promoted", "promoted", "finished"]


def test_a_step_whose_baseline_the_source_does_not_report_is_judged_against_the_rollouts_baseline():
    """A source reports only the deployments that served (at 100 % the baseline serves nothing)."""
    world = World()
    read = world.read

    def served_only():
        return {name: counts for name, counts in read().items() if world.traffic.get(name, 0) or name == "green"}

    world.read = served_only
    outcome, events = run(world, steps=[50, 100], rule=["error_rate_ratio < 1.5"])
    assert outcome.exit_code == 0, outcome.message
    last = [e for e in events if e["event"] == "judgement" and e["step"] == "100 %"]
    assert last and all("blue" not in e["window"] for e in last)


# --- what the live table shows -----------------------------------------------------------------------

def test_the_live_table_shows_no_data_then_the_hold_then_the_steps_time_and_pinned_requests():
    world = World(pinned_rps=10)
    fail_reads_while(world, lambda: world.traffic.get("green") == 50 and 2.9 < world.now < 3.1)
    shown: list = []
    outcome, events = run(world, updates=views(shown), steps=[10, 50, 100], maxHold=3)
    assert outcome.exit_code == 0
    at_50 = [v for v in shown if v.step == "50 %" and not v.status.startswith("applying")]
    assert at_50[0].elapsed_s == pytest.approx(1.0, abs=0.01)  # the step's own time, not the rollout's
    assert any(v.status == "no data: metrics unavailable" for v in at_50)  # a failed reading mid-interval
    assert any(v.status.startswith("held 1/3: no data in 1 window(s) of this interval (metrics unavailable)")
               for v in at_50)
    pinned = [e["window"].get("green", {}).get("pinned", {}).get("requests", 0) for e in events
              if e["event"] == "judgement" and e["step"] == "50 %"]
    so_far = [sum(pinned[:tick + 1]) for tick in range(len(at_50))]  # the promoting tick shows no view
    assert so_far[-1] > max(pinned) > 0
    assert [v.pinned["green"].requests if "green" in v.pinned else 0 for v in at_50] == so_far


def test_an_interrupted_step_shows_and_keeps_the_judges_values():
    world = interrupted_at(World(), 100)
    shown: list = []
    outcome, _ = run(world, updates=views(shown), steps=[50, 100])
    assert outcome.exit_code == 130
    last = shown[-1]
    assert last.status == "interrupted: back to 50 %" and last.step == "100 %"
    assert last.judge["judge"] == "sequential" and "e(errors)" in last.judge


# --- endings: what each records and says -------------------------------------------------------------------

def test_a_rolled_back_step_records_what_each_deployment_served_in_it():
    world = World(green_error_rate=0.5)
    outcome, events = run(world, steps=[10, 100], rule=["error_rate < 0.05"], interval="4s")
    assert outcome.exit_code == 1
    rolled = next(e for e in events if e["event"] == "decision" and e["decision"] == "rolled-back")
    windows = [e["window"] for e in events if e["event"] == "judgement" and e["step"] == "10 %"]
    for name in ("blue", "green"):
        assert rolled["observed"][name]["requests"] == sum(w[name]["requests"] for w in windows) > 0


def test_a_failed_apply_rolls_back_naming_the_step_and_the_error():
    world = failing_on(World(), "50 %")
    outcome, events = run(world, steps=[10, 50, 100])
    assert outcome.exit_code == 1 and outcome.step == "50 %" and outcome.failure.judge == "apply"
    assert outcome.failure.message == "cannot apply 50 %" and "cannot apply 50 %" in outcome.message
    assert world.traffic == {"blue": 100, "green": 0}


def test_a_rollback_that_fails_is_said_and_never_called_rolled_back():
    world = failing_on(World(green_error_rate=0.5), "rollback")
    lines: list[str] = []
    outcome, events = run(world, lines=lines, steps=[10, 100], rule=["error_rate < 0.05"])
    assert outcome.exit_code == 1 and "the rollback itself failed: cannot apply rollback" in outcome.message
    assert lines[-1] == "rollback failed: cannot apply rollback"
    assert not any(line.startswith("rolled back") for line in lines)
    assert events[-1]["rollbackError"] == "cannot apply rollback"


def test_a_halt_after_a_no_data_interval_names_the_missing_requests_not_the_old_outage():
    """One reading failed in the first interval (held: no data); the second interval was read but the
    target served too few requests: the halt says so."""
    world = World(rps=1)
    fail_reads_while(world, lambda: world.traffic.get("green") == 50 and 0.9 < world.now < 1.1)
    outcome, events = run(world, steps=[50, 100], maxHold=1)
    assert outcome.decision == "halted"
    assert "green served 2 of the 5 requests a step needs" in outcome.message and "no data" not in outcome.message
    assert events[-1]["noData"] is None


def test_read_back_with_nothing_live_says_none():
    world = World()
    world.live_traffic = lambda endpoint: {"blue": 0, "green": 0}
    outcome, _ = run(world, steps=[100])
    assert outcome.decision == "not promoted"
    assert "the endpoint now runs live none, not blue 0, green 100 as the last step set" in outcome.message


def test_a_bake_leaves_a_line_saying_how_long():
    lines: list[str] = []
    outcome, _ = run(World(), lines=lines, steps=[100], bake="4s")
    assert outcome.exit_code == 0 and "baked at 100 % for 4 s" in lines


def test_a_passed_step_line_counts_the_targets_requests_even_when_promoted_on_no_window(tmp_path):
    """`rollout promote` during a step whose readings all failed: the step passes on the user's word,
    and its line says 0 requests were judged."""
    world = ReadBackWorld()
    fail_reads_while(world, lambda: world.traffic.get("green") == 50)
    lines: list[str] = []
    outcome, events, _, answers = steered_run(tmp_path, {1.5: ("promote", ENDPOINT)}, world=world, said=lines,
                                              steps=[50, 100])
    assert answers[1.5].exit_code == 0
    assert "passed step 1/2 50 %: 0 requests to green judged" in lines
    assert ("promoted", "50 %") in decisions(events)


def test_a_mirror_phase_whose_first_reading_failed_counts_its_time_from_its_first_reading():
    """The reading at the step's start fails: the window up to the first reading that succeeds has
    nothing to be subtracted from, so the 6 s are counted from 1 s on (promoted at 8 s, not 6 s)."""
    world = ExactWorld()
    failed: list[float] = []
    fail_reads_while(world, lambda: bool(world.mirror) and not failed and not failed.append(world.now))
    outcome, events = run(world, steps=[100], mirror=50, mirrorFor="6s", maxHold=5)
    assert outcome.exit_code == 0 and failed == [0.0]
    gaps = [e["noData"] for e in events if e["event"] == "judgement" and e.get("noData")]
    assert gaps == ["no earlier reading in this step to count from"]
    assert when(events, "promoted", "mirror 50 %") - step_started(events, "mirror 50 %") == 8.0


# --- a resumed rollout: what it does first -----------------------------------------------------------------

def test_a_rollout_resumed_after_its_bake_was_recorded_goes_straight_to_deleting_the_baseline():
    world = World()
    world.traffic = {"blue": 0, "green": 100}  # where the stopped rollout left it: baked at 100 %
    outcome, events = run(world, resume={"start_index": 2}, steps=[50, 100], bake="4s", deleteOld=True)
    assert outcome.exit_code == 0
    assert world.applied == ["delete blue"] and decisions(events) == [("finished", "delete blue")]


def test_a_rollout_resumed_in_its_first_step_applies_that_step_again_not_the_stage_file_first():
    """Killed mid-step at 50 %: going back to the stage file first would send every live request to the
    baseline for the length of an apply (a whole `pulumi up` on Azure), then back to 50 %."""
    world = World()
    world.traffic = {"blue": 50, "green": 50}
    lines: list[str] = []
    outcome, events = run(world, lines=lines, resume={"start_index": 0, "resuming": True}, steps=[50, 100])
    assert outcome.exit_code == 0
    assert world.applied == ["50 %", "100 %"]
    assert not [e for e in events if e["event"] == "step" and e["index"] == -1]  # the first run recorded the start
    assert not any(line.startswith("start:") for line in lines)


def test_a_rollout_stopped_in_the_bake_of_its_first_step_bakes_again_when_resumed():
    world = World()
    world.traffic = {"blue": 0, "green": 100}
    outcome, events = run(world, resume={"start_index": 1, "baked": False}, steps=[100], bake="4s", deleteOld=True)
    assert outcome.exit_code == 0
    assert decisions(events) == [("baked", "100 %"), ("finished", "delete blue")]
    assert world.applied == ["delete blue"]


def test_a_resumed_rollout_whose_record_already_fails_rolls_back_before_applying_a_step():
    """The check that reached the failure limit was recorded, its rollback was not (killed in between)."""
    judge = ThresholdJudge(failure_limit=1)
    judge.replay_interval({"failedChecks": 1})
    world = World()
    world.traffic = {"blue": 50, "green": 50}
    outcome, events = run(world, judge, resume={"start_index": 1}, steps=[50, 100])
    assert outcome.exit_code == 1 and outcome.step == "100 %" and outcome.failure.what == "failed checks"
    assert world.applied == ["rollback"] and world.traffic == {"blue": 100, "green": 0}
    rolled = events[-1]
    assert (rolled["decision"], rolled["step"], rolled["index"]) == ("rolled-back", "100 %", 1)


def test_an_interrupt_after_the_mirror_is_switched_off_returns_to_that_step():
    world = interrupted_at(World(), 50)
    outcome, events = run(world, steps=[50, 100], mirror=20, mirrorFor="2s")
    assert outcome.exit_code == 130 and outcome.step == "mirror off"
    assert world.applied[-1] == "mirror off" and world.traffic == {"blue": 100, "green": 0} and world.mirror == {}
    assert (events[-1]["decision"], events[-1]["lastGood"]) == ("interrupted", 1)


def test_a_second_sigterm_while_the_rollout_records_its_interruption_does_not_cut_its_ending():
    """SIGTERM again while the interrupted rollout writes its decision (systemd's stop, a second kill):
    the ending is written whole and the exit is 143's, not a traceback."""
    world = interrupted_at(World(), 50, by=signal.SIGTERM)
    again = lambda line: line.startswith("interrupted:") and os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731
    outcome, events = run(world, lines=Said(again), steps=[10, 50, 100])
    assert outcome.exit_code == 143 and outcome.step == "10 %"
    assert (events[-1]["decision"], events[-1]["exitCode"]) == ("interrupted", 143)


# --- without a shared hold (no state folder): outside changes and the final read-back ----------------------

class Said(list):
    """The decision lines, with a hook run on each (to act at a given point of the rollout)."""

    def __init__(self, on_line):
        super().__init__()
        self.on_line = on_line

    def append(self, line: str) -> None:
        super().append(line)
        self.on_line(line)


def test_without_a_shared_hold_a_change_from_outside_still_stops_the_rollout():
    world = ReadBackWorld(outside_at=1.0, outside_traffic={"blue": 0, "green": 100})
    outcome, _ = run(world, steps=[10, 100])
    assert outcome.exit_code == 4 and outcome.decision == "outside-change"
    assert world.traffic == {"blue": 0, "green": 100}  # left as the other actor set it


def test_the_final_read_back_retries_an_unanswering_runtime_on_the_rollouts_clock():
    world = ReadBackWorld()
    read_back, failures = world.read_back, []

    def flaky(endpoint):
        if failures and failures[0] > 0:
            failures[0] -= 1
            raise OSError("connection refused")
        return read_back(endpoint)

    world.read_back = flaky
    lines = Said(lambda line: line.startswith("passed step 1/1") and failures.append(3))
    outcome, events = run(world, lines=lines, steps=[100])
    assert outcome.exit_code == 0 and failures == [0]
    assert when(events, "finished", "100 %") - when(events, "promoted", "100 %") == pytest.approx(1.5)


def test_a_deployment_changed_from_outside_after_the_last_step_is_not_promoted():
    """Traffic reads back as the last step set; a deployment was scaled in between: the rollout stops
    at its last step and says so (exit 4), without overwriting the change."""
    world = ReadBackWorld()
    scaled = lambda line: line.startswith("passed step 2/2") and world.deployments.update(green={"instanceCount": 3})  # noqa: E731
    outcome, events = run(world, lines=Said(scaled), steps=[50, 100])
    assert outcome.exit_code == 4 and outcome.decision == "outside-change" and outcome.step == "100 %"
    assert "deployment green: instances 1 -> 3" in outcome.message
    last = events[-1]
    assert (last["decision"], last["step"], last["index"]) == ("outside-change", "100 %", 1)
    assert last["changes"] == ["deployment green: instances 1 -> 3"] and "rollback" not in world.applied


# --- with the shared hold: refusals, steering, gates, resource rules ----------------------------------------

def test_a_rollout_of_an_endpoint_another_rollout_holds_is_refused_naming_it_and_changes_nothing(tmp_path):
    lease.acquire(lease.lease_dir(tmp_path), ENDPOINT, {"id": "first", "step": "50 %", "record": "/r/first.jsonl"})
    lease.forget(lease.lease_dir(tmp_path), ENDPOINT)  # held by a live process (this one) under another id
    outcome, events, world, _ = steered_run(tmp_path, {}, steps=[10, 100])
    assert (outcome.exit_code, outcome.decision) == (1, "refused")
    assert "/r/first.jsonl" in outcome.message and "step 50 %" in outcome.message
    assert world.applied == [] and events == []


def test_an_abort_says_where_traffic_went_records_who_and_shows_it(tmp_path):
    shown: list = []
    outcome, events, _, _ = steered_run(tmp_path, {3.0: ("abort", ENDPOINT)}, updates=views(shown), steps=[50, 100],
                                        minRequests=500)
    assert outcome.decision == "aborted" and outcome.message.endswith("traffic is back on blue (blue 100, green 0)")
    user = events[-1]["by"]
    assert events[-1]["decision"] == "aborted" and user == lease.this_process()["user"]
    assert any(v.status == "aborted: back to rollback" for v in shown)


def test_status_of_a_paused_rollout_says_nothing_is_promoted_until_resume(tmp_path):
    _, _, _, said = steered_run(tmp_path, {1.0: ("pause", ENDPOINT), 3.0: ("status", ENDPOINT),
                                           5.0: ("abort", ENDPOINT)}, steps=[10, 100])
    assert "  next: paused: judging goes on, a failure still rolls back, nothing is promoted until `rollout resume`" \
        in said[3.0].output.splitlines()


def test_an_unconfirmed_promotion_is_recorded_shown_and_said_at_each_hold(tmp_path):
    asked = []

    class Refused:
        status_code = 403

    def post(url, data, **_kw):
        import json

        asked.append(json.loads(data))
        return Refused

    lines: list[str] = []
    shown: list = []
    outcome, events, _, _ = steered_run(tmp_path, {}, confirmer=Confirmer("http://127.0.0.1:9/gate", post=post),
                                        said=lines, updates=views(shown), steps=[50, 100], maxHold=2)
    assert outcome.decision == "halted"
    assert [(a["step"], a["index"]) for a in asked] == [("50 %", 0)] * 3
    why = "the promotion gate http://127.0.0.1:9/… answered 403"
    held = [{k: v for k, v in e.items() if k not in ("time", "rollout")} for e in events if e.get("decision") == "held"]
    assert held == [{"event": "decision", "decision": "held", "step": "50 %", "index": 0, "reason": why, "holds": n}
                    for n in (1, 2, 3)]
    assert f"held 50 %: {why} (hold 1; halts after 2)" in lines
    assert any(v.status == f"held 1/2: {why}" for v in shown)


def test_a_resource_rule_failing_rolls_back_the_step_with_what_it_observed(tmp_path):
    world = ReadBackWorld()

    class HotGreen:
        """A resource watch whose rule fails 3 s into the 50 % step."""

        values: dict = {}

        def start_step(self):
            pass

        def check(self):
            if world.traffic.get("green") == 50 and world.now > 3:
                return parse_rule("cpu_percent < 80"), 95.0, "green's instances over the last 2 s"
            return None

    outcome, events, _, _ = steered_run(tmp_path, {}, world=world, resources=HotGreen(), steps=[10, 50, 100])
    assert outcome.decision == "rolled back" and outcome.step == "50 %" and outcome.failure.judge == "resource"
    assert outcome.failure.message == "cpu_percent = 95 (limit < 80); green's instances over the last 2 s"
    rolled = events[-1]
    assert (rolled["decision"], rolled["index"]) == ("rolled-back", 1)
    windows = [e["window"] for e in events if e["event"] == "judgement" and e["step"] == "50 %"]
    assert rolled["observed"]["green"]["requests"] == sum(w["green"]["requests"] for w in windows) > 0
    assert world.traffic == {"blue": 100, "green": 0}
