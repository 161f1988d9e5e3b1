"""The distribution-shift test's pieces (mlcanary/rollout/evalue.py: ShiftEValue, cells_from,
with_tolerance_bands), pinned value by value: which cell an output falls in, how far the tolerance
widens the baseline's cells, and how the cells are made from the reference. Written from
`./tasks mutate mlcanary/rollout/evalue.py` survivors; expected values are worked out by hand from the
docstrings (cells between edges are (low, high]; a repeated value is a cell of its own)."""

from __future__ import annotations

import math

import pytest

from mlcanary.rollout.evalue import SHIFT_GRID, RateEValue, ShiftEValue, cells_from, with_tolerance_bands


def shift(edges=(1.0, 2.0, 3.0), tied=(False, True, False), relative=0.0, absolute=0.0) -> ShiftEValue:
    return ShiftEValue(edges, tied, 0.05, relative, absolute)


def test_cells_are_between_edges_and_a_repeated_edge_is_a_cell_of_its_own():
    test = shift()
    assert sorted(test.cells) == [0, 2, 3, 4, 6]  # 4 open cells, and edge 2.0's own (2*1+1)
    assert [test.cell(v) for v in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 9.0)] == [0, 0, 2, 3, 4, 4, 6]
    assert test.cell(1.9999) == 2 and test.cell(2.0001) == 4


def test_every_cell_tests_the_ratio_one_at_the_runs_alpha_on_the_shift_grid():
    test = ShiftEValue((1.0,), (False,), 0.01)
    for cell in test.cells.values():
        assert cell.r0 == 1.0 and cell.alpha == 0.01 and tuple(cell.grid) == SHIFT_GRID


def test_the_allowance_is_the_larger_of_absolute_and_relative_and_none_off_the_number_line():
    test = shift(relative=0.1, absolute=0.05)
    assert test.allowance(2.0) == pytest.approx(0.2)
    assert test.allowance(-0.1) == pytest.approx(0.05)
    assert test.allowance(math.inf) == 0.0 and test.allowance(-math.inf) == 0.0


def test_the_baselines_cells_are_widened_by_the_allowance_at_each_end():
    test = shift(relative=0.0, absolute=0.1)
    own = test.widened(3)  # edge 2.0's own cell: [1.9, 2.1]
    assert own(1.9) and own(2.1) and own(2.0) and not own(1.89) and not own(2.11)
    middle = test.widened(2)  # (1.0, 2.0] widened: (0.9, 2.1]
    assert not middle(0.9) and middle(0.91) and middle(2.1) and not middle(2.11)
    first = test.widened(0)  # (-inf, 1.0] widened: (-inf, 1.1]
    assert first(-1e300) and first(1.1) and not first(1.11)
    last = test.widened(6)  # (3.0, inf) widened: (2.9, inf)
    assert last(1e300) and last(2.91) and not last(2.9)
    between = test.widened(4)  # (2.0, 3.0] widened with each edge's own allowance
    assert between(1.91) and not between(1.9) and between(3.1) and not between(3.11)


def test_a_cells_low_end_is_widened_by_the_allowance_of_its_own_low_edge():
    test = ShiftEValue((1.0, 10.0, 100.0), (False, False, False), 0.05, relative=0.1)
    upper = test.widened(4)  # (10, 100] widened: (10 - 1, 100 + 10]
    assert upper(9.01) and not upper(9.0) and upper(110.0) and not upper(110.01)
    second = test.widened(2)  # (1, 10]: (0.9, 11]
    assert second(0.91) and not second(0.9) and second(11.0) and not second(11.01)


def test_a_tally_counts_target_outputs_per_cell_and_baseline_outputs_per_widened_cell():
    test = shift(absolute=0.1)
    tally = test.tally([0.5, 2.0, 2.0, 2.5], [1.05, 2.05])
    assert tally["target"] == 4 and tally["baseline"] == 2
    # baseline 1.05 is in cell 2, and in cells 0 (<= 1.1) and 2 widened; 2.05 is in cell 4, and in cells
    # 2 (<= 2.1), 3 ([1.9, 2.1]) and 4 ((1.9, 3.1]) widened
    assert tally["cells"] == {"0": [1, 1, 0], "2": [0, 2, 1], "3": [2, 1, 0], "4": [1, 1, 1]}
    assert test.tally([], [1.0]) is None and test.tally([1.0], []) is None


