"""The rollout loop: apply a step, judge closed windows until the step is promoted, held, halted or
rolled back; record every judgement and decision.

Exit codes: 0 promoted, 1 rolled back (or aborted), 3 halted as inconclusive, 4 changed from outside
(steering.py), 130/143 interrupted (the last good step is left live). Refusals before any change
(exit 2) happen before the runner starts.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlcanary.rollout.appliers import ApplyError
from mlcanary.rollout.counts import Counts, CountsRestarted, DeploymentCounts, Snapshot, counts_json, window
from mlcanary.rollout.judges import Failure, Judge
from mlcanary.rollout.plan import Plan, Step
from mlcanary.rollout.record import Recorder
from mlcanary.rollout.sources import SourceError
from mlcanary.rollout.steering import Steering, Stop

PROMOTED, ROLLED_BACK, HALTED = 0, 1, 3


class Interrupted(Exception):
    def __init__(self, exit_code: int):
        self.exit_code = exit_code
        super().__init__(f"interrupted (exit {exit_code})")


@dataclass
class View:
    """What the live table shows; updated on every closed window."""

    step: str = ""
    index: int = 0
    steps: int = 0
    traffic: dict[str, int] = field(default_factory=dict)
    mirror: dict[str, int] = field(default_factory=dict)
    counts: dict[str, Counts] = field(default_factory=dict)  # this step, per deployment: the split's (and mirrored)
    pinned: dict[str, Counts] = field(default_factory=dict)  # this step's header-pinned requests: shown, not judged
    judge: dict[str, Any] = field(default_factory=dict)
    status: str = ""
    elapsed_s: float = 0.0


@dataclass
class Outcome:
    exit_code: int
    decision: str
    message: str
    failure: Failure | None = None
    target_served: int = 0
    e_values: dict[str, float] = field(default_factory=dict)
    step: str = ""


def _counts_json(counts: Counts) -> dict:
    return {"requests": counts.requests, "errors": counts.errors, "errors5xx": counts.errors_5xx,
            "p90Ms": counts.percentile_ms(90), "p99Ms": counts.percentile_ms(99)}


def _window_json(counts: DeploymentCounts) -> dict:
    """A deployment's window in the record: the split's requests, then mirrored and pinned apart."""
    return {**_counts_json(counts.live),
            "mirrored": {"requests": counts.mirrored.requests, "errors": counts.mirrored.errors},
            "pinned": {"requests": counts.pinned.requests, "errors": counts.pinned.errors}}


class Runner:
    def __init__(self, plan: Plan, applier: Any, source: Any, judge: Judge, recorder: Recorder, *,
                 tick_s: float = 1.0, on_update: Callable[[View], None] = lambda _: None,
                 on_decision: Callable[[str], None] = lambda _: None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 answers: Any = None, steering: Steering | None = None):
        # steering: the endpoint's hold, intent from other terminals, outside changes, gates (steering.py)
        self.steering = steering or Steering(applier, sleep)
        recorder = self.steering.observe(recorder)
        self.plan, self.applier, self.source, self.judge, self.recorder = plan, applier, source, judge, recorder
        self.answers = answers  # answer_judge.AnswerCheck when the rollout compares answers
        self.options = plan.options
        self.tick_s = tick_s
        self.on_update = on_update
        self.on_decision = on_decision  # one line per decision, for the scrollback
        self.read_error = ""
        self.clock, self.sleep = clock, sleep
        self.view = View(steps=len(plan.steps))
        self.target_served = 0
        self.rollout_baseline = Counts()
        self.last_good = -1  # index into plan.steps; -1: the stage file
        self.resumed_step: tuple[int, Counts, Counts] | None = None  # (index, target, baseline) judged before a stop

    # --- the whole rollout -------------------------------------------------------------------------

    def run(self, start_index: int = 0, judge_state: dict | None = None, target_served: int = 0,
            on_started: Callable[[], None] = lambda: None,
            resumed_step: tuple[Counts, Counts] | None = None, baked: bool = True, resuming: bool = False) -> Outcome:
        """`resuming`: --resume of a record; the stage file was applied by the run that stopped, so even in
        the first step the step is applied again directly (going back to the stage file first would move
        live traffic to the baseline and back). `resumed_step`: the (target, baseline) requests step
        `start_index` judged before the rollout stopped (judge_replay.restore), counted toward its
        --min-requests. `baked`: False when the record holds no bake yet, so a rollout stopped after its
        last live step bakes before it ends."""
        self.bake_pending = not baked
        self.target_served = target_served
        if judge_state:
            self.judge.load_state(judge_state)
        if resumed_step is not None:
            self.resumed_step = (start_index, *resumed_step)
        self.last_good = start_index - 1
        refused = self.steering.begin()
        if refused is not None:
            return Outcome(refused.exit_code, refused.decision, refused.message)
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            outcome = self._run(start_index, on_started, resuming)
        except (Interrupted, KeyboardInterrupt) as stop:
            with _signals_deferred():  # a second Ctrl-C or SIGTERM must not cut the return, its record or the hold's end
                outcome = self._interrupted(stop.exit_code if isinstance(stop, Interrupted) else 130)
        finally:
            signal.signal(signal.SIGTERM, previous)
        with _signals_deferred():
            self.steering.end(self, outcome)
        return outcome

    def _run(self, start_index: int, on_started: Callable[[], None], resuming: bool) -> Outcome:
        if start_index == 0 and not resuming:
            try:
                if not self.applier.in_state(self.plan.start):
                    self._status(f"applying {self.plan.start.label}")
                    self.applier.apply(self.plan.start)
            except ApplyError as err:
                return Outcome(2, "refused", f"the stage file could not be applied; nothing was changed by the rollout:\n{err}")
            self.recorder.write("step", index=-1, label=self.plan.start.label, traffic=self.plan.start.traffic,
                                mirror=self.plan.start.mirror_traffic)
            self.on_decision(f"start: {self.plan.start.label} (live {_shares(self.plan.start.traffic)})")
        on_started()
        if start_index > 0 and self.bake_pending and self._bakes_after(start_index - 1):  # stopped in the bake
            if self.resumed_step is not None:  # the bake's windows before the stop (record.resume_point)
                self.resumed_step = (start_index - 1, *self.resumed_step[1:])
            outcome = self._bake(start_index - 1, self.plan.steps[start_index - 1])
            if outcome is not None:
                return outcome
        for index in range(start_index, len(self.plan.steps)):
            step = self.plan.steps[index]
            if self._failure() is not None:  # a resumed judge whose record already fails: no step is applied
                return self._roll_back(index, self._failure())
            if self.steering.skip(step, self.plan.steps[index + 1:]):
                continue  # `rollout promote --full`: straight to the last live step
            try:
                self.view.step, self.view.index = step.label, index + 1
                self._status(f"applying {step.label}")
                self.applier.apply(step)
            except ApplyError as err:
                return self._roll_back(index, Failure("apply", step.label, str(err)))
            self.recorder.write("step", index=index, label=step.label, traffic=step.traffic, mirror=step.mirror_traffic)
            self.on_decision(f"applied step {index + 1}/{len(self.plan.steps)} {step.label}: live {_shares(step.traffic)}"
                             + (f", mirror {_shares(step.mirror_traffic)}" if step.mirror_traffic else ""))
            if not step.judged:
                self.last_good = index
                continue
            outcome = self._judge_step(index, step, self._hold_for(step))
            if outcome is not None:
                return outcome
            self.last_good = index
            self.recorder.write("decision", decision="promoted", step=step.label, index=index,
                                judgeState=self.judge.state(), targetServed=self.target_served)
            self.on_decision(f"passed step {index + 1}/{len(self.plan.steps)} {step.label}: "
                             f"{self.view.counts.get(self.options.to, Counts()).requests} requests to {self.options.to} judged")
            if self._bakes_after(index):
                outcome = self._bake(index, step)
                if outcome is not None:
                    return outcome
        final = self.steering.verify_final(self.plan.steps[-1])  # what runs is what the last step set
        if final is not None:
            return self._stop(final, len(self.plan.steps) - 1)
        unconfirmed = self._read_back(self.plan.steps[-1])
        if unconfirmed:
            return unconfirmed
        message = f"{self.options.to} promoted to {self.plan.steps[-1].label}"
        self.recorder.write("decision", decision="finished", step=self.plan.steps[-1].label, index=len(self.plan.steps) - 1,
                            targetServed=self.target_served, message=message)
        return Outcome(PROMOTED, "promoted", message, target_served=self.target_served,
                       e_values=self.judge.e_values(), step=self.plan.steps[-1].label)

    def _bakes_after(self, index: int) -> bool:
        return bakes_after(self.plan, index) and not self.steering.full

    def _bake(self, index: int, step: Step) -> Outcome | None:
        outcome = self._judge_step(index, step, self.options.bake_s, baking=True)
        if outcome is not None:
            return outcome
        self.recorder.write("decision", decision="baked", step=step.label, index=index,
                            judgeState=self.judge.state(), targetServed=self.target_served)
        self.on_decision(f"baked at {step.label} for {self.options.bake_s:g} s")
        return None

    def _read_back(self, last: Step) -> Outcome | None:
        """"Promoted" only when the endpoint is read back holding what the last step set."""
        try:
            live = {n: s for n, s in self.applier.live_traffic(self.plan.endpoint).items() if s}
        except ApplyError as err:
            live, why = None, f"the endpoint's traffic could not be read back: {err}"
        else:
            why = f"the endpoint now runs live {_shares(live)}, not {_shares(last.traffic)} as the last step set"
        if live == {n: s for n, s in last.traffic.items() if s}:
            return None
        message = f"{self.options.to} is not promoted: {why}"
        self.recorder.write("decision", decision="unconfirmed", step=last.label, index=len(self.plan.steps) - 1,
                            readBack=live, message=message)
        self.on_decision(f"not promoted: {why}")
        return Outcome(HALTED, "not promoted", message, target_served=self.target_served,
                       e_values=self.judge.e_values(), step=last.label)

    def _hold_for(self, step: Step) -> float:
        return self.options.mirror_for_s if step.kind == "mirror" else self.options.interval_s

    # --- one step --------------------------------------------------------------------------------------

    def _judge_step(self, index: int, step: Step, hold_s: float, baking: bool = False) -> Outcome | None:
        """Judge closed windows until the step may be promoted (None) or ends the rollout (an Outcome).

        A window the source could not read, or whose counts restarted, is no data: it is judged as
        nothing, the interval it falls in is held, and the step needs `hold_s` of read windows besides.
        """
        options, to, baseline = self.options, self.options.to, self.options.baseline
        label = f"bake at {step.label}" if baking else step.label
        before = self._read()
        read_at = self.clock()
        self.judge.start_step((before or {}).get(baseline, DeploymentCounts()).live)
        if self.answers:  # a resumed rollout's step (index and label) keeps its answers' counts
            split = all(step.traffic.get(name, 0) > 0 for name in (to, baseline))
            self.answers.start_step(step.kind == "mirror", (index, label), split)
        step_counts: dict[str, Counts] = {}
        if self.resumed_step is not None and self.resumed_step[0] == index:
            step_counts = {to: self.resumed_step[1], baseline: self.resumed_step[2]}
        self.resumed_step = None
        step_pinned: dict[str, Counts] = {}
        interval_t, interval_b = Counts(), Counts()
        started = interval_started = read_at  # the step counts from its first reading: covered_s <= elapsed
        covered_s, interval_gaps, holds = 0.0, 0, 0
        no_data = ""  # why the last window without data had none
        self.view = View(step=label, index=index + 1, steps=len(self.plan.steps), traffic=step.traffic,
                         mirror=step.mirror_traffic, judge=self._judge_view())
        next_tick = started + self.tick_s
        while True:
            self.sleep(max(0.0, next_tick - self.clock()))
            next_tick += self.tick_s
            closed, gap, before, read_at, covered = self._window(before, read_at)
            covered_s += covered
            if gap:
                no_data, interval_gaps = gap, interval_gaps + 1
            target = _target_counts(closed.get(to, DeploymentCounts()), step.kind == "mirror")
            base = closed.get(baseline, DeploymentCounts()).live
            self.target_served += target.requests
            self.rollout_baseline = self.rollout_baseline + base
            for name, counts in closed.items():
                step_counts[name] = step_counts.get(name, Counts()) + (target if name == to else counts.live)
                if counts.pinned.requests:
                    step_pinned[name] = step_pinned.get(name, Counts()) + counts.pinned
            interval_t, interval_b = interval_t + target, interval_b + base
            judged = {}
            if not gap:  # what the judge folded, for --resume to fold again (judge_replay.py)
                judged = {"judged": {"target": counts_json(target), "baseline": counts_json(base),
                                     **self.judge.step_setup()}}
                self.judge.observe(target, base)
            answers = {"answers": self.answers.tick()} if self.answers else {}
            elapsed = self.clock() - started
            self.recorder.write(
                "judgement", step=label, index=index, traffic=step.traffic, mirror=step.mirror_traffic,
                window={n: _window_json(c) for n, c in closed.items()}, eValues=self.judge.e_values(),
                targetServed=self.target_served, **({"noData": gap} if gap else {}), **judged, **answers)
            self.view.counts, self.view.pinned = dict(step_counts), dict(step_pinned)
            self.view.elapsed_s, self.view.judge = elapsed, self._judge_view()
            if self._failure() is not None:
                return self._roll_back(index, self._failure(), step_counts)
            steer = self.steering.tick(self, index, step)  # pause/promote/abort from other terminals, outside changes
            if isinstance(steer, Failure):  # a resource rule (resources.py)
                return self._roll_back(index, steer, step_counts)
            if isinstance(steer, Stop):
                return self._stop(steer, index)
            if steer == "promote":
                return None
            step_t, step_b = step_counts.get(to, Counts()), step_counts.get(baseline, Counts())
            self.view.status = (f"no data: {gap}" if gap else
                                f"judging: {step_t.requests} of {options.min_requests} requests to {to}")
            if self.clock() - interval_started >= options.interval_s:
                answers_wait = self.answers.judge.waiting(options.min_requests) if self.answers else None
                enough = step_t.requests >= options.min_requests and answers_wait is None
                if enough:
                    self.judge.check_interval((interval_t, interval_b), (step_t, step_b), self.rollout_baseline)
                    self.recorder.write("interval", step=label, index=index, requests=step_t.requests,
                                        **self.judge.interval_record())
                    if self.answers:
                        self.answers.judge.check_interval(step_t.requests, options.min_requests)
                    if self._failure() is not None:
                        return self._roll_back(index, self._failure(), step_counts)
                gaps, interval_gaps = interval_gaps, 0
                interval_t, interval_b, interval_started = Counts(), Counts(), self.clock()
                paused = self.steering.paused  # `rollout pause`: judged, never promoted nor halted for want of data
                if not gaps and covered_s >= hold_s - 1e-6 and not paused:  # implies elapsed >= hold_s
                    if enough and self.judge.interval_ok:
                        unconfirmed = self.steering.confirm(self, index, step)  # --confirm-promotion
                        if unconfirmed is None:
                            return None
                        holds += 1
                        self.recorder.write("decision", decision="held", step=label, index=index, reason=unconfirmed,
                                            holds=holds)
                        self.view.status = f"held {holds}/{options.max_hold}: {unconfirmed}"
                        self.on_decision(f"held {label}: {unconfirmed} (hold {holds}; halts after {options.max_hold})")
                        if holds > options.max_hold:
                            return self._stop(Stop(HALTED, "halted", f"at step {label}: the promotion was not confirmed "
                                                   f"after {options.max_hold} extra interval(s) ({unconfirmed}); traffic "
                                                   f"is back on {options.baseline}", restore=self.plan.rollback), index)
                if (gaps or (elapsed >= hold_s - 1e-6 and not enough)) and not paused:
                    holds += 1
                    why = (f"no data in {gaps} window(s) of this interval ({no_data})" if gaps else
                           answers_wait or f"{step_t.requests} of the {options.min_requests} requests needed")
                    self.recorder.write("decision", decision="held", step=label, index=index, reason=why,
                                        requests=step_t.requests, needed=options.min_requests, holds=holds,
                                        noDataWindows=gaps)
                    self.view.status = f"held {holds}/{options.max_hold}: {why}"
                    self.on_decision(f"held {label}: {why} (hold {holds}; halts after {options.max_hold})")
                    if holds > options.max_hold:
                        waited = answers_wait if not gaps and step_t.requests >= options.min_requests else None
                        return self._halt(index, label, step_t.requests, no_data if gaps else "", waited)
            self.on_update(self.view)

    def _failure(self) -> Failure | None:
        return self.judge.failure or (self.answers.judge.failure if self.answers else None)

    def _window(self, before: Snapshot | None, read_at: float) -> tuple[Snapshot, str, Snapshot | None, float, float]:
        """One tick's reading -> (closed counts, why they are no data or "", the new base reading, its time,
        seconds of read data). A failed reading keeps the base: if the counts go on, the next reading
        holds what this one missed; counts that restarted are lost, and the window is no data."""
        now = self._read()
        now_at = self.clock()
        if now is None:
            return {}, self.read_error, before, read_at, 0.0
        if before is None:
            return {}, "no earlier reading in this step to count from", now, now_at, 0.0
        try:
            return window(now, before), "", now, now_at, now_at - read_at
        except CountsRestarted as err:
            self.recorder.write("counts-restarted", message=str(err))
            return {}, str(err), now, now_at, 0.0

    def _read(self) -> Snapshot | None:
        try:
            return self.source.read()
        except SourceError as err:
            self.read_error = str(err)
            self.recorder.write("source-error", message=str(err))
            return None

    # --- endings -----------------------------------------------------------------------------------

    def _roll_back(self, index: int, failure: Failure, step_counts: dict[str, Counts] | None = None) -> Outcome:
        self.view.judge = self._judge_view()
        self._status(f"rolling back: {failure.judge} ({failure.what})")
        with _signals_deferred():
            error = self._apply_quietly(self.plan.rollback)
        observed = {n: _counts_json(c) for n, c in (step_counts or {}).items()}
        step = self.plan.steps[index].label
        self.recorder.write("decision", decision="rolled-back", step=step, index=index, failure=failure.as_json(),
                            observed=observed, eValues=self.judge.e_values(), targetServed=self.target_served,
                            rollbackError=error)
        message = (f"at step {step}, {failure.judge} judge failed on {failure.what}: {failure.message}"
                   + (f"\nthe rollback itself failed: {error}" if error else ""))
        self.on_decision(f"failed step {step}: {failure.judge} judge, {failure.what}")
        self.on_decision(f"rollback failed: {error}" if error else
                         f"rolled back: live {_shares(self.plan.rollback.traffic)}")
        return Outcome(ROLLED_BACK, "rolled back", message, failure, self.target_served, self.judge.e_values(), step)

    def _halt(self, index: int, label: str, requests: int, no_data: str, waited: str | None) -> Outcome:
        """`waited`: what the answer judge still needed, when the requests were enough."""
        self._status("halting: not enough data")
        with _signals_deferred():
            error = self._apply_quietly(self.plan.rollback)
        why = (f"no data in its windows ({no_data}); a step is never promoted on missing data" if no_data else
               f"not enough data for the answer judge ({waited})" if waited else
               f"{self.options.to} served {requests} of the {self.options.min_requests} requests a step needs")
        message = (f"at step {label}: {why}, after {self.options.max_hold} extra interval(s); "
                   + (f"the rollback failed: {error}" if error else f"traffic is back on {self.options.baseline}"))
        self.recorder.write("decision", decision="halted", step=label, index=index, requests=requests,
                            noData=no_data or None, **({"waitedFor": waited} if waited else {}),
                            targetServed=self.target_served, message=message,
                            rollbackError=error)
        self.on_decision(f"halted at {label}: " + ("no data" if no_data else "not enough answers compared or tested"
                                                   if waited else "not enough requests")
                         + (f"; rollback failed: {error}" if error else f"; rolled back: live {_shares(self.plan.rollback.traffic)}"))
        return Outcome(HALTED, "halted", message, target_served=self.target_served, e_values=self.judge.e_values(), step=label)

    def _interrupted(self, exit_code: int) -> Outcome:
        good = self.plan.steps[self.last_good] if self.last_good >= 0 else self.plan.start
        self._status(f"interrupted: back to {good.label}")
        with _signals_deferred():
            error = self._apply_quietly(good)
        traffic = ", ".join(f"{name} {share}" for name, share in good.traffic.items())
        if error:  # never claim a state that was not confirmed
            message = (f"could not return to the last good step ({good.label}: live {traffic}): {error}\n"
                       "the endpoint's traffic is unknown: check it before --resume")
        else:
            message = f"left at the last good step ({good.label}: live {traffic}); continue with --resume"
        self.recorder.write("decision", decision="interrupted", step=good.label, lastGood=self.last_good,
                            judgeState=self.judge.state(), targetServed=self.target_served, exitCode=exit_code,
                            returned=error is None)
        self.on_decision(f"interrupted: could not return to {good.label}: {error}; the traffic is unknown" if error
                         else f"interrupted: back to {good.label} (live {traffic})")
        return Outcome(exit_code, "interrupted", message, target_served=self.target_served,
                       e_values=self.judge.e_values(), step=good.label)

    def _stop(self, stop: Stop, index: int) -> Outcome:
        """An ending decided by the steering: aborted, changed from outside, taken over, not confirmed."""
        error = None
        if stop.restore is not None:
            self._status(f"{stop.decision}: back to {stop.restore.label}")
            with _signals_deferred():
                error = self._apply_quietly(stop.restore)
        message = stop.message + (f"\nsetting {stop.restore.label} failed: {error}" if error else "")
        step = self.plan.steps[index].label
        self.recorder.write("decision", decision=stop.decision, step=step, index=index, message=message,
                            **(stop.details or {}), eValues=self.judge.e_values(), targetServed=self.target_served)
        self.on_decision(f"{stop.decision} at {step}: {message}")
        return Outcome(stop.exit_code, stop.decision, message, target_served=self.target_served,
                       e_values=self.judge.e_values(), step=step)

    def _apply_quietly(self, step: Step) -> str | None:
        try:
            self.applier.apply(step)
        except ApplyError as err:
            return str(err)
        return None

    def _status(self, text: str) -> None:
        self.view.status = text
        self.on_update(self.view)

    def _judge_view(self) -> dict[str, Any]:
        state = {"judge": self.judge.name, **{f"e({k})": round(v, 3) for k, v in self.judge.e_values().items()}}
        if hasattr(self.judge, "failed_checks"):
            state["failed checks"] = f"{self.judge.failed_checks}/{self.judge.failure_limit}"
        if self.answers:
            state.update(self.answers.judge.view())
        return state


def bakes_after(plan: Plan, index: int) -> bool:
    """--bake: the last live step (only deletions after it) is judged again for bake_s once promoted."""
    is_last_live = all(s.kind == "delete" for s in plan.steps[index + 1:])
    return 0 <= index < len(plan.steps) and is_last_live and plan.steps[index].judged and bool(plan.options.bake_s)


def _shares(traffic: dict[str, int]) -> str:
    return ", ".join(f"{name} {share}" for name, share in traffic.items()) or "none"


def _target_counts(counts: DeploymentCounts, mirror_step: bool) -> Counts:
    """The target's requests to judge: those the split sent it, and in a mirror step its mirrored copies.
    Header-pinned requests are never the split's evidence."""
    return counts.live + counts.mirrored if mirror_step else counts.live


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(128 + signum)


class _signals_deferred:
    """Let a rollback or the return to the last good step finish before another signal acts."""

    def __enter__(self):
        self.previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
