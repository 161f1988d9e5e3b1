"""Where the answer judge's windows come from: the local runtime's answer book (local_runtime/pairing.py).

`start()` tells the runtime what to compare on the endpoint; each `read()` returns what is new since
the last one as an AnswerWindow (pair counts as differences of cumulative counters, output numbers
and disagreement samples newer than the last reading); `stop()` ends the comparing.
"""

from __future__ import annotations

from typing import Any

from mlcanary.rollout.answer_judge import AnswerOptions, AnswerWindow
from mlcanary.rollout.sources import SourceError


class LocalAnswerSource:
    def __init__(self, client: Any, endpoint: str, options: AnswerOptions, target: str, baseline: str):
        self.client, self.endpoint, self.options = client, endpoint, options
        self.target, self.baseline = target, baseline
        self.since = 0
        self.totals = (0, 0, 0)  # compared, agreed, not compared: the runtime's counters at the last reading

    def start(self) -> None:
        settings = self.options.settings.as_json()
        self._call(self.client.set_comparison, self.endpoint, settings["comparePath"], settings["outputTolerance"])
        reading = self._call(self.client.answers, self.endpoint, 0)
        self.totals, self.since = self._pair_totals(reading), reading["next"]

    def stop(self) -> None:
        try:
            self.client.stop_comparison(self.endpoint)
        except Exception:  # the runtime may be gone: nothing is left to stop
            pass

    def read(self) -> AnswerWindow:
        try:
            reading = self._call(self.client.answers, self.endpoint, self.since)
        except SourceError:
            return AnswerWindow()  # an empty window: the next reading picks up what this one missed
        if reading.get("settings") is None:  # the runtime restarted or someone stopped it: ask again
            self.start()
            return AnswerWindow()
        if reading["settings"] != self.options.settings.as_json():
            # Someone else told the runtime to compare something else: this window's pairs may have been
            # compared by their rule, not the rollout's. Set ours again and count from there.
            self.start()
            return AnswerWindow(not_compared_reason=f"the runtime compared {reading['settings']} instead of "
                                                    "the rollout's settings (changed by another client): set again")
        totals = self._pair_totals(reading)
        compared, agreed, not_compared = (max(0, now - before) for now, before in zip(totals, self.totals))
        self.totals, self.since = totals, reading["next"]
        outputs = reading.get("outputs", {})
        return AnswerWindow(
            compared, agreed, not_compared,
            tuple(outputs.get(self.target, ())), tuple(outputs.get(self.baseline, ())),
            tuple(s for s in reading.get("samples", ()) if s["mirror"] == self.target),
            reading.get("lastNotCompared"), bool(reading.get("outputsLost")))

    def _pair_totals(self, reading: dict) -> tuple[int, int, int]:
        pairs = [p for p in reading.get("pairs", ()) if p["mirror"] == self.target]
        return (sum(p["compared"] for p in pairs), sum(p["agreed"] for p in pairs),
                sum(p["notCompared"] for p in pairs))

    def _call(self, method, *args):
        from mlcanary.local_runtime.client import NotRunning, RuntimeRefusal

        try:
            return method(*args)
        except (NotRunning, RuntimeRefusal, OSError) as err:
            raise SourceError(f"cannot read the local runtime's answers: {err}") from None
