"""The rollout loop with a simulated clock, source and applier: fast checks of its decisions."""

from __future__ import annotations

import pytest

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

    def __init__(self, rps=100, green_error_rate=0.0, fail_reads=()):
        self.now, self.rps, self.green_error_rate = 0.0, rps, green_error_rate
        self.traffic, self.mirror = {"blue": 100, "green": 0}, {}
        self.totals = {"blue": DeploymentCounts(), "green": DeploymentCounts()}
        self.applied: list[str] = []
        self.reads, self.fail_reads = 0, set(fail_reads)
        self.current = None
        self.exact: dict[tuple[str, str], tuple[float, float]] = {}

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
            error_rate = self.green_error_rate if name == "green" else 0.0
            for kind, share in (("live", self.traffic.get(name, 0)), ("mirrored", self.mirror.get(name, 0))):
                key = (name, kind)
                requests, errors = self.exact.get(key, (0.0, 0.0))
                requests += self.rps * seconds * share / 100
                errors += self.rps * seconds * share / 100 * error_rate
                self.exact[key] = (requests, errors)
            live, mirrored = self.exact.get((name, "live"), (0, 0)), self.exact.get((name, "mirrored"), (0, 0))
            self.totals[name] = DeploymentCounts(Counts(int(live[0] + 1e-9), int(live[1] + 1e-9), int(live[1] + 1e-9)),
                                                 Counts(int(mirrored[0] + 1e-9), int(mirrored[1] + 1e-9)))

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


def run(world: World, judge=None, **flags):
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, **flags})
    recorder = Recorder(None, clock=world.clock)
    o = plan.options
    judge = judge or make_judge(o.judge, o.alpha, o.rules, o.failure_limit)
    runner = Runner(plan, world, world, judge, recorder, clock=world.clock, sleep=world.sleep)
    return runner.run(), recorder.events


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
    world = World()
    serve = world.sleep

    def sleep(seconds):
        serve(seconds)
        if world.traffic.get("green") == 50:
            raise KeyboardInterrupt

    world.sleep = sleep
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
