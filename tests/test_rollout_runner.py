"""The rollout loop with a simulated clock, source and applier: fast checks of its decisions."""

from __future__ import annotations

import os

from mlcanary.rollout.appliers import ApplyError
from mlcanary.rollout.counts import Counts, DeploymentCounts
from mlcanary.rollout.judges import ThresholdJudge, make_judge
from mlcanary.rollout.plan import load_plan
from mlcanary.rollout.record import Recorder
from mlcanary.rollout.runner import Runner
from mlcanary.rollout.sources import SourceError
from conftest import PROJECT_DIR

STAGE_3 = PROJECT_DIR / "stacks" / "local" / "stage-3-green-dark.yaml"


class World:
    """A clock, an endpoint that serves `rps` requests/s split by the applied traffic, and its metrics."""

    def __init__(self, rps=100, green_error_rate=0.0, fail_reads=(), pinned_rps=0, blue_error_rate=0.0):
        self.now, self.rps, self.green_error_rate, self.blue_error_rate = 0.0, rps, green_error_rate, blue_error_rate
        self.pinned_rps = pinned_rps  # requests/s sent to green with the deployment header, around the split
        self.series = 1  # the runtime process counting; a restart counts from zero under a new one
        self.traffic, self.mirror = {"blue": 100, "green": 0}, {}
        self.totals = {"blue": DeploymentCounts(), "green": DeploymentCounts()}
        self.applied: list[str] = []
        self.reads, self.fail_reads = 0, set(fail_reads)
        self.exact: dict[tuple[str, str], tuple[float, float]] = {}
        self._serve(0)

    # the clock
    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        for _ in range(round(seconds * 10)):
            self.now += 0.1
            self._serve(0.1)

    def _serve(self, seconds: float) -> None:
        """Add this slice's requests (fractional rates accumulate, whole requests are counted)."""
        for name in ("blue", "green"):
            error_rate = self.green_error_rate if name == "green" else self.blue_error_rate
            pinned = self.pinned_rps * 100 / self.rps if name == "green" and self.rps else 0
            for kind, share in (("live", self.traffic.get(name, 0)), ("mirrored", self.mirror.get(name, 0)),
                                ("pinned", pinned)):
                key = (name, kind)
                requests, errors = self.exact.get(key, (0.0, 0.0))
                requests += self.rps * seconds * share / 100
                errors += self.rps * seconds * share / 100 * error_rate
                self.exact[key] = (requests, errors)
            live, mirrored, pinned = (self.exact.get((name, kind), (0, 0)) for kind in ("live", "mirrored", "pinned"))
            whole = lambda counts: Counts(int(counts[0] + 1e-9), int(counts[1] + 1e-9), int(counts[1] + 1e-9))  # noqa: E731
            self.totals[name] = DeploymentCounts(whole(live), whole(mirrored), whole(pinned), f"runtime-{self.series}")

    def restart(self) -> None:
        """The runtime restarted: every count starts again from zero, under a new series."""
        self.exact, self.series = {}, self.series + 1
        self._serve(0)

    # the source
    def read(self):
        self.reads += 1
        if self.reads in self.fail_reads:
            raise SourceError("metrics unavailable")
        return dict(self.totals)

    # the applier
    def in_state(self, step) -> bool:
        return False

    def apply(self, step) -> None:
        self.applied.append(step.label)
        self.traffic, self.mirror = step.traffic, step.mirror_traffic

    def live_traffic(self, endpoint) -> dict:
        return dict(self.traffic)


def outputs(n: int) -> tuple[float, ...]:
    """`n` model outputs (numbers 0.3 to 0.349) for a fake answer source, alike on both sides."""
    return tuple(0.3 + 0.001 * (i % 50) for i in range(n))


def failing_on(world: World, label: str) -> World:
    """`world` whose applier fails when asked to apply the step `label`."""
    apply = world.apply

    def apply_or_fail(step):
        if step.label == label:
            raise ApplyError(f"cannot apply {label}")
        apply(step)

    world.apply = apply_or_fail
    return world


