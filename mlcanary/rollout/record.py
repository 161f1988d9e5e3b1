"""The rollout's record: one JSON object per line, per judgement and decision; read back by --resume
and --plot."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    pass


class Recorder:
    def __init__(self, path: Path | None, clock=time.time, append: bool = False):
        self.path = path
        self.clock = clock
        self.events: list[dict[str, Any]] = []
        # A new rollout starts a new record; --resume continues the interrupted one's.
        self._file = open(path, "a" if append else "w", encoding="utf-8") if path else None  # noqa: SIM115

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"time": round(self.clock(), 3), "event": event, **fields}
        self.events.append(entry)
        if self._file:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()
        return entry

    def close(self) -> None:
        if self._file:
            self._file.close()


def read_record(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RecordError(f"{path}: record not found (--resume continues from the --record of an earlier run)") from None
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            raise RecordError(f"{path}:{number}: not a JSON line of a rollout record") from None
    return events


def resume_point(events: list[dict[str, Any]], plan_json: dict[str, Any]) -> tuple[int, dict | None, int]:
    """(index of the step to continue with, the judge's state, target requests served so far) from the
    record of an interrupted rollout of the same plan."""
    plans = [e for e in events if e["event"] == "plan"]
    decisions = [e for e in events if e["event"] == "decision"]
    if not plans:
        raise RecordError("the record holds no rollout plan")
    recorded = plans[-1]["plan"]
    for key in ("endpoint", "to", "from", "steps"):
        if recorded.get(key) != plan_json.get(key):
            raise RecordError(f"the record is of another rollout ({key}: {recorded.get(key)!r}, now {plan_json.get(key)!r})")
    last = decisions[-1] if decisions else None
    if last is None or last["decision"] != "interrupted":
        ended = last["decision"] if last else "no decision"
        raise RecordError(f"the recorded rollout was not interrupted (last decision: {ended}); nothing to resume")
    return last["lastGood"] + 1, last.get("judgeState"), last.get("targetServed", 0)
