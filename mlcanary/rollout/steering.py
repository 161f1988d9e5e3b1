"""What a running rollout learns from outside itself, at every tick: has someone else changed the
endpoint, has a human asked to pause, promote or abort, may a step be promoted (a gate), and what it
publishes for `mlcanary rollout status`.

As Argo Rollouts' CLI, the verbs (`rollout_steer_cli.py`) never talk to the running process: they
write intent into the endpoint's hold document (`local_runtime/lease.py`), and the rollout acts on it
at its next tick. `Steering` is the rollout without a shared document (it still reads back what runs);
`HeldSteering` holds the endpoint from the first change to the end.

Exit code 4 (OUTSIDE_CHANGE): the endpoint was changed by someone else during the rollout (or its
hold was taken over with --force); the rollout stops without overwriting that change.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcanary.local_runtime import lease
from mlcanary.rollout.judges import Failure
from mlcanary.rollout.plan import Plan, Step
from mlcanary.rollout.record import new_rollout_id

OUTSIDE_CHANGE = 4
ABORTED = 1
READ_BACK_TRIES = 10


@dataclass
class Stop:
    """The rollout ends here: `restore` (if any) is applied first (an abort: the baseline)."""

    exit_code: int
    decision: str
    message: str
    restore: Step | None = None
    details: dict[str, Any] | None = None


# --- what runs, against what a step set ----------------------------------------------------------------

def _live(shares: dict[str, int]) -> dict[str, int]:
    """Live shares by name; names compared as Azure does, case-insensitively."""
    return {name.lower(): share for name, share in shares.items() if share}


def differences(step: Step, running: dict[str, Any] | None, specs: dict[str, dict] | None = None) -> list[str]:
    """What runs (an applier's read-back) against what `step` set, as a user reads it; [] when equal.
    `specs`: what each deployment should serve, when the read-back has it (the local runtime)."""
    if running is None:
        return [f"endpoint {step.spec.endpoint.name} is gone"]
    changes = []
    set_traffic, now_traffic = _live(step.traffic), _live(running.get("traffic", {}))
    if set_traffic != now_traffic:
        changes.append(f"live traffic {_shares(set_traffic)} -> {_shares(now_traffic)}")
    set_mirror, now_mirror = _live(step.mirror_traffic), _live(running.get("mirror", {}))
    if set_mirror != now_mirror:
        changes.append(f"mirror traffic {_shares(set_mirror)} -> {_shares(now_mirror)}")
    deployments = {name.lower(): d for name, d in running.get("deployments", {}).items()}
    planned = {name.lower() for name in step.spec.endpoint.deployments}
    for name in sorted(planned - deployments.keys()):
        changes.append(f"deployment {name} was removed")
    for name in sorted(deployments.keys() - planned):
        changes.append(f"deployment {name} was added")
    for name, deployment in step.spec.endpoint.deployments.items():
        now = deployments.get(name.lower())
        if now is None:
            continue
        if now.get("instanceCount") not in (None, deployment.instance_count):
            changes.append(f"deployment {name}: instances {deployment.instance_count} -> {now['instanceCount']}")
        elif specs is not None and now.get("spec") is not None and now["spec"] != specs.get(name):
            changes.append(f"deployment {name}: its model, code or settings changed")
    return changes


def _shares(traffic: dict[str, int]) -> str:
    return ", ".join(f"{name} {share}" for name, share in traffic.items()) or "none"


class Steering:
    """A rollout with no shared hold (an azure stack without a state folder, tests): it still compares
    what runs with what each step set, and reads back the last step before saying "promoted"."""

    paused = False
    full = False

    def __init__(self, applier: Any = None, sleep: Callable[[float], None] = time.sleep, reader: Any = None):
        self.applier = applier
        self.reader = reader or applier  # what reads back what runs (the local applier, AzureReadBack)
        self.sleep = sleep
        self._specs: tuple[Step, dict[str, dict]] | None = None

    def _expected_specs(self, step: Step) -> dict[str, dict] | None:
        """What each deployment of `step` serves (content digests included), computed once per step."""
        if getattr(self.applier, "kind", "") != "local runtime":
            return None
        if self._specs is None or self._specs[0] is not step:
            from mlcanary.components.local_payload import deployment_payload

            self._specs = (step, {n: deployment_payload(d) for n, d in step.spec.endpoint.deployments.items()})
        return self._specs[1]

    def begin(self) -> Stop | None:
        return None

    def observe(self, recorder: Any) -> Any:
        return recorder

    def tick(self, runner: Any, index: int, step: Step) -> Stop | Failure | str | None:
        """Once per judged window: a Stop, a Failure (rolled back), "promote" (promote this step now),
        or None (go on)."""
        return self._outside(step)

    def confirm(self, runner: Any, index: int, step: Step) -> str | None:
        """None when the step may be promoted, else why it is held."""
        return None

    def skip(self, step: Step, later: list[Step]) -> bool:
        """After `promote --full`: live steps before the last one are skipped."""
        return self.full and step.kind != "delete" and any(s.kind != "delete" for s in later)

    def verify_final(self, step: Step) -> Stop | None:
        """Read back that the last step holds before the rollout says promoted."""
        if not hasattr(self.reader, "read_back"):
            return None  # nothing to read back with: `up` succeeding is the stack's own read-back
        if hasattr(self.reader, "invalidate"):
            self.reader.invalidate()
        for _ in range(READ_BACK_TRIES):
            running = self._read_back(step)
            if running is not False:
                break
            self.sleep(0.5)
        else:
            return Stop(3, "halted", f"could not read back endpoint {step.spec.endpoint.name} after {step.label}: "
                                     "the runtime does not answer; the rollout does not claim it promoted")
        changed = differences(step, running, self._expected_specs(step))
        if changed:
            return _outside_stop(step, changed)
        return None

    def end(self, runner: Any, outcome: Any) -> None:
        return None

    def _read_back(self, step: Step) -> dict[str, Any] | None | bool:
        """What runs; None: the endpoint is gone; False: it could not be read."""
        try:
            return self.reader.read_back(step.spec.endpoint.name)
        except Exception:  # noqa: BLE001 - a runtime restarting or down: unknown, not a change
            return False

    def _outside(self, step: Step) -> Stop | None:
        if not hasattr(self.reader, "read_back"):
            return None
        running = self._read_back(step)
        if running is False:
            return None
        changed = differences(step, running, self._expected_specs(step))
        return _outside_stop(step, changed) if changed else None


def _outside_stop(step: Step, changed: list[str]) -> Stop:
    return Stop(OUTSIDE_CHANGE, "outside-change",
                f"endpoint {step.spec.endpoint.name} was changed by someone else during step {step.label}: "
                f"{'; '.join(changed)}. The rollout stops and leaves it as it is (nothing overwritten)",
                details={"changes": changed})


# --- the shared hold --------------------------------------------------------------------------------

def step_json(step: Step) -> dict[str, Any]:
    return {"label": step.label, "kind": step.kind, "traffic": step.traffic, "mirror": step.mirror_traffic}


def _counts(counts: Any) -> dict[str, Any]:
    rate = counts.rate("error_rate")
    return {"requests": counts.requests, "errors": counts.errors,
            "errorRate": None if rate is None else round(rate, 5), "p99Ms": counts.percentile_ms(99)}


class HeldSteering(Steering):
    """The rollout holds its endpoint (lease.py) from its first change to its end, publishes its state
    each tick, and acts on the intent other terminals write: pause, resume, promote [--full], abort."""

    def __init__(self, directory: Path, plan: Plan, applier: Any, *, record: Path | None, force: bool = False,
                 lock_root: Path | None = None, notifier: Any = None, confirmer: Any = None,
                 rollout_id: str | None = None, warn: Callable[[str], None] | None = None,
                 resources: Any = None, reader: Any = None, sleep: Callable[[float], None] = time.sleep):
        super().__init__(applier, sleep, reader)
        self.directory, self.plan, self.record, self.force = directory, plan, record, force
        self.lock_root = lock_root
        self.notifier, self.confirmer = notifier, confirmer
        self.resources = resources  # resources.ResourceWatch, when the plan has resource rules
        self.id = rollout_id or new_rollout_id(plan.endpoint)
        self.warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        self.promotions_seen = 0
        self.step_since = time.time()
        self.recorder: Any = None
        self.acquired = False
        self.bad_intent_said = False
        self.traffic: dict[str, Any] = {}  # what the last step set, for the notifications

    # -- start and end --------------------------------------------------------------------------------

    def begin(self) -> Stop | None:
        if self.acquired:
            return None
        plan = self.plan
        fields = {
            "id": self.id, "target": plan.options.to, "baseline": plan.options.baseline,
            "record": str(self.record.resolve()) if self.record else None, "stageFile": str(plan.stage_file),
            "plan": {"steps": [step_json(s) for s in plan.steps], "start": step_json(plan.start),
                     "rollback": step_json(plan.rollback), "intervalS": plan.options.interval_s,
                     "minRequests": plan.options.min_requests, "maxHold": plan.options.max_hold},
            # what `rollout abort` applies itself when this process is gone
            "rollbackStage": {"config": plan.rollback.config, "projectDir": str(plan.project_dir)},
            "step": None, "stepIndex": None, "stepSince": time.time(),
        }
        try:
            if self.lock_root is not None:
                from mlcanary.local_runtime.stage_lock import stage_lock

                # Inside the stage lock: a `local up` running now finishes first, and sees the hold after.
                with stage_lock(self.lock_root, f"rollout {self.id}"):
                    lease.acquire(self.directory, plan.endpoint, fields, self.force, self.warn)
            else:
                lease.acquire(self.directory, plan.endpoint, fields, self.force, self.warn)
        except (lease.EndpointHeld, lease.LeaseFileError) as err:
            return Stop(1, "refused", f"{err}")
        self.acquired = True
        return None

    def end(self, runner: Any, outcome: Any) -> None:
        with lease.locked(self.directory, self.plan.endpoint) as held:
            doc = held.doc
            if doc is not None and doc.get("id") == self.id and lease.is_held(doc):
                lease.end_hold(held, {**doc, **self._state(runner)}, outcome.decision, outcome.message,
                               exitCode=outcome.exit_code)
        lease.forget(self.directory, self.plan.endpoint)

    # -- every event of the record: notifications and the published state ----------------------------

    def observe(self, recorder: Any) -> Any:
        self.recorder = recorder
        return _Observed(recorder, self)

    def on_event(self, entry: dict[str, Any]) -> None:
        if entry.get("event") == "step":
            self.step_since = entry.get("time") or time.time()
            if self.resources is not None:
                self.resources.start_step()
            if hasattr(self.reader, "invalidate"):
                self.reader.invalidate()
            index = entry.get("index")
            steps = self.plan.steps
            step = steps[index] if isinstance(index, int) and 0 <= index < len(steps) else None
            self._publish(step=entry.get("label"), stepIndex=index, stepSince=self.step_since,
                          traffic=entry.get("traffic"), mirror=entry.get("mirror"), counts={}, elapsedS=0.0,
                          next=self._next(index, step) if step is not None else "the first step")
            self.traffic = {"traffic": entry.get("traffic"), "mirror": entry.get("mirror")}
        if entry.get("event") in ("step", "decision") and self.notifier is not None:
            failures = self.notifier.send({"rolloutId": self.id, "endpoint": self.plan.endpoint, **self.traffic, **entry})
            for failure in failures:
                self.warn(f"warning: --notify {failure} (the rollout goes on)")
                self.recorder.write("notify-failed", message=failure)

    # -- each tick ---------------------------------------------------------------------------------------

    def tick(self, runner: Any, index: int, step: Step) -> Stop | Failure | str | None:
        resource_failure = self.resources.check() if self.resources is not None else None
        with lease.locked(self.directory, self.plan.endpoint) as held:
            doc = held.doc
            if doc is None or doc.get("id") != self.id or not lease.is_held(doc):
                by = (doc or {}).get("takenOverBy") or {}
                return Stop(OUTSIDE_CHANGE, "taken-over",
                            f"the hold on endpoint {self.plan.endpoint} was taken over by {by.get('writer', 'another process')} "
                            f"(pid {by.get('pid')}, user {by.get('user')}); the rollout stops without changing anything")
            outside = self._outside(step)
            if outside is not None:
                held.save({**doc, **self._state(runner, index, step), "heartbeat": time.time()})
                return outside
            intent = self._intent(doc)
            interventions = list(doc.get("interventions") or []) if isinstance(doc.get("interventions"), list) else []
            answer: Stop | Failure | str | None = None
            if resource_failure is not None:
                rule, observed, seen = resource_failure
                held.save({**doc, **self._state(runner, index, step), "heartbeat": time.time()})
                return Failure("resource", str(rule), f"{rule.metric} = {observed:.3g} (limit {rule.operator} "
                                                      f"{rule.limit:g}); {seen}")
            abort = intent.get("abort")
            if abort:
                interventions.append({**abort, "action": "abort", "step": step.label})
                answer = Stop(ABORTED, "aborted",
                              f"aborted by {abort.get('user')} at {_clock(abort.get('at'))} from step {step.label}; "
                              f"traffic is back on {self.plan.options.baseline} "
                              f"({_shares(self.plan.rollback.traffic)})", restore=self.plan.rollback,
                              details={"by": abort.get("user")})
            else:
                paused = bool(intent.get("paused"))
                if paused != self.paused:
                    who = intent.get("pausedBy") if paused else intent.get("resumedBy")
                    interventions.append({**(who or {}), "action": "pause" if paused else "resume", "step": step.label})
                    self._record("intervention", action="pause" if paused else "resume", step=step.label, by=who)
                    self.paused = paused
                promote = intent.get("promote")
                if promote and int(promote.get("seq", 0)) > self.promotions_seen:
                    self.promotions_seen = int(promote["seq"])
                    action = "promote --full" if promote.get("full") else "promote"
                    interventions.append({**promote, "action": action, "step": step.label})
                    self._record("intervention", action=action, step=step.label, by=promote)
                    self.full = self.full or bool(promote.get("full"))
                    answer = "promote"
            doc = {**doc, **self._state(runner, index, step), "interventions": interventions,
                   "heartbeat": time.time(), "promotionsSeen": self.promotions_seen}
            held.save(doc)
        if isinstance(answer, Stop):
            self._record("intervention", action="abort", step=step.label, by=abort)
        return answer

    def _intent(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The intent the verbs wrote, checked like any input: a malformed one is ignored (and said once)."""
        intent = doc.get("intent") or {}
        promote, abort = (intent.get("promote"), intent.get("abort")) if isinstance(intent, dict) else (None, None)
        well_formed = (isinstance(intent, dict) and isinstance(intent.get("paused", False), bool)
                       and (promote is None or (isinstance(promote, dict) and isinstance(promote.get("seq"), int)))
                       and (abort is None or isinstance(abort, dict)))
        if well_formed:
            return dict(intent)
        if not self.bad_intent_said:
            self.warn(f"warning: {lease.document_file(self.directory, self.plan.endpoint)}: its intent is not one "
                      "`mlcanary rollout pause|resume|promote|abort` writes; ignored")
            self.bad_intent_said = True
        return {"paused": self.paused}

    def confirm(self, runner: Any, index: int, step: Step) -> str | None:
        if self.confirmer is None:
            return None
        return self.confirmer.ask({"rolloutId": self.id, "endpoint": self.plan.endpoint, "event": "confirm-promotion",
                                   "step": step.label, "index": index, "traffic": step.traffic,
                                   "eValues": runner.judge.e_values()})

    # -- the published state ---------------------------------------------------------------------------

    def _record(self, event: str, **fields: Any) -> None:
        if self.recorder is not None:
            self.recorder.write(event, **fields)

    def _publish(self, **fields: Any) -> None:
        with lease.locked(self.directory, self.plan.endpoint) as held:
            doc = held.doc
            if doc is not None and doc.get("id") == self.id and lease.is_held(doc):
                held.save({**doc, **fields, "heartbeat": time.time()})

    def _state(self, runner: Any, index: int | None = None, step: Step | None = None) -> dict[str, Any]:
        view = runner.view
        state: dict[str, Any] = {
            "counts": {name: _counts(c) for name, c in view.counts.items()},
            "judge": view.judge, "eValues": runner.judge.e_values(), "status": view.status,
            "elapsedS": round(view.elapsed_s, 1), "paused": self.paused, "full": self.full,
        }
        if self.resources is not None and self.resources.values:
            state["resources"] = self.resources.values
        if getattr(runner, "answers", None) is not None:
            state["answers"] = runner.answers.judge.status()
        if step is not None and index is not None:
            state["next"] = self._next(index, step)
        return state

    def _next(self, index: int, step: Step) -> str:
        options = self.plan.options
        later = self.plan.steps[index + 1:]
        if self.paused:
            return "paused: judging goes on, a failure still rolls back, nothing is promoted until `rollout resume`"
        if not later:
            return f"finish: {options.to} promoted at {step.label}"
        return (f"{later[0].label} once {options.to} served {options.min_requests} requests in this step, "
                f"at least {options.interval_s:g} s in, with the judge passing")


class _Observed:
    """The runner's recorder, with every event also seen by the steering (notifications, state)."""

    def __init__(self, recorder: Any, steering: HeldSteering):
        self._recorder, self._steering = recorder, steering

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = self._recorder.write(event, **fields)
        self._steering.on_event(entry)
        return entry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recorder, name)


def _clock(at: Any) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(float(at)))
    except (TypeError, ValueError):
        return "?"


def intent_author() -> dict[str, Any]:
    """Who asks, for the record: $USER (or the account), this host and pid, and when."""
    info = lease.this_process()
    return {"user": os.environ.get("USER") or info["user"], "host": info["host"], "pid": info["pid"],
            "at": time.time()}