def restarted_once_when(world: World, condition) -> list[float]:
    """The runtime restarts (its counts from zero) once, after the first slice of time where `condition()`
    holds; returns the list that gets the time it restarted."""
    serve, restarted = world.sleep, []

    def sleep(seconds):
        serve(seconds)
        if not restarted and condition():
            restarted.append(world.now)
            world.restart()

    world.sleep = sleep
    return restarted


def interrupted_at(world: World, green_share: int, by: int | None = None) -> World:
    """Ctrl-C (or the signal `by`, sent to this process) as soon as the world serves green `green_share` %
    of its live traffic."""
    serve = world.sleep

    def sleep(seconds):
        serve(seconds)
        if world.traffic.get("green") == green_share:
            if by is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), by)

    world.sleep = sleep
    return world


def run(world: World, judge=None, lines=None, updates=None, steering=None, resume=None, **flags):
    """`updates`: gets each view the live table would show; `steering(plan, world)`: the rollout's
    steering (default: none, as without a state folder); `resume`: Runner.run's arguments (--resume)."""
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, **flags})
    recorder = Recorder(None, clock=world.clock)
    o = plan.options
    judge = judge or make_judge(o.judge, o.alpha, o.rules, o.failure_limit)
    runner = Runner(plan, world, world, judge, recorder, clock=world.clock, sleep=world.sleep,
                    on_decision=(lines.append if lines is not None else lambda _: None),
                    on_update=(updates if updates is not None else lambda _: None),
                    steering=steering(plan, world) if steering else None)
    return runner.run(**(resume or {})), recorder.events


def judgements(events: list[dict], step: str) -> list[dict]:
    """The record's judgement lines of one step."""
    return [e for e in events if e["event"] == "judgement" and e["step"] == step]


def decisions(events) -> list[tuple[str, str]]:
    return [(e["decision"], e["step"]) for e in events if e["event"] == "decision"]


def test_a_good_target_is_baked_then_the_baseline_deleted():
    world = World()
    outcome, events = run(world, steps=[50, 100], bake="4s", deleteOld=True)
    assert outcome.exit_code == 0
    assert world.applied == ["stage-3-green-dark.yaml", "50 %", "100 %", "delete blue"]
    assert decisions(events) == [("promoted", "50 %"), ("promoted", "100 %"), ("baked", "100 %"),
                                 ("finished", "delete blue")]
    baked = next(e for e in events if e["event"] == "decision" and e["decision"] == "baked")
    promoted = next(e for e in events if e["event"] == "decision" and e["step"] == "100 %")
    assert baked["time"] - promoted["time"] >= 4


def test_a_failure_while_baking_rolls_back_before_the_baseline_is_deleted():
    world = World()
    serve = world.sleep

    def sleep(seconds):
        serve(seconds)
        if world.now > 2.5:  # green starts failing after its 2 s step at 100 %, while baking
            world.green_error_rate = 0.2

    world.sleep = sleep
    outcome, events = run(world, steps=[100], bake="6s", deleteOld=True, rule=["error_rate < 0.05"])
    assert outcome.exit_code == 1 and outcome.failure.judge == "rule" and outcome.step == "100 %"
    assert decisions(events) == [("promoted", "100 %"), ("rolled-back", "100 %")]
    assert "delete blue" not in world.applied and world.applied[-1] == "rollback"
    assert world.traffic == {"blue": 100, "green": 0}


def test_unreadable_metrics_are_no_data_not_a_pass():
    world = World(fail_reads=range(1, 10_000))  # the endpoint serves, but no reading gets through
    outcome, events = run(world, steps=[100], maxHold=1)
    assert outcome.exit_code == 3 and world.applied[-1] == "rollback"
    assert [d for d, _ in decisions(events)] == ["held", "held", "halted"]


