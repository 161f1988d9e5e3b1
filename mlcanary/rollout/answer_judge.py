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

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"compared": self.compared, "agreed": self.agreed, "notCompared": self.not_compared}
        for side, values in (("target", self.target_outputs), ("baseline", self.baseline_outputs)):
            if values:
                result[f"{side}Outputs"] = _summary(values)
        if self.samples:  # a few per window keep the record small under a steady stream of disagreements
            result["samples"] = list(self.samples[:SAMPLES_PER_WINDOW_RECORDED])
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
        self.mirror_step = False
        self.failure: Failure | None = None

    def start_step(self, mirror_step: bool) -> None:
        self.mirror_step = mirror_step
        self.step_compared = self.step_agreed = 0
        self.step_tested = self.step_baseline_outputs = 0

    def observe(self, window: AnswerWindow) -> None:
        if self.failure is not None:
            return
        self.samples = (self.samples + list(window.samples))[-MAX_SAMPLES_KEPT:]
        self.last_not_compared = window.not_compared_reason or self.last_not_compared
        if window.compared:
            self.compared += window.compared
            self.agreed += window.agreed
            self.step_compared += window.compared
            self.step_agreed += window.agreed
            self.disagreement.update(window.compared - window.agreed, window.compared, self.options.max_disagreement)
        self._observe_outputs(list(window.target_outputs), list(window.baseline_outputs))
        values = self.e_values()
        if values["disagreement"] >= 1 / self.options.alpha:
            self.failure = Failure(self.name, "output agreement", self._disagreement_message(), values["disagreement"])
        elif values["output shift"] >= 1 / self.options.alpha:
            self.failure = Failure(self.name, "output distribution", self._shift_message(), values["output shift"])

    def _observe_outputs(self, target: list[float], baseline: list[float]) -> None:
        self.step_baseline_outputs += len(baseline)
        if self.shift is None:
            # The cells come from the baseline alone, before anything is tested: fill the reference
            # first; the target's outputs of those windows are not tested.
            self.reference += baseline[:REFERENCE_SIZE - len(self.reference)]
            if len(self.reference) >= REFERENCE_SIZE:
                tolerance = self.options.settings.tolerance
                edges, tied = with_tolerance_bands(*cells_from(self.reference), tolerance.relative, tolerance.absolute)
                self.shift = ShiftEValue(edges, tied, self.options.alpha, tolerance.relative, tolerance.absolute)
            return
        self.shift.update(target, baseline)
        if baseline:  # a window without baseline outputs tests nothing
            self.step_tested += len(target)

    def waiting(self, min_requests: int) -> str | None:
        """Why a live step may not be promoted yet, or None. Once the baseline gives numeric outputs in
        the step, the distribution test must have tested as many of the target's as a step needs
        requests (--min-requests), its reference filled first. Answers without a number (labels) never
        give one: then there is no distribution to test, and the step does not wait for one."""
        if self.mirror_step or not self.step_baseline_outputs or self.step_tested >= min_requests:
            return None
        if self.shift is None:
            return f"{len(self.reference)} of the {REFERENCE_SIZE} baseline outputs the answer judge's reference needs"
        return f"{self.step_tested} of the {min_requests} target outputs the answer judge needs tested"

    def check_interval(self, mirrored: int, min_requests: int) -> None:
        """At interval end: rules on the answers so far, and no promotion of a mirror phase whose
        answers could not be compared (no data never passes)."""
        if self.failure is not None:
            return
        if self.mirror_step and mirrored >= min_requests and not self.step_compared:
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
                + f"; cells between the baseline's quintiles {', '.join(f'{e:g}' for e in self.shift.edges)}: "
                + ", ".join(f"{t}/{b}" for t, b in self.shift.counts.values()) + " (target/baseline outputs)")

    def e_values(self) -> dict[str, float]:
        return {"disagreement": self.disagreement.e_value,
                "output shift": self.shift.e_value if self.shift is not None else 1.0}

    def view(self) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        if self.compared:
            shown["agreed"] = f"{self.agreed}/{self.compared}"
        for name, value in self.e_values().items():
            if value != 1.0:
                shown[f"e({name})"] = float(f"{value:.3g}") if math.isfinite(value) else value
        return shown

    def state(self) -> dict:
        return {"disagreement": self.disagreement.state(), "shift": self.shift.state() if self.shift else None,
                "reference": self.reference if self.shift is None else [], "compared": self.compared,
                "agreed": self.agreed}

    def load_state(self, state: dict) -> None:
        self.disagreement = RateEValue.from_state(state["disagreement"])
        self.shift = ShiftEValue.from_state(state["shift"]) if state["shift"] else None
        self.reference = list(state["reference"])
        self.compared, self.agreed = state["compared"], state["agreed"]


@dataclass
class AnswerCheck:
    """The judge with where its windows come from, as the runner drives it: once per tick."""

    judge: AnswerJudge
    source: Any  # answer_source.LocalAnswerSource or a fake: start(), read() -> AnswerWindow, stop()
    last: AnswerWindow = field(default_factory=AnswerWindow)

    def start_step(self, mirror_step: bool) -> None:
        self.judge.start_step(mirror_step)

    def tick(self) -> dict[str, Any]:
        self.last = self.source.read()
        self.judge.observe(self.last)
        return self.last.as_json()
