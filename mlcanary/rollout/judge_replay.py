"""--resume of the error/latency judge: its state saved at the last promotion (or interruption), then
the resumed step's judged windows folded in again, in order, from the record's judgement lines.

Each judgement line keeps what the judge folded (`judged`: both sides' counts and the step's
thresholds), so the same folds give the same e-values: the e-process continues, nothing is counted
twice (a resumed rollout reads only new windows), and the resumed step keeps the requests judged
before the stop toward --min-requests, never more than the record holds. A line no run could have
written (counts that cannot be, e-values or targetServed that its folds do not give) is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlcanary.rollout.counts import Counts, counts_from_json
from mlcanary.rollout.judges import Judge
from mlcanary.rollout.record import ResumePoint


class ReplayError(ValueError):
    """A line no run could have written; `entry` is that line, for the caller to find it in the file."""

    def __init__(self, message: str, entry: dict[str, Any]):
        super().__init__(message)
        self.entry = entry


@dataclass(frozen=True)
class Restored:
    target: Counts  # the resumed step's judged requests before the stop, per side
    baseline: Counts
    replayed: int  # judged windows folded in again on top of the saved state
    target_served: int


def restore(judge: Judge, point: ResumePoint) -> Restored:
    """Load the saved state into `judge` and fold the step's later windows in; ReplayError names the line
    (KeyError/TypeError from a garbled judgeState are the caller's to report as such)."""
    if point.judge_state is not None:
        judge.load_state(point.judge_state)
    target, baseline, replayed, served = Counts(), Counts(), 0, point.target_served
    chain: int | None = None  # targetServed of the line before, for the lines already in the saved state
    last_saved = max((n for n, e in enumerate(point.step_lines[:point.judged_before], start=1)
                      if e["event"] == "judgement"), default=0)
    for number, entry in enumerate(point.step_lines, start=1):
        folded_again = number > point.judged_before
        where = f"the {entry['event']} line of step {entry.get('step')!r} at time {entry.get('time')}"
        try:
            if folded_again and judge.failure is not None:
                raise ValueError(f"follows a window where the {judge.name} judge had already failed")
            if entry["event"] == "interval":
                requests = entry.get("requests")
                if requests != target.requests:
                    raise ValueError(f"requests {requests!r} is not the {target.requests} its step's windows hold")
                if folded_again:
                    judge.replay_interval(entry)
                continue
            fold = entry.get("judged")
            if fold is None and not isinstance(entry.get("noData"), str):
                if folded_again:
                    raise ValueError("holds neither what the judge folded ('judged') nor why it had no data ('noData')")
                chain = None  # written before windows kept their folds: nothing of it is counted
                continue
            if fold is not None and not isinstance(fold, dict):
                raise ValueError(f"'judged' is not an object: {fold!r}")
            window_t, window_b = (_counts(fold, "target"), _counts(fold, "baseline")) if fold else (Counts(), Counts())
            if not folded_again:  # in the saved state already: its requests count toward the step, checked
                if chain is not None and entry.get("targetServed") != chain + window_t.requests:
                    raise ValueError(f"targetServed {entry.get('targetServed')!r} is not the {chain + window_t.requests} "
                                     "the line before and its judged counts give")
                chain = entry.get("targetServed")
                if number == last_saved and chain != point.target_served:
                    raise ValueError(f"targetServed {chain!r} is not the {point.target_served} saved after it")
                target, baseline = target + window_t, baseline + window_b
                continue
            target, baseline = target + window_t, baseline + window_b
            if fold is None:
                _check_recorded(entry, judge.e_values(), served)
                continue
            judge.replay_window(fold, window_t, window_b)
            replayed, served = replayed + 1, served + window_t.requests
            _check_recorded(entry, judge.e_values(), served)
        except (ValueError, TypeError, KeyError) as err:
            raise ReplayError(f"{where}: {err}", entry) from None
    return Restored(target, baseline, replayed, served)


def _counts(fold: dict, side: str) -> Counts:
    try:
        return counts_from_json(fold.get(side))
    except ValueError as err:
        raise ValueError(f"judged {side}: {err}") from None


def _check_recorded(entry: dict[str, Any], values: dict[str, float], served: int) -> None:
    """The line's e-values and targetServed are what its folds give: a run wrote them from the same folds."""
    recorded = entry.get("eValues")
    if not isinstance(recorded, dict) or recorded.keys() != values.keys() or not all(
            isinstance(recorded[k], int | float) and math.isclose(recorded[k], v, rel_tol=1e-9)
            for k, v in values.items()):
        shown = ", ".join(f"{k} {v:.6g}" for k, v in values.items()) or "none"
        raise ValueError(f"eValues {recorded!r} are not what its judged counts give ({shown})")
    if entry.get("targetServed") != served:
        raise ValueError(f"targetServed {entry.get('targetServed')!r} is not the {served} its judged counts give")
