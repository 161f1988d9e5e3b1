"""An anytime-valid test that the target's event rate is at most r0 times the baseline's.

Events are errors (or requests slower than a threshold). Given an event in a window where the target
served a share rho of the requests, it is the target's with probability q(r) = rho r / (rho r + 1 - rho),
r = the target's rate over the baseline's. The e-value is a mixture, over a grid of alternatives r > r0,
of the likelihood ratios prod q(r)^x_t (1-q(r))^x_b / (q(r0)^x_t (1-q(r0))^x_b). Under H0 (r <= r0)
it is a non-negative supermartingale with E_0 = 1, so by Ville's inequality it reaches 1/alpha with
probability at most alpha however often it is looked at (Lindon et al., KDD 2022).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
        return {"r0": self.r0, "alpha": self.alpha, "grid": list(self.grid), "logRatios": list(self.log_ratios),
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
        if requests and p0 == 0.0:  # H0 "no event at all": one event refutes it for certain
            if events:
                self.log_ratios = [700.0] * len(self.grid)
            self.events = (self.events[0] + events, self.events[1] + requests)
            return
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
        return {"alpha": self.alpha, "grid": list(self.grid), "logRatios": list(self.log_ratios), "events": list(self.events)}

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


# Finer at the low end than GRID: a distribution shift moves a cell's share by tens of per cent, not x2.
SHIFT_GRID = (1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)


@dataclass
class ShiftEValue:
    """Has the target's output distribution moved away from the baseline's, by more than a tolerance?
    Two-sample and anytime-valid.

    The outputs fall into cells fixed before any is folded in: between quantiles of a reference sample
    of the baseline (`cells_from`), plus a cell of its own for a value the reference repeats (a constant
    answer). Each observation is the target's with probability rho (the split). An "event of cell k" is
    a target output inside cell k, or a baseline output inside cell k widened by the tolerance on both
    ends; given an event, it is the target's with probability q(r_k) = rho r_k / (rho r_k + 1 - rho),
    r_k = P_target(cell k) / P_baseline(widened cell k) - exactly the shape of RatioEValue's errors.
    If the target's outputs are the baseline's moved by at most the tolerance, r_k <= 1 for every k
    (H0). If the distributions differ by more, some cell gets more of the target's outputs than the
    widened cell gets of the baseline's, so testing every cell for "more" covers every shift and
    collapse. The mean of the cells' e-values is again a test supermartingale under H0, so reaching
    1/alpha keeps the false-rollback bound.
    """

    edges: tuple[float, ...]
    tied: tuple[bool, ...]  # per edge: does the reference repeat it (then it is a cell of its own)
    alpha: float
    relative: float = 0.0  # the tolerance that widens the baseline's cells
    absolute: float = 0.0
    cells: dict[int, RatioEValue] = field(default_factory=dict)
    counts: dict[int, list[int]] = field(default_factory=dict)  # cell -> [target, baseline] outputs in it (unwidened)

    def __post_init__(self) -> None:
        if not self.cells:
            indices = [2 * i for i in range(len(self.edges) + 1)] + [2 * i + 1 for i, t in enumerate(self.tied) if t]
            self.cells = {i: RatioEValue(1.0, self.alpha, SHIFT_GRID) for i in sorted(indices)}
            self.counts = {i: [0, 0] for i in self.cells}

    def cell(self, value: float) -> int:
        i = bisect.bisect_left(self.edges, value)
        if i < len(self.edges) and self.edges[i] == value and self.tied[i]:
            return 2 * i + 1
        return 2 * i

    def allowance(self, value: float) -> float:
        return max(self.absolute, self.relative * abs(value)) if math.isfinite(value) else 0.0

    def widened(self, index: int) -> Callable[[float], bool]:
        """Is a baseline value inside cell `index` widened by the tolerance? A cell between edges is
        (low, high]: a target value above `low` comes from a baseline value above low - allowance, so
        the widened cell stays open there (a constant baseline at `low` is outside it)."""
        i, own = divmod(index, 2)
        if own:  # the cell of a repeated value: [e - allowance, e + allowance]
            low, high = self.edges[i] - self.allowance(self.edges[i]), self.edges[i] + self.allowance(self.edges[i])
            return lambda v: low <= v <= high
        low = self.edges[i - 1] - self.allowance(self.edges[i - 1]) if i > 0 else -math.inf
        high = self.edges[i] + self.allowance(self.edges[i]) if i < len(self.edges) else math.inf
        return lambda v: low < v <= high

    def update(self, target: list[float], baseline: list[float]) -> dict | None:
        """Fold in one closed window: the output numbers each side gave in it. Returns its tally (None
        when the window says nothing): `apply(tally)` on a copy of this test's earlier state gives the
        same state again, which is how a resumed rollout restores it from its record."""
        tally = self.tally(target, baseline)
        if tally is not None:
            self.apply(tally)
        return tally

    def tally(self, target: list[float], baseline: list[float]) -> dict | None:
        """Per cell, [target outputs in it, baseline outputs in it widened, baseline outputs in it]."""
        if not target or not baseline:
            return None  # one side gave nothing: the window says nothing about the difference
        cells: dict[int, list[int]] = {}
        for value in target:
            cells.setdefault(self.cell(value), [0, 0, 0])[0] += 1
        widened = {i: self.widened(i) for i in self.cells}
        for value in baseline:
            cells.setdefault(self.cell(value), [0, 0, 0])[2] += 1
            for i, inside in widened.items():
                if inside(value):
                    cells.setdefault(i, [0, 0, 0])[1] += 1
        return {"target": len(target), "baseline": len(baseline), "cells": {str(i): c for i, c in sorted(cells.items())}}

    def apply(self, tally: dict) -> None:
        """Fold in a tally (of `tally`, or read back from a record: checked first, ValueError if it
        cannot be one of this test's)."""
        target, baseline, cells = _checked_tally(tally, self.cells)
        share = target / (target + baseline)
        for i in self.cells:
            t, b, plain = cells.get(i, (0, 0, 0))
            self.counts[i][0] += t
            self.counts[i][1] += plain
            self.cells[i].update(t, b, share)

    @property
    def e_value(self) -> float:
        return sum(c.e_value for c in self.cells.values()) / len(self.cells)

    def distance(self) -> float | None:
        """Total variation distance of the two sides' cell shares so far (0 = alike, 1 = disjoint)."""
        t_total = sum(c[0] for c in self.counts.values())
        b_total = sum(c[1] for c in self.counts.values())
        if not t_total or not b_total:
            return None
        return sum(abs(t / t_total - b / b_total) for t, b in self.counts.values()) / 2


def _checked_tally(tally: Any, known: dict) -> tuple[int, int, dict[int, tuple[int, int, int]]]:
    def count(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"a count is a whole number of at least 0, got {value!r}")
        return value

    if not isinstance(tally, dict) or not isinstance(tally.get("cells"), dict):
        raise ValueError(f"a tally is an object with target, baseline and cells, got {tally!r}")
    target, baseline = count(tally.get("target")), count(tally.get("baseline"))
    cells = {}
    for key, value in tally["cells"].items():
        if not (isinstance(key, str) and key.isdigit() and int(key) in known):
            raise ValueError(f"cell {key!r} is not one of this test's cells ({', '.join(map(str, known))})")
        if not isinstance(value, list) or len(value) != 3:
            raise ValueError(f"cell {key}: [target, widened baseline, baseline] counts, got {value!r}")
        cells[int(key)] = tuple(count(v) for v in value)
    if not target or not baseline or sum(c[0] for c in cells.values()) != target \
            or sum(c[2] for c in cells.values()) != baseline:
        raise ValueError(f"its cells do not add up to its {target} target and {baseline} baseline outputs")
    return target, baseline, cells


def cells_from(reference: list[float], quantiles: int = 5, tie_share: float = 0.05) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    """Cell edges from a reference sample: its quantiles (without repeats), and which of them the
    reference repeats in at least `tie_share` of its values."""
    ordered = sorted(reference)
    edges = sorted({ordered[min(len(ordered) - 1, int(k * len(ordered) / quantiles))] for k in range(1, quantiles)})
    tied = tuple(ordered.count(e) >= max(2, tie_share * len(ordered)) for e in edges)
    return tuple(edges), tied


def with_tolerance_bands(edges: tuple[float, ...], tied: tuple[bool, ...], relative: float,
                         absolute: float) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    """Around each repeated value e, edges just beyond the tolerance: then a target that moves a
    constant baseline's value by more than the tolerance lands in a cell the widened baseline does not
    reach. (Beyond e + b, the cell widened by the allowance of e + b stays above e when
    b > relative * (e + b), i.e. b > relative * e / (1 - relative); and b > absolute.)"""
    extra = set()
    for edge, repeated in zip(edges, tied):
        band = max(absolute, relative * abs(edge) / (1 - relative)) * (1 + 1e-6)
        if repeated and band > 0:
            extra |= {edge - band, edge + band}
    merged = sorted(set(edges) | extra)
    repeated_edges = {e for e, t in zip(edges, tied) if t}
    return tuple(merged), tuple(e in repeated_edges for e in merged)