def test_the_threshold_judge_rolls_back_at_the_first_failed_interval():
    world = World(green_error_rate=0.5)
    outcome, events = run(world, ThresholdJudge(), steps=[10, 100])
    assert outcome.exit_code == 1 and outcome.failure.judge == "threshold"
    judgements = [e for e in events if e["event"] == "judgement"]
    assert len(judgements) == 2  # one interval of 2 s, judged at its end


def test_the_sequential_judge_does_not_wait_for_the_interval():
    world = World(green_error_rate=0.5)
    outcome, events = run(world, steps=[10, 100], interval="60s")
    assert outcome.exit_code == 1 and outcome.failure.judge == "sequential"
    assert len([e for e in events if e["event"] == "judgement"]) <= 3


def test_ctrl_c_leaves_the_last_good_step_and_records_it():
    world = interrupted_at(World(), 50)
    outcome, events = run(world, steps=[10, 50, 100])
    assert outcome.exit_code == 130 and world.applied[-1] == "10 %" and world.traffic == {"blue": 90, "green": 10}
    last = events[-1]
    assert (last["decision"], last["lastGood"], last["exitCode"]) == ("interrupted", 0, 130)
    assert last["judgeState"]["errors"]["r0"] == 1.25


def test_the_default_judge_keeps_judging_while_baking_at_100_percent():
    world = World()
    serve = world.sleep

    def sleep(seconds):
        serve(seconds)
        if world.now > 4.5:  # after the 50 % and 100 % steps: the baseline serves nothing any more
            world.green_error_rate = 0.3

    world.sleep = sleep
    outcome, events = run(world, steps=[50, 100], bake="10s")
    assert outcome.exit_code == 1 and outcome.failure.judge == "sequential" and outcome.failure.what == "error rate"
    assert world.traffic == {"blue": 100, "green": 0}
    assert ("promoted", "100 %") in decisions(events) and ("baked", "100 %") not in decisions(events)


def test_a_failed_reading_delays_the_window_and_counts_nothing_twice():
    world = World(fail_reads={1, 4, 5})  # the first step's first reading and two later ones fail
    outcome, events = run(world, steps=[50, 100])
    assert outcome.exit_code == 0
    for name in ("blue", "green"):
        judged = sum(e["window"].get(name, {}).get("requests", 0) for e in events if e["event"] == "judgement")
        assert judged <= world.totals[name].live.requests
    assert len([e for e in events if e["event"] == "source-error"]) == 3


# --- the verdict rests on data ------------------------------------------------------------------------

def fail_reads_while(world: World, condition) -> None:
    read = world.read

    def failing():
        if condition():
            raise SourceError("metrics unavailable")
        return read()

    world.read = failing


def test_a_source_that_dies_mid_step_halts_the_rollout_never_promotes():
    """Issue 13's repro: the runtime killed 3 s into the 50 % step; before, 7 source-error windows, then "promoted"."""
    world = World()
    died = []
    fail_reads_while(world, lambda: died or (world.traffic.get("green") == 50 and died.append(world.now)))
    outcome, events = run(world, steps=[10, 50, 100], maxHold=2)
    assert outcome.exit_code == 3 and outcome.decision == "halted" and outcome.step == "50 %"
    assert decisions(events) == [("promoted", "10 %"), ("held", "50 %"), ("held", "50 %"), ("held", "50 %"),
                                 ("halted", "50 %")]
    assert "100 %" not in world.applied and world.applied[-1] == "rollback"
    held = [e for e in events if e["event"] == "decision" and e["decision"] == "held"]
    assert all(e["noDataWindows"] and "metrics unavailable" in e["reason"] for e in held)
    assert "no data" in outcome.message and "metrics unavailable" in outcome.message


