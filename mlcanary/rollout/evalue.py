"""An anytime-valid test that the target's event rate is at most r0 times the baseline's.

Events are errors (or requests slower than a threshold). Given an event in a window where the target
served a share rho of the requests, it is the target's with probability q(r) = rho r / (rho r + 1 - rho),
r = the target's rate over the baseline's. The e-value is a mixture, over a grid of alternatives r > r0,
of the likelihood ratios prod q(r)^x_t (1-q(r))^x_b / (q(r0)^x_t (1-q(r0))^x_b). Under H0 (r <= r0)
it is a non-negative supermartingale with E_0 = 1, so by Ville's inequality it reaches 1/alpha with
probability at most alpha however often it is looked at (Lindon et al., KDD 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Alternatives as multiples of r0; equal prior weight each. Wide on purpose: a x30 error rate is
# caught after a handful of events, a x1.5 one still eventually.
GRID = (1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)


def target_probability(rho: float, r: float) -> float:
    return rho * r / (rho * r + 1.0 - rho)


@dataclass
class RatioEValue:
    r0: float
    alpha: float
    grid: tuple[float, ...] = GRID  # alternatives, as multiples of r0
    log_ratios: list[float] = field(default_factory=list)  # per alternative: log of its likelihood ratio
    events: tuple[int, int] = (0, 0)  # (target, baseline) events folded in so far

    def __post_init__(self) -> None:
        if not self.log_ratios:
            self.log_ratios = [0.0] * len(self.grid)

    def update(self, target_events: int, baseline_events: int, target_share: float) -> None:
        """Fold in one closed window: the events of each side and the target's share of requests."""
        if target_events + baseline_events == 0 or not 0.0 < target_share < 1.0:
            return  # no event, or one side served nothing: the window says nothing about the ratio
        q0 = target_probability(target_share, self.r0)
        for i, multiple in enumerate(self.grid):
            q1 = target_probability(target_share, self.r0 * multiple)
            self.log_ratios[i] += target_events * math.log(q1 / q0) + baseline_events * math.log((1 - q1) / (1 - q0))
        self.events = (self.events[0] + target_events, self.events[1] + baseline_events)

    @property
    def e_value(self) -> float:
        top = max(self.log_ratios)
        log_mean = top + math.log(sum(math.exp(v - top) for v in self.log_ratios) / len(self.log_ratios))
        return math.exp(min(log_mean, 700.0))

    @property
    def rejected(self) -> bool:
        return self.e_value >= 1.0 / self.alpha

    def state(self) -> dict:
        return {"r0": self.r0, "alpha": self.alpha, "grid": list(self.grid), "logRatios": self.log_ratios,
                "events": list(self.events)}

    @classmethod
    def from_state(cls, state: dict) -> RatioEValue:
        return cls(state["r0"], state["alpha"], tuple(state["grid"]), list(state["logRatios"]),
                   tuple(state["events"]))


@dataclass
class RateEValue:
    """The one-sample version, for windows the baseline did not serve (a 100 % step, a bake): events
    of the target's requests against a reference rate p0 fixed before the window, H0: p <= p0. Each
    window's likelihood-ratio mixture has expectation <= 1 under H0 given the past, so multiplying it
    into the two-sample e-value (which does not move in such windows) keeps an e-process."""

    alpha: float
    grid: tuple[float, ...] = GRID  # alternatives, as multiples of p0 (capped below 1)
    log_ratios: list[float] = field(default_factory=list)
    events: tuple[int, int] = (0, 0)  # (events, requests) folded in so far

    def __post_init__(self) -> None:
        if not self.log_ratios:
            self.log_ratios = [0.0] * len(self.grid)

    def update(self, events: int, requests: int, p0: float) -> None:
        if not requests or not 0.0 < p0 < 1.0:
            return
        for i, multiple in enumerate(self.grid):
            p1 = min(p0 * multiple, 1 - (1 - p0) / (2 * multiple))  # above p0, below 1
            self.log_ratios[i] += events * math.log(p1 / p0) + (requests - events) * math.log((1 - p1) / (1 - p0))
        self.events = (self.events[0] + events, self.events[1] + requests)

    @property
    def e_value(self) -> float:
        top = max(self.log_ratios)
        return math.exp(min(top + math.log(sum(math.exp(v - top) for v in self.log_ratios) / len(self.log_ratios)), 700.0))

    def state(self) -> dict:
        return {"alpha": self.alpha, "grid": list(self.grid), "logRatios": self.log_ratios, "events": list(self.events)}

    @classmethod
    def from_state(cls, state: dict) -> RateEValue:
        return cls(state["alpha"], tuple(state["grid"]), list(state["logRatios"]), tuple(state["events"]))


def reference_rate(events: int, requests: int, tolerance: float) -> float | None:
    """p0 for the one-sample test: the tolerance times an upper bound of the baseline's rate (a
    smoothed rate plus two standard errors), so an estimate that happens to be low does not make
    the test too eager. None without baseline requests."""
    if not requests:
        return None
    p = (events + 1) / (requests + 2)
    return min(0.99, tolerance * (p + 2 * math.sqrt(p * (1 - p) / (requests + 2))))


def sprt(true_ratio: float, r0: float, alpha: float) -> RatioEValue:
    """The one-sided SPRT of an oracle that knows the true ratio: the floor for any test of r0."""
    return RatioEValue(r0, alpha, (true_ratio / r0,))
