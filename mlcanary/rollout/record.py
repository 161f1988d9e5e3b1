"""The rollout's record: one JSON object per line, per judgement and decision; read back by --resume
and --plot.

A record file holds any number of rollouts, each with its id on every line: `--record` appends and
never truncates, and refuses a file that is not a record (a stage file given by mistake). Records are
written 0600: they name the endpoint and its traffic. Read back, a record is input like any other:
each line is checked before a rollout resumes from it, and a line that cannot be true is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENDINGS = ("finished", "rolled-back", "halted", "unconfirmed")  # decisions after which nothing is left to resume
DECISIONS = (*ENDINGS, "promoted", "baked", "held", "interrupted")


class RecordError(ValueError):
    pass


def new_rollout_id(endpoint: str, clock=time.time) -> str:
    return f"{endpoint}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(clock()))}-{secrets.token_hex(2)}"


class Recorder:
    def __init__(self, path: Path | None, rollout_id: str = "", clock=time.time):
        self.path = path
        self.rollout_id = rollout_id
        self.clock = clock
        self.events: list[dict[str, Any]] = []
        self._file = _open_record(path) if path else None

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"time": round(self.clock(), 3), "event": event, "rollout": self.rollout_id, **fields}
        self.events.append(entry)
        if self._file:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()
        return entry

    def close(self) -> None:
        if self._file:
            self._file.close()


def check_writable(path: Path) -> None:
    """RecordError unless `path` is a new file or a record: nothing else is ever appended to."""
    if path.is_dir():
        raise RecordError(f"--record {path}: is a folder; give a file name")
    if path.exists() and path.stat().st_size:
        read_record(path, writing=True)


def _open_record(path: Path):
    check_writable(path)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing record may have been made readable by others
    return os.fdopen(descriptor, "a", encoding="utf-8")


def read_record(path: Path, writing: bool = False) -> list[dict[str, Any]]:
    """Every event of the record, each checked to be a record line; RecordError names the first that is not."""
    what = "--record" if writing else "record"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(f"{path}: record not found (--resume continues from the --record of an earlier run)") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise RecordError(f"{what} {path}: not a rollout record (JSON lines written by --record)") from None
    events = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not (isinstance(event, dict) and isinstance(event.get("event"), str)
                and isinstance(event.get("time"), int | float) and not isinstance(event.get("time"), bool)):
            if number == len(lines) and not text.endswith("\n"):  # each line is written with its newline
                raise RecordError(f"{what} {path}:{number}: the last line is cut short (no newline at its end: the "
                                  "process was killed while writing it); delete that line to use the record "
                                  "as it was before it")
            raise RecordError(f"{what} {path}:{number}: not a line of a rollout record "
                              "(--record appends only to a record it wrote, or creates a new file)")
        events.append(event)
    return events


def line_number(path: Path, entry: dict[str, Any]) -> int | None:
    """The line of the record file that holds `entry` (the last such line), to name it in a refusal."""
    found = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            if json.loads(line) == entry:
                found = number
        except ValueError:
            continue
    return found


@dataclass(frozen=True)
class ResumePoint:
    rollout_id: str
    plan: dict[str, Any]  # the recorded plan: options, stages, stage file
    start_index: int  # the step to continue with
    judge_state: dict | None
    target_served: int
    how: str  # how the rollout ended: "interrupted", or "died" (no decision: its process was killed)
    at_step: str  # the step that was live when it ended
    answer_windows: tuple[dict[str, Any], ...] = ()  # its judgement lines with answers, for AnswerJudge.replay
    # The resumed step's judgement and interval lines since the step began (judge_replay.py): the first
    # `judged_before` are already in judge_state (an interruption saved it mid-step), the rest are folded again.
    step_lines: tuple[dict[str, Any], ...] = ()
    judged_before: int = 0
    state_from: str = ""  # the decision judge_state was saved at, as a user reads it ("": none, the rollout's start)
    baked: bool = False  # the record holds a "baked" decision: a rollout stopped after its last live step bakes first


def _field(event: dict, key: str, kind: type | tuple, where: str) -> Any:
    value = event.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise RecordError(f"{where}: {key!r} is missing or not {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def resume_point(events: list[dict[str, Any]], path: Path) -> ResumePoint:
    """Where the record's last rollout stopped, checked: a rollout that ended is not resumed, and a
    step index or count that no run could have written refuses the record."""
    plans = [(n, e) for n, e in enumerate(events) if e["event"] == "plan"]
    if not plans:
        raise RecordError(f"{path}: the record holds no rollout plan")
    last_plan = plans[-1][1]
    rollout_id = last_plan.get("rollout") or ""
    where = f"{path} (rollout {rollout_id or 'without an id'})"
    plan = _field(last_plan, "plan", dict, where)
    stages = _field(plan, "stages", list, f"{where} plan")
    for key in ("endpoint", "stageFile", "to", "from"):
        _field(plan, key, str, f"{where} plan")
    mine = [e for e in events if e.get("rollout", "") == rollout_id]  # a resumed rollout keeps its id
    decisions = [e for e in mine if e["event"] == "decision"]
    for decision in decisions:
        if decision.get("decision") not in DECISIONS:
            raise RecordError(f"{where}: unknown decision {decision.get('decision')!r}")
    last = decisions[-1] if decisions else None
    if last is not None and last["decision"] in ENDINGS:
        raise RecordError(f"{where}: the rollout ended ({last['decision']} at {last.get('step')!r}); nothing to resume")
    steps = [e for e in mine if e["event"] == "step"]
    at_step = steps[-1].get("label", "?") if steps else "the stage file"
    # The judge's state was saved at the last promotion (or bake), or at an interruption, mid-step;
    # the step's windows since it began are in the record.
    saved = [n for n, e in enumerate(mine) if e["event"] == "decision"
             and e["decision"] in ("promoted", "baked", "interrupted")]
    base = mine[saved[-1]] if saved else None
    how = "interrupted" if last is not None and last["decision"] == "interrupted" else "died"
    if base is None:
        last_good, state_from = -1, ""
    elif base["decision"] == "interrupted":
        last_good, state_from = _field(base, "lastGood", int, where), "the interruption"
    else:
        last_good, state_from = _field(base, "index", int, where), f"the {base['decision']} step {base.get('step')!r}"
    if not -1 <= last_good < len(stages):
        raise RecordError(f"{where}: lastGood {last_good} is not a step of this plan (-1 to {len(stages) - 1})")
    state = base.get("judgeState") if base else None
    if state is not None and not isinstance(state, dict):
        raise RecordError(f"{where}: judgeState is not an object")
    served = base.get("targetServed", 0) if base else 0
    if not isinstance(served, int) or isinstance(served, bool) or served < 0:
        raise RecordError(f"{where}: targetServed must be a whole number of at least 0, got {served!r}")
    promotions = [n for n in saved if mine[n]["decision"] != "interrupted"]
    step_began = promotions[-1] + 1 if promotions else 0
    # A rollout stopped in its bake (after the promotion of its last live step, index last_good) has the
    # bake's windows to fold again: their step is "bake at <label>" (Runner._judge_step).
    step_lines = [(n, e) for n, e in enumerate(mine[step_began:], start=step_began)
                  if e["event"] in ("judgement", "interval") and (e.get("index") == last_good + 1 or (
                      e.get("index") == last_good and str(e.get("step", "")).startswith("bake at ")))]
    baked = any(e.get("decision") == "baked" for e in decisions)
    judged_before = sum(1 for n, _ in step_lines if saved and n < saved[-1])
    answers = tuple(e for e in mine if e["event"] == "judgement" and "answers" in e)
    return ResumePoint(rollout_id, plan, last_good + 1, state, served, how, at_step, answers,
                       tuple(e for _, e in step_lines), judged_before, state_from, baked)