def test_a_brief_source_outage_holds_the_step_then_it_is_judged_on_read_windows():
    world = World()
    fail_reads_while(world, lambda: 0.9 < world.now < 1.1)  # one reading of the 50 % step fails; the counts go on
    outcome, events = run(world, steps=[50, 100])
    assert outcome.exit_code == 0
    held = [e for e in events if e["event"] == "decision" and e["decision"] == "held"]
    assert [(e["step"], e["noDataWindows"]) for e in held] == [("50 %", 1)]
    promoted = next(e for e in events if e["event"] == "decision" and e["decision"] == "promoted")
    assert promoted["step"] == "50 %" and promoted["time"] >= 4  # the interval with the missing window did not count: a second one was needed


def test_counts_that_restart_mid_step_are_no_data_not_negative_or_zero_traffic():
    """Issue 13's repro: the runtime killed and started again at once; its counts start from zero."""
    world = World()
    restarted = restarted_once_when(world, lambda: world.traffic.get("green") == 50 and world.now > 3.0)
    outcome, events = run(world, steps=[10, 50, 100])
    assert restarted and outcome.exit_code == 0
    gaps = [e for e in events if e["event"] == "judgement" and e.get("noData")]
    assert len(gaps) == 1 and "started again from zero" in gaps[0]["noData"] and gaps[0]["window"] == {}
    assert any(e["event"] == "counts-restarted" for e in events)
    assert ("held", "50 %") in decisions(events)
    for e in events:
        if e["event"] == "judgement":
            assert all(w["requests"] >= 0 for w in e["window"].values())


def test_a_runtime_that_stays_restarting_halts_the_step():
    world = World()
    serve = world.sleep

    def sleep(seconds):
        serve(seconds)
        if world.traffic.get("green") == 50:
            world.restart()  # every reading sees new counts: nothing can be subtracted

    world.sleep = sleep
    outcome, events = run(world, steps=[50, 100], maxHold=1)
    assert outcome.exit_code == 3 and world.applied[-1] == "rollback"
    assert "started again from zero" in outcome.message


def test_header_pinned_requests_alone_never_promote_the_target():
    """Issue 13's repro: 20 req/s pinned to green, no --load: promoted in 20 s while the baseline served 0."""
    world = World(rps=20, pinned_rps=20)
    world.traffic = {"blue": 100, "green": 0}
    world.rps_live = 0
    world.rps = 20
    serve = world.sleep

    def sleep(seconds):
        world.traffic_backup = dict(world.traffic)
        split = world.traffic
        world.traffic = {}  # nobody sends requests through the split: only the pinned client runs
        try:
            serve(seconds)
        finally:
            world.traffic = split

    world.sleep = sleep
    outcome, events = run(world, steps=[100], maxHold=2)
    assert outcome.exit_code == 3 and outcome.decision == "halted"
    assert outcome.target_served == 0
    pinned = sum(e["window"].get("green", {}).get("pinned", {}).get("requests", 0)
                 for e in events if e["event"] == "judgement")
    assert pinned >= 100  # seen and recorded, never judged as the split's


def test_promoted_is_said_only_when_the_endpoint_reads_back_at_100_percent():
    world = World()
    world.live_traffic = lambda endpoint: {"blue": 100, "green": 0}  # another actor moved traffic back meanwhile
    lines = []
    outcome, events = run(world, lines=lines, steps=[50, 100])
    assert outcome.exit_code == 3 and outcome.decision == "not promoted"
    assert "blue 100" in outcome.message and ("unconfirmed", "100 %") in decisions(events)
    assert not any(line.startswith("promoted") for line in lines)


def test_every_decision_leaves_one_line():
    world = World(green_error_rate=0.5)
    lines = []
    outcome, _ = run(world, lines=lines, steps=[10, 100], rule=["error_rate < 0.05"])
    assert outcome.exit_code == 1
    assert lines[0] == "start: stage-3-green-dark.yaml (live blue 100, green 0)"
    assert lines[1] == "applied step 1/2 10 %: live blue 90, green 10"
    assert lines[2].startswith("failed step 10 %: ") and lines[3] == "rolled back: live blue 100, green 0"
    assert len(lines) == 4 and all(len(line) <= 80 for line in lines)