def test_applying_a_tally_moves_the_e_value_and_the_counts_as_update_does():
    first, second = shift(), shift()
    target, baseline = [2.0] * 30, [0.5, 1.5, 2.5, 3.5] * 8
    tally = first.update(target, baseline)
    second.apply(tally)
    assert second.e_value == first.e_value > 1.0
    assert second.counts == first.counts and second.counts[3] == [30, 0]
    assert second.distance() == first.distance() == pytest.approx(1.0)


@pytest.mark.parametrize("tally, says", [
    ({"target": 1, "baseline": 1, "cells": {"1": [1, 1, 1]}}, "cell '1' is not one of this test's cells"),
    ({"target": 1, "baseline": 1, "cells": {"0": [1, 1]}}, "cell 0: [target, widened baseline, baseline] counts"),
    ({"target": 2, "baseline": 1, "cells": {"0": [1, 1, 1]}}, "do not add up to its 2 target and 1 baseline"),
    ({"target": 1, "baseline": 1, "cells": {"0": [1, True, 1]}}, "a count is a whole number of at least 0, got True"),
    ({"target": 0, "baseline": 0, "cells": {}}, "do not add up to its 0 target and 0 baseline"),
], ids=["unknown_cell", "two_counts", "not_adding_up", "boolean_count", "empty"])
def test_a_tally_that_no_window_could_give_is_refused(tally, says):
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
        shift().apply(tally)


def test_the_distance_is_the_total_variation_of_the_two_sides_cell_shares():
    test = shift()
    assert test.distance() is None
    test.update([0.5, 0.5, 2.5, 2.5], [0.5, 0.5, 0.5, 2.5])
    assert test.distance() == pytest.approx(0.25)


def test_cells_come_from_the_references_quintiles_and_repeats_of_five_percent():
    reference = [float(v) for v in range(1, 101)]
    assert cells_from(reference) == ((21.0, 41.0, 61.0, 81.0), (False, False, False, False))
    constant = [0.5] * 95 + [float(v) for v in range(5)]
    edges, tied = cells_from(constant)
    assert edges == (0.5,) and tied == (True,)
    rare = [0.5] * 4 + [float(v) for v in range(10, 106)]  # 0.5 is 4 % of 100: not a cell of its own
    assert cells_from(rare, quantiles=2) == ((56.0,), (False,))  # the 51st value: 10 + 46
    assert cells_from([1.0, 1.0, 2.0, 3.0], quantiles=2) == ((2.0,), (False,))


def test_a_repeated_value_gets_edges_just_beyond_the_tolerance_on_each_side():
    edges, tied = with_tolerance_bands((0.5, 2.0), (True, False), 0.1, 0.0)
    band = 0.1 * 0.5 / 0.9 * (1 + 1e-6)
    assert edges == pytest.approx((0.5 - band, 0.5, 0.5 + band, 2.0))
    assert tied == (False, True, False, False)
    assert with_tolerance_bands((0.5,), (True,), 0.0, 0.0) == ((0.5,), (True,))  # no tolerance, no band
    absolute = with_tolerance_bands((0.5,), (True,), 0.0, 0.2)[0]
    assert absolute == pytest.approx((0.3, 0.5, 0.7), rel=1e-5)


def test_an_event_refutes_the_no_event_hypothesis_for_certain_and_a_share_outside_0_1_tests_nothing():
    rate = RateEValue(0.05)
    rate.update(1, 10, 0.0)
    assert rate.e_value >= 1e300 and rate.events == (1, 10)
    untouched = RateEValue(0.05)
    untouched.update(5, 10, 1.0)
    untouched.update(5, 0, 0.5)
    assert untouched.e_value == 1.0
