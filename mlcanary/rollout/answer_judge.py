"""The answer judge: is the target answering what it should, not only answering?

Runs next to the error/latency judge when the rollout says what to compare (`--compare-path`,
`compare` in `mlcanary:rollout`). Per closed window it sees an `AnswerWindow`:

- mirror phase: the pairs of (baseline's live answer, target's mirrored answer) compared in the window.
  A disagreement is an event like an error: a one-sample e-value (evalue.RateEValue) tests H0 "the
  share of disagreeing pairs is at most --max-disagreement" and rolls back once it reaches 1/alpha -
  while the target is still dark, before any client got one of its answers.
- live steps: one output number per answer of each side (components/answer_compare.output_value).
  The split is random, so both sides see alike inputs: evalue.ShiftEValue tests H0 "the target's
  outputs are distributed as the baseline's, moved by at most --output-tolerance", on cells between
  the quintiles of a reference sample of the baseline's outputs taken before it folds any in.
- `--rule output_agreement >= X` (share agreed, mirror phase) and `--rule output_shift < X` (total
  variation distance of the binned outputs over the live steps so far), checked at interval end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mlcanary.components.answer_compare import Settings
from mlcanary.rollout.evalue import RateEValue, ShiftEValue, cells_from, with_tolerance_bands
from mlcanary.rollout.judges import Failure
from mlcanary.components.rollout_rules import ANSWER_METRICS, Rule

DEFAULT_MAX_DISAGREEMENT = 0.01
REFERENCE_SIZE = 200  # baseline outputs that fix the cells of the distribution test
MAX_SAMPLES_KEPT = 20  # disagreement samples the judge keeps for its verdict
SAMPLES_PER_WINDOW_RECORDED = 5


@dataclass(frozen=True)
class AnswerOptions:
    settings: Settings
    max_disagreement: float = DEFAULT_MAX_DISAGREEMENT
    alpha: float = 0.05
    rules: tuple[Rule, ...] = ()

    def as_json(self) -> dict:
        """As `compare` in `mlcanary:rollout` spells it, with the defaults filled in."""
        return {"path": str(self.settings.path), "tolerance": str(self.settings.tolerance),
                "maxDisagreement": self.max_disagreement}


@dataclass(frozen=True)
class AnswerWindow:
    """What one closed window says about the answers of the target (`to`) and the baseline."""

    compared: int = 0  # mirrored pairs (baseline live answer, target mirror answer) compared
    agreed: int = 0
    not_compared: int = 0
    target_outputs: tuple[float, ...] = ()  # one number per live answer
    baseline_outputs: tuple[float, ...] = ()
    samples: tuple[dict, ...] = ()  # disagreements newly seen
    not_compared_reason: str | None = None
    outputs_lost: bool = False
    # Sources whose answers land late (Azure ML's data collector): why the answers read so far cannot
    # judge the step yet (held, never passed), and how many of the target's answers found no partner
    # of the baseline's to pair with (then its mirror phase is judged on distributions), and lines
    # that were not records (ignored, counted).
    pending: str | None = None
    unpaired: int = 0
    malformed: int = 0

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"compared": self.compared, "agreed": self.agreed, "notCompared": self.not_compared}
        if self.pending:
            result["pending"] = self.pending
        if self.unpaired:
            result["unpaired"] = self.unpaired
        if self.malformed:
            result["malformedLines"] = self.malformed
        for side, values in (("target", self.target_outputs), ("baseline", self.baseline_outputs)):
            if values:
                result[f"{side}Outputs"] = _summary(values)
        if self.samples:  # a few per window keep the record small under a steady stream of disagreements
            result["samples"] = list(self.samples[:SAMPLES_PER_WINDOW_RECORDED])
        if self.not_compared_reason:
            result["lastNotCompared"] = self.not_compared_reason
        if self.outputs_lost:
            result["outputsLost"] = True
        return result


def _summary(values: tuple[float, ...]) -> dict[str, Any]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(values), "mean": sum(values) / len(values), "p10": pick(0.1), "p50": pick(0.5), "p90": pick(0.9)}


class AnswerJudge:
    name = "answers"

    def __init__(self, options: AnswerOptions):
        self.options = options
        self.rules = tuple(r for r in options.rules if r.metric in ANSWER_METRICS)
        self.disagreement = RateEValue(options.alpha)
        self.shift: ShiftEValue | None = None
        self.reference: list[float] = []
        self.compared = self.agreed = 0  # over the rollout's mirror phase
        self.step_compared = self.step_agreed = 0
        self.step_tested = self.step_baseline_outputs = 0  # this step: target outputs tested, baseline outputs seen
        self.samples: list[dict] = []
        self.last_not_compared: str | None = None
        self.pending: str | None = None
        self.step_unpaired = 0
        self.mirror_step = False
        self.split = True
        self.step: Any = None  # which step the step counts are of (the runner's (index, label))
        self.fold: dict[str, Any] = {}  # what the last window folded into the distribution test, for the record
        self.failure: Failure | None = None

    def start_step(self, mirror_step: bool, step: Any = None, split: bool = True) -> None:
        """A new step starts its counts at 0; the step a resumed rollout continues (the same `step`
        as the counts were restored for, `replay`) keeps them: they are its windows before the stop.
        `split`: both sides serve live traffic in the step (not a 100 % step, nor a bake at 100 %)."""
        self.mirror_step, self.split = mirror_step, split
        if step is not None and step == self.step:
            return
        self.step = step
        self.step_compared = self.step_agreed = 0
        self.step_tested = self.step_baseline_outputs = 0
        self.step_unpaired = 0

    def observe(self, window: AnswerWindow) -> None:
        self.fold = {}
        if self.failure is not None:
            return
        self._count(window.compared, window.agreed, window.samples, window.not_compared_reason)
        self.pending = window.pending
        self.step_unpaired += window.unpaired
        self.step_baseline_outputs += len(window.baseline_outputs)
        if self.shift is None:
            # The cells come from the baseline alone, before anything is tested: fill the reference
            # first; the target's outputs of those windows are not tested.
            added = list(window.baseline_outputs[:REFERENCE_SIZE - len(self.reference)])
            if added:
                self.fold = {"reference": added}
                self._extend_reference(added)
        else:
            tally = self.shift.update(list(window.target_outputs), list(window.baseline_outputs))
            if tally is not None:
                self.fold = {"tally": tally}
                self.step_tested += tally["target"]
        self._judge()

    def _count(self, compared: int, agreed: int, samples: Any, not_compared: str | None) -> None:
        self.samples = (self.samples + list(samples))[-MAX_SAMPLES_KEPT:]
        self.last_not_compared = not_compared or self.last_not_compared
        if compared:
            self.compared += compared
            self.agreed += agreed
            self.step_compared += compared
            self.step_agreed += agreed
            self.disagreement.update(compared - agreed, compared, self.options.max_disagreement)

    def _extend_reference(self, values: list[float]) -> None:
        self.reference += values
        if len(self.reference) >= REFERENCE_SIZE:
            tolerance = self.options.settings.tolerance
            edges, tied = with_tolerance_bands(*cells_from(self.reference), tolerance.relative, tolerance.absolute)
            self.shift = ShiftEValue(edges, tied, self.options.alpha, tolerance.relative, tolerance.absolute)

    def _judge(self) -> None:
        values = self.e_values()
        if values["disagreement"] >= 1 / self.options.alpha:
            self.failure = Failure(self.name, "output agreement", self._disagreement_message(), values["disagreement"])
        elif values["output shift"] >= 1 / self.options.alpha:
            self.failure = Failure(self.name, "output distribution", self._shift_message(), values["output shift"])

    def replay(self, judgements: list[dict[str, Any]]) -> None:
        """Restore what the judge had accumulated from a record's judgement lines of this rollout, in
        order: the counts and disagreement samples of each window (`answers`), the distribution test's
        reference and tallies (`answers.fold`). The same folds in the same order give the same e-values
        (the e-process continues; nothing is counted twice: a resumed rollout reads only new windows).
        ValueError names a line that cannot be one this judge wrote."""
        for number, entry in enumerate(judgements, start=1):
            window = entry.get("answers")
            try:
                self._replay_window(entry, window)
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(f"judgement {number} (step {entry.get('step')!r}): its answers {err}") from None
            if self.failure is not None:
                return

    def _replay_window(self, entry: dict[str, Any], window: Any) -> None:
        if not isinstance(window, dict):
            raise ValueError(f"are not an object: {window!r}")
        index, label = entry.get("index"), entry.get("step")
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(label, str):
            raise ValueError("belong to no step (index and step are missing)")
        self.start_step(bool(entry.get("mirror")), (index, label))
        compared, agreed = _count_of(window, "compared"), _count_of(window, "agreed")
        if agreed > compared:
            raise ValueError(f"agreed {agreed} of only {compared} compared")
        samples = window.get("samples", [])
        if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
            raise ValueError("samples are not a list of objects")
        reason = window.get("lastNotCompared")
        self._count(compared, agreed, samples, reason if isinstance(reason, str) else None)
        self.step_unpaired += _count_of(window, "unpaired")
        baseline = window.get("baselineOutputs") or {}
        self.step_baseline_outputs += _count_of(baseline, "n") if baseline else 0
        fold = window.get("fold") or {}
        if "reference" in fold:
            added = fold["reference"]
            if self.shift is not None or not isinstance(added, list) or not added \
                    or len(self.reference) + len(added) > REFERENCE_SIZE \
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in added):
                raise ValueError(f"reference: at most {REFERENCE_SIZE} finite numbers in all, before the test starts")
            self._extend_reference([float(v) for v in added])
        elif "tally" in fold:
            if self.shift is None:
                raise ValueError("tally: a tally before the reference was full")
            self.shift.apply(fold["tally"])
            self.step_tested += fold["tally"]["target"]
        self._judge()

    def restored(self) -> str:
        """What a resumed rollout's judge holds, as a user reads it."""
        parts = [f"{self.agreed} of {self.compared} compared answers agreed, e(disagreement) "
                 f"{self.disagreement.e_value:.3g} (rolls back at {1 / self.options.alpha:g})"]
        if self.shift is not None:
            parts.append(f"the distribution test at e {self.shift.e_value:.3g}")
        elif self.reference:
            parts.append(f"{len(self.reference)} of the {REFERENCE_SIZE} reference outputs")
        if self.samples:
            parts.append(f"{len(self.samples)} disagreement sample(s)")
        return ", ".join(parts)

    def waiting(self, min_requests: int) -> str | None:
        """Why a step may not be promoted yet, or None. While the source says its answers have not landed,
        the step waits (no data never passes). A mirror step: until as many pairs were compared in it as
        a step needs requests (--min-requests); where the target's answers could not be paired (the data
        collector without shared correlation ids) the distribution test judges it instead. A live step:
        once the baseline gives numeric outputs in it, the distribution test must have tested as many of
        the target's, its reference filled first. Answers without a number (labels) never give one: then
        there is no distribution to test, and the step does not wait for one; nor does a step in which
        the baseline serves no live traffic (its first windows may still bring the baseline's last
        outputs of the step before)."""
        if self.pending:
            return self.pending
        if self.mirror_step:
            if self.step_compared >= min_requests:
                return None
            if not self.step_unpaired:
                return f"{self.step_compared} of the {min_requests} compared answers the answer judge needs"
            if not self.step_baseline_outputs:
                return (f"{self.step_unpaired} answers of the target could not be paired and the baseline gave no "
                        "numeric output to compare their distribution with")
        elif not self.split or not self.step_baseline_outputs:
            return None
        if self.step_tested >= min_requests:
            return None
        if self.shift is None:
            return f"{len(self.reference)} of the {REFERENCE_SIZE} baseline outputs the answer judge's reference needs"
        return f"{self.step_tested} of the {min_requests} target outputs the answer judge needs tested"

    def check_interval(self, mirrored: int, min_requests: int) -> None:
        """At interval end: rules on the answers so far, and no promotion of a mirror phase whose
        answers could not be compared (no data never passes)."""
        if self.failure is not None or self.pending:  # answers still landing: no verdict either way
            return
        if self.mirror_step and mirrored >= min_requests and not self.step_compared and not self.step_unpaired:
            self.failure = Failure(self.name, "output agreement",
                                   f"none of {mirrored} mirrored answers could be compared"
                                   + (f": {self.last_not_compared}" if self.last_not_compared else "")
                                   + f" (compare path {self.options.settings.path})")
            return
        failed = []
        for rule in self.rules:
            observed = self.observe_metric(rule.metric)
            if observed is not None and not rule.holds(observed):
                failed.append(f"{rule.metric} = {observed:.4g} (limit {rule.operator} {rule.limit:g})")
        if failed:
            self.failure = Failure("rule", "; ".join(str(r) for r in self.rules), "; ".join(failed))

    def observe_metric(self, metric: str) -> float | None:
        if metric == "output_agreement":
            return self.step_agreed / self.step_compared if self.mirror_step and self.step_compared else None
        return self.shift.distance() if self.shift is not None else None

    def _disagreement_message(self) -> str:
        disagreed = self.compared - self.agreed
        text = (f"{disagreed} of {self.compared} compared answers disagreed ({100 * disagreed / self.compared:.1f} %; "
                f"allowed {100 * self.options.max_disagreement:g} % at {self.options.settings.path} "
                f"within {self.options.settings.tolerance})")
        if self.samples:
            text += f"; e.g. {self.samples[-1]['reason']}"
        return text

    def _shift_message(self) -> str:
        distance = self.shift.distance() if self.shift else None
        return ("the target's outputs at " + str(self.options.settings.path) + " are distributed unlike the baseline's"
                + (f" (distance {distance:.3f})" if distance is not None else "")
                + f"; cells between the baseline's quintiles{_bands(self.shift.tied)} "
                + ", ".join(f"{e:.10g}" for e in self.shift.edges) + ": "
                + ", ".join(f"{t}/{b}" for t, b in self.shift.counts.values()) + " (target/baseline outputs)")

    def e_values(self) -> dict[str, float]:
        return {"disagreement": self.disagreement.e_value,
                "output shift": self.shift.e_value if self.shift is not None else 1.0}

    def status(self) -> dict[str, Any]:
        """What `mlcanary rollout status` shows of the answers (the running rollout publishes it each
        tick): the mirror phase's compared and agreed pairs, the disagreement e-value against its
        threshold, and in live steps the distribution test's."""
        threshold = 1 / self.options.alpha
        shown: dict[str, Any] = {
            "compare": self.options.as_json(), "mirrorStep": self.mirror_step,
            "compared": self.compared, "agreed": self.agreed,
            "shareAgreed": round(self.agreed / self.compared, 4) if self.compared else None,
            "stepCompared": self.step_compared, "stepAgreed": self.step_agreed,
            "eDisagreement": _rounded(self.disagreement.e_value), "threshold": threshold,
        }
        if self.shift is not None:
            distance = self.shift.distance()
            shown.update(eShift=_rounded(self.shift.e_value), stepTested=self.step_tested,
                         shiftDistance=None if distance is None else round(distance, 4))
        else:
            shown.update(referenceOutputs=len(self.reference), referenceNeeded=REFERENCE_SIZE)
        if self.samples:
            shown["lastDisagreement"] = self.samples[-1].get("reason")
        if self.last_not_compared:
            shown["lastNotCompared"] = self.last_not_compared
        if self.pending:  # the data collector's answers have not landed: the step waits
            shown["pending"] = self.pending
        if self.step_unpaired:
            shown["stepUnpaired"] = self.step_unpaired
        return shown

    def view(self) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        if self.compared:
            shown["agreed"] = f"{self.agreed}/{self.compared}"
        for name, value in self.e_values().items():
            if value != 1.0:
                shown[f"e({name})"] = float(f"{value:.3g}") if math.isfinite(value) else value
        return shown


def _bands(tied: tuple[bool, ...]) -> str:
    """A repeated value has edges just beyond the tolerance around it: printed with `:g` they read as
    the same number three times (0.3682, 0.3682, 0.3682), hence the 10 digits and this note."""
    return " and the tolerance bands around the value(s) it repeats" if any(tied) else ""


def _rounded(value: float) -> float:
    return float(f"{value:.4g}")


def _count_of(window: dict, key: str) -> int:
    value = window.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} is not a whole number of at least 0: {value!r}")
    return value


@dataclass
class AnswerCheck:
    """The judge with where its windows come from, as the runner drives it: once per tick."""

    judge: AnswerJudge
    source: Any  # answer_source.LocalAnswerSource or a fake: start(), read() -> AnswerWindow, stop()
    last: AnswerWindow = field(default_factory=AnswerWindow)

    def start_step(self, mirror_step: bool, step: Any = None, split: bool = True) -> None:
        self.judge.start_step(mirror_step, step, split)

    def tick(self) -> dict[str, Any]:
        """Read and judge one window; what the record keeps of it (with what `replay` needs)."""
        self.last = self.source.read()
        self.judge.observe(self.last)
        return {**self.last.as_json(), **({"fold": self.judge.fold} if self.judge.fold else {})}
