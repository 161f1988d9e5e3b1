"""The answer judge (rollout/answer_judge.py) and its e-values (rollout/evalue.py) on simulated windows."""

from __future__ import annotations

import random

import pytest

from mlcanary.components.answer_compare import settings_from
from mlcanary.rollout.answer_judge import REFERENCE_SIZE, AnswerJudge, AnswerOptions, AnswerWindow
from mlcanary.rollout.answer_source import LocalAnswerSource
from mlcanary.rollout.evalue import RateEValue, ShiftEValue, cells_from
from mlcanary.components.rollout_rules import RuleError, parse_rule

ALPHA = 0.05


def judge(max_disagreement=0.01, rules=(), alpha=ALPHA) -> AnswerJudge:
    return AnswerJudge(AnswerOptions(settings_from("scores", "0.01"), max_disagreement, alpha,
                                     tuple(parse_rule(r) for r in rules)))


def mirror_windows(j: AnswerJudge, rng: random.Random, disagree: float, windows: int = 60, per_window: int = 20) -> int:
    """Feed mirror windows; the number of compared pairs seen before the judge failed (or all)."""
    j.start_step(mirror_step=True)
    seen = 0
    for _ in range(windows):
        bad = sum(rng.random() < disagree for _ in range(per_window))
        j.observe(AnswerWindow(per_window, per_window - bad,
                               samples=({"reason": "$.scores[0]: 0.1 vs 0.5 (outside tolerance)"},) if bad else ()))
        seen += per_window
        if j.failure:
            break
    return seen


# --- the mirror phase: disagreement rate ----------------------------------------------------------------

def test_a_constant_answer_is_caught_within_a_few_compared_pairs():
    j = judge()
    seen = mirror_windows(j, random.Random(1), disagree=1.0)
    assert j.failure is not None and seen <= 20
    assert j.failure.judge == "answers" and j.failure.what == "output agreement"
    assert "20 of 20 compared answers disagreed (100.0 %; allowed 1 % at scores within rel:0.01)" in j.failure.message
    assert "e.g. $.scores[0]: 0.1 vs 0.5" in j.failure.message


def test_five_percent_of_answers_off_is_caught_when_one_percent_is_allowed():
    caught = sum(mirror_windows(j := judge(), random.Random(seed), disagree=0.05, windows=100) and j.failure is not None
                 for seed in range(20))
    assert caught == 20


def test_a_target_that_agrees_is_never_failed_and_a_rare_disagreement_within_the_allowance_rarely():
    assert all(mirror_windows(j := judge(), random.Random(s), disagree=0.0) and j.failure is None for s in range(20))
    false = sum(mirror_windows(j := judge(), random.Random(s), disagree=0.005, windows=100) and j.failure is not None
                for s in range(200))
    assert false <= 0.05 * 200


def test_with_no_disagreement_allowed_a_single_one_fails():
    j = judge(max_disagreement=0.0)
    j.start_step(mirror_step=True)
    j.observe(AnswerWindow(50, 50))
    assert j.failure is None
    j.observe(AnswerWindow(50, 49))
    assert j.failure is not None and "1 of 100 compared answers disagreed" in j.failure.message


def test_a_mirror_phase_whose_answers_could_not_be_compared_is_not_promoted():
    j = judge()
    j.start_step(mirror_step=True)
    j.observe(AnswerWindow(0, 0, 30, not_compared_reason="the live answer has no scores (it stops at $)"))
    j.check_interval(mirrored=30, min_requests=20)
    assert j.failure is not None
    assert j.failure.message == ("none of 30 mirrored answers could be compared: the live answer has no scores "
                                 "(it stops at $) (compare path scores)")


def test_the_output_agreement_rule_is_checked_on_the_mirror_step():
    j = judge(max_disagreement=0.5, rules=("output_agreement >= 0.99",))
    j.start_step(mirror_step=True)
    j.observe(AnswerWindow(100, 97))
    j.check_interval(mirrored=100, min_requests=10)
    assert j.failure is not None and j.failure.judge == "rule"
    assert j.failure.message == "output_agreement = 0.97 (limit >= 0.99)"


# --- live steps: output distributions -------------------------------------------------------------------

def live_windows(j: AnswerJudge, rng: random.Random, target_output, windows: int = 300, per_window: int = 20,
                 share: float = 0.5) -> int:
    """Baseline outputs ~ N(0.3, 0.1); the target's from `target_output(rng)`; target outputs seen before failing."""
    j.start_step(mirror_step=False)
    seen = 0
    for _ in range(windows):
        target = tuple(target_output(rng) for _ in range(int(per_window * share)))
        baseline = tuple(rng.gauss(0.3, 0.1) for _ in range(per_window - len(target)))
        j.observe(AnswerWindow(target_outputs=target, baseline_outputs=baseline))
        seen += len(target) if j.shift is not None else 0
        if j.failure:
            break
    return seen


def test_a_collapsed_output_is_caught_in_live_steps():
    j = judge()
    seen = live_windows(j, random.Random(3), lambda rng: 0.5)
    assert j.failure is not None and j.failure.what == "output distribution" and seen <= 100
    assert "distributed unlike the baseline's" in j.failure.message


def test_a_shifted_output_is_caught_in_live_steps():
    caught = sum(live_windows(j := judge(), random.Random(s), lambda rng: rng.gauss(0.3, 0.1) * 1.5) >= 0
                 and j.failure is not None for s in range(10))
    assert caught == 10


def test_the_same_distribution_is_rarely_failed():
    false = sum(live_windows(j := judge(), random.Random(s), lambda rng: rng.gauss(0.3, 0.1), windows=100) >= 0
                and j.failure is not None for s in range(100))
    assert false <= 10  # alpha = 5 %, 100 runs: at most 10 (binomial 99.8 % bound)


def test_outputs_moved_within_the_output_tolerance_are_not_a_shift_and_beyond_it_are():
    """Narrow outputs (100 +- 1): a 0.5 % move is half a standard deviation, yet within the 1 % tolerance."""
    def run(scale: float, seed: int) -> AnswerJudge:
        j, rng = judge(), random.Random(seed)
        j.start_step(mirror_step=False)
        for _ in range(300):
            j.observe(AnswerWindow(target_outputs=tuple(rng.gauss(100, 1) * scale for _ in range(10)),
                                   baseline_outputs=tuple(rng.gauss(100, 1) for _ in range(10))))
        return j
    assert not any(run(1.005, seed).failure for seed in range(10))
    assert all(run(1.03, seed).failure for seed in range(10))


@pytest.mark.parametrize("scale, tolerance, rolled_back", [
    (1.1, None, True),  # one output value, moved by 10 %: the same answer was asked for
    (1 + 1e-12, None, False),  # float round-off
    (1.1, "0.2", False),  # within a 20 % tolerance
    (1.1, "0.05", True),
    (1.0, "abs:0", False),
])
def test_a_constant_baseline_output_moved_beyond_the_tolerance_is_a_shift(scale, tolerance, rolled_back):
    """The local target's --load sends one body: each side's output is one number repeated."""
    j = AnswerJudge(AnswerOptions(settings_from("scores", tolerance), alpha=ALPHA))
    j.start_step(mirror_step=False)
    for _ in range(40):
        j.observe(AnswerWindow(target_outputs=(0.3682 * scale,) * 5, baseline_outputs=(0.3682,) * 10))
    assert (j.failure is not None) is rolled_back


def test_a_live_step_waits_until_the_distribution_test_has_tested_enough_outputs():
    j = judge()
    j.start_step(mirror_step=False)
    assert j.waiting(min_requests=10) is None  # no number yet: nothing to wait for (a label answer never gives one)
    j.observe(AnswerWindow(target_outputs=(0.5,) * 30, baseline_outputs=(0.5,) * (REFERENCE_SIZE - 1)))
    assert j.waiting(10) == "199 of the 200 baseline outputs the answer judge's reference needs"  # docs/answers.md
    j.observe(AnswerWindow(target_outputs=(0.5,) * 6, baseline_outputs=(0.5,)))  # fills the reference: not tested
    assert j.waiting(10) == "0 of the 10 target outputs the answer judge needs tested"
    j.observe(AnswerWindow(target_outputs=(0.5,) * 6, baseline_outputs=(0.5,) * 6))
    assert j.waiting(10) == "6 of the 10 target outputs the answer judge needs tested"
    j.observe(AnswerWindow(target_outputs=(0.5,) * 6, baseline_outputs=(0.5,) * 6))
    assert j.waiting(10) is None
    j.start_step(mirror_step=False)  # the 100 % step: the baseline serves nothing, there is nothing to wait for
    j.observe(AnswerWindow(target_outputs=(0.5,) * 6))
    assert j.waiting(10) is None


def test_the_cells_come_from_the_baseline_before_any_window_is_tested():
    j = judge()
    j.start_step(mirror_step=False)
    j.observe(AnswerWindow(target_outputs=(9.0,) * 50, baseline_outputs=tuple(float(i) for i in range(REFERENCE_SIZE))))
    assert j.shift is not None and j.failure is None and j.e_values()["output shift"] == 1.0


def test_the_output_shift_rule_is_the_distance_of_the_binned_outputs():
    j = judge(rules=("output_shift < 0.2",), alpha=1e-9)
    j.start_step(mirror_step=False)
    j.observe(AnswerWindow(baseline_outputs=tuple(float(i % 100) for i in range(REFERENCE_SIZE))))
    j.observe(AnswerWindow(target_outputs=(1.0,) * 10 + (80.0,) * 10, baseline_outputs=tuple(float(i) for i in range(100))))
    j.check_interval(mirrored=0, min_requests=1)
    # quintile cells of 0..99: <=20, <=40, <=60, <=80, >80; half the target's outputs in the first, half in the
    # fourth, the baseline's 21, 20, 20, 20, 19 %: distance (0.29 + 0.2 + 0.2 + 0.3 + 0.19) / 2
    assert j.failure is not None and j.failure.judge == "rule" and j.failure.message == "output_shift = 0.59 (limit < 0.2)"


def test_a_constant_baseline_gets_a_cell_of_its_own():
    edges, tied = cells_from([0.5] * 100)
    shift = ShiftEValue(edges, tied, ALPHA)
    assert shift.cell(0.49) != shift.cell(0.5) != shift.cell(0.51) != shift.cell(0.49)


def recorded(j: AnswerJudge, windows: list[AnswerWindow], index: int, label: str, mirror: bool) -> list[dict]:
    """The judgement lines a rollout writes for these windows (runner: answers = AnswerCheck.tick())."""
    j.start_step(mirror, (index, label))
    lines = []
    for window in windows:
        j.observe(window)
        lines.append({"event": "judgement", "index": index, "step": label, "mirror": {"green": 50} if mirror else {},
                      "answers": {**window.as_json(), **({"fold": j.fold} if j.fold else {})}})
    return lines


def test_a_replayed_record_restores_the_judge_exactly_and_the_step_it_was_in_keeps_its_counts():
    rng = random.Random(5)
    j = judge()
    mirror = [AnswerWindow(20, 20 - (rng.random() < 0.3), baseline_outputs=tuple(rng.gauss(0.3, 0.1) for _ in range(40)),
                           samples=({"reason": "$.scores[0]: 0.1 vs 0.5 (outside tolerance)", "request": "ab"},))
              for _ in range(8)]
    lines = recorded(j, mirror, 0, "mirror 50 %", True)
    live = [AnswerWindow(target_outputs=tuple(rng.gauss(0.33, 0.1) for _ in range(10)),
                         baseline_outputs=tuple(rng.gauss(0.3, 0.1) for _ in range(10))) for _ in range(6)]
    lines += recorded(j, live, 2, "50 %", False)
    assert j.shift is not None and j.step_tested == 60
    again = judge()
    again.replay(lines)
    assert again.e_values() == j.e_values() and again.shift.edges == j.shift.edges
    assert again.shift.counts == j.shift.counts and (again.compared, again.agreed) == (j.compared, j.agreed)
    assert again.samples == j.samples and again.failure is None
    again.start_step(False, (2, "50 %"))  # the resumed rollout continues step 2: its 60 tested outputs count
    assert again.step_tested == 60 and again.waiting(min_requests=100) == (
        "60 of the 100 target outputs the answer judge needs tested")
    again.start_step(False, (3, "100 %"))  # a later step starts from 0
    assert again.step_tested == 0


def test_a_replayed_mirror_phase_keeps_its_disagreements_and_fails_where_the_first_run_would_have():
    j = judge(max_disagreement=0.2)
    lines = recorded(j, [AnswerWindow(5, 2)] * 2, 0, "mirror 50 %", True)
    assert j.failure is None and 10 < j.e_values()["disagreement"] < 1 / ALPHA  # 6 of 10 disagreed: not yet
    again = judge(max_disagreement=0.2)
    again.replay(lines)
    assert again.e_values() == j.e_values() and (again.compared, again.agreed) == (10, 4)
    again.start_step(True, (0, "mirror 50 %"))  # the rollout resumes the mirror step it was killed in
    assert again.step_compared == 10 and again.waiting(min_requests=20) == (
        "10 of the 20 compared answers the answer judge needs")
    again.observe(AnswerWindow(5, 2))  # one more window, as the first run's third would have
    assert again.failure is not None and "9 of 15 compared answers disagreed" in again.failure.message
    fresh = judge(max_disagreement=0.2)
    fresh.start_step(True, (0, "mirror 50 %"))
    fresh.observe(AnswerWindow(5, 2))
    assert fresh.failure is None  # a judge started from zero would have let it run on


@pytest.mark.parametrize("change, message", [
    (lambda w: w.update(agreed=99), "agreed 99 of only 5 compared"),
    (lambda w: w.update(compared=-1), "compared is not a whole number of at least 0: -1"),
    (lambda w: w.update(compared="5"), "compared is not a whole number of at least 0: '5'"),
    (lambda w: w.update(samples="x"), "samples are not a list of objects"),
    (lambda w: w.update(fold={"tally": {"target": 1, "baseline": 1, "cells": {"0": [1, 1, 1]}}}),
     "a tally before the reference was full"),
    (lambda w: w.update(fold={"reference": [0.1] * (REFERENCE_SIZE + 1)}), "at most 200 finite numbers in all"),
    (lambda w: w.update(fold={"reference": ["0.1"]}), "at most 200 finite numbers in all"),
    (lambda w: w.update(fold={"reference": [0.1, float("nan")]}), "at most 200 finite numbers in all"),
], ids=["agreed_above_compared", "negative_count", "count_a_string", "samples_not_a_list", "tally_before_reference",
        "reference_too_long", "reference_not_numbers", "reference_nan"])
def test_a_record_whose_answers_no_run_could_have_written_is_refused(change, message):
    lines = recorded(judge(), [AnswerWindow(5, 0)], 0, "mirror 50 %", True)
    change(lines[0]["answers"])
    with pytest.raises(ValueError) as raised:
        judge().replay(lines)
    assert "judgement 1 (step 'mirror 50 %'): its answers" in str(raised.value) and message in str(raised.value)


@pytest.mark.parametrize("tally, message", [
    ({"target": 2, "baseline": 1, "cells": {"0": [1, 1, 1]}}, "do not add up to its 2 target and 1 baseline"),
    ({"target": 1, "baseline": 1, "cells": {"99": [1, 1, 1]}}, "cell '99' is not one of this test's cells"),
    ({"target": 1, "baseline": 1, "cells": {"0": [1, 1]}}, "[target, widened baseline, baseline] counts"),
    ({"target": True, "baseline": 1, "cells": {}}, "a count is a whole number of at least 0, got True"),
    ([1, 2], "a tally is an object with target, baseline and cells"),
], ids=["does_not_add_up", "unknown_cell", "short_cell", "boolean_count", "not_an_object"])
def test_a_recorded_tally_that_cannot_be_one_of_the_tests_is_refused(tally, message):
    shift = ShiftEValue(*cells_from([float(i) for i in range(100)]), ALPHA)
    with pytest.raises(ValueError) as raised:
        shift.apply(tally)
    assert message in str(raised.value)


def test_the_one_sample_e_value_with_p0_zero_is_certain_after_one_event():
    e = RateEValue(ALPHA)
    e.update(0, 100, 0.0)
    assert e.e_value == 1.0
    e.update(1, 100, 0.0)
    assert e.e_value > 1e100 and e.events == (1, 200)


# --- rules grammar --------------------------------------------------------------------------------------

def test_answer_rules_parse_with_their_direction():
    assert str(parse_rule("output_agreement >= 0.99")) == "output_agreement >= 0.99"
    assert parse_rule("output_shift < 0.1").holds(0.05)
    assert parse_rule("output_agreement > 0.9").holds(0.95) and not parse_rule("output_agreement > 0.9").holds(0.9)


@pytest.mark.parametrize("text, says", [
    ("output_agreement < 0.99", "output_agreement is a share that should be high: use > or >="),
    ("output_shift > 0.1", "operator '>' not allowed"),
    ("output_agreement >= 1.5", "output_agreement is a fraction of requests (0..1)"),
    ("output_shift < 0", "the limit must be a positive number"),
    ("output_shift < 2", "output_shift is a distance between distributions (0..1)"),
])
def test_bad_answer_rules_are_refused(text, says):
    with pytest.raises(RuleError) as refused:
        parse_rule(text)
    assert says in str(refused.value)


# --- the local source -----------------------------------------------------------------------------------

class FakeRuntime:
    """The runtime's answers endpoint as pairing.Answers.snapshot gives it."""

    def __init__(self):
        self.settings = None
        self.readings = []

    def set_comparison(self, endpoint, path, tolerance):
        self.settings = {"comparePath": path, "outputTolerance": tolerance}

    def stop_comparison(self, endpoint):
        self.settings = None

    def answers(self, endpoint, since):
        pairs, samples, outputs, nxt = self.readings[-1] if self.readings else ([], [], {}, 0)
        return {"settings": self.settings, "pairs": pairs, "samples": samples, "outputs": outputs, "next": nxt,
                "outputsLost": False, "lastNotCompared": None}


def test_the_local_source_turns_cumulative_pair_counts_into_windows_of_the_target():
    runtime = FakeRuntime()
    runtime.readings.append(([{"live": "blue", "mirror": "green", "compared": 5, "agreed": 5, "notCompared": 0}], [], {}, 7))
    source = LocalAnswerSource(runtime, "ep", AnswerOptions(settings_from("scores")), "green", "blue")
    source.start()
    assert runtime.settings == {"comparePath": "scores", "outputTolerance": "rel:1e-09"}
    runtime.readings.append(([{"live": "blue", "mirror": "green", "compared": 12, "agreed": 9, "notCompared": 1},
                              {"live": "blue", "mirror": "other", "compared": 50, "agreed": 0, "notCompared": 0}],
                             [{"seq": 9, "mirror": "green", "reason": "r"}, {"seq": 10, "mirror": "other", "reason": "x"}],
                             {"blue": [0.1, 0.2], "green": [0.3]}, 10))
    window = source.read()
    assert (window.compared, window.agreed, window.not_compared) == (7, 4, 1)
    assert window.target_outputs == (0.3,) and window.baseline_outputs == (0.1, 0.2)
    assert [s["reason"] for s in window.samples] == ["r"] and source.since == 10
    runtime.stop_comparison("ep")  # someone (a restart) turned it off: the source asks again
    assert source.read() == AnswerWindow() and runtime.settings is not None


def test_the_local_source_drops_a_window_compared_by_settings_another_client_put_and_sets_its_own_again():
    """A second actor's PUT /endpoints/<e>/comparison (say `$` with no tolerance) mid-mirror would have
    the rollout count pairs compared by a rule it did not ask for: a good green rolled back."""
    runtime = FakeRuntime()
    source = LocalAnswerSource(runtime, "ep", AnswerOptions(settings_from("scores", "0.05")), "green", "blue")
    source.start()
    runtime.set_comparison("ep", "$", "rel:1e-09")  # the other client
    runtime.readings.append(([{"live": "blue", "mirror": "green", "compared": 30, "agreed": 0, "notCompared": 0}],
                             [], {}, 30))
    window = source.read()
    assert (window.compared, window.agreed) == (0, 0) and "changed by another client" in window.not_compared_reason
    assert runtime.settings == {"comparePath": "scores", "outputTolerance": "rel:0.05"}
    runtime.readings.append(([{"live": "blue", "mirror": "green", "compared": 40, "agreed": 10, "notCompared": 0}],
                             [], {}, 40))
    assert (source.read().compared, source.read().compared) == (10, 0)  # counted from the re-set on, once


def test_an_answer_rule_does_not_switch_off_flaggers_checks_in_the_threshold_judge():
    from mlcanary.rollout.counts import Counts
    from mlcanary.rollout.judges import ThresholdJudge

    j = ThresholdJudge((parse_rule("output_agreement >= 0.99"),))
    j.check_interval((Counts(100, 50), Counts(100, 0)), (Counts(100, 50), Counts(100, 0)), Counts())
    assert j.failure is not None and "error_rate < 0.01" in j.failure.what


def test_the_plot_gains_an_answers_panel_when_the_record_has_answers(tmp_path):
    from mlcanary.rollout.plot import plot_record

    events = [{"time": 0.0, "event": "plan", "plan": {"to": "green", "from": "blue", "stages": [], "rollback": {"blue": 100}}},
              {"time": 0.1, "event": "step", "traffic": {"blue": 100, "green": 0}, "mirror": {"green": 50}}]
    for second in range(1, 6):
        answers = ({"compared": 10, "agreed": 9} if second < 3 else
                   {"compared": 0, "agreed": 0, "targetOutputs": {"n": 5, "mean": 1.1, "p10": 1.0, "p50": 1.1, "p90": 1.2},
                    "baselineOutputs": {"n": 5, "mean": 1.0, "p10": 0.9, "p50": 1.0, "p90": 1.1}})
        events.append({"time": float(second), "event": "judgement", "traffic": {"blue": 100, "green": 0},
                       "mirror": {"green": 50}, "window": {"blue": {"requests": 10, "errors": 0}}, "answers": answers})
    plain = [e for e in events if "answers" not in e]
    with_panel, without = tmp_path / "answers.png", tmp_path / "plain.png"
    plot_record(events, with_panel, "answers")
    plot_record(plain, without, "plain")
    import matplotlib.image

    assert matplotlib.image.imread(with_panel).shape[0] > matplotlib.image.imread(without).shape[0]  # a fourth panel


def test_a_step_where_the_baseline_serves_nothing_does_not_wait_for_the_distribution_test():
    """Found in use: the first windows of a 100 % step brought the baseline's last outputs of the 50 %
    step, so the 100 % step waited for tested target outputs that could never come, and halted."""
    j = judge()
    j.start_step(False, (0, "50 %"))
    j.observe(AnswerWindow(baseline_outputs=tuple(float(i % 100) for i in range(REFERENCE_SIZE))))
    j.start_step(False, (1, "100 %"), split=False)
    j.observe(AnswerWindow(target_outputs=(5.0,) * 12, baseline_outputs=(7.0,) * 3))  # blue's stragglers
    assert j.step_baseline_outputs == 3 and j.step_tested == 12 and j.waiting(min_requests=100) is None
    j.start_step(False, (2, "50 % again"))  # a split step does wait
    j.observe(AnswerWindow(target_outputs=(5.0,) * 12, baseline_outputs=(7.0,) * 3))
    assert j.waiting(min_requests=100) == "12 of the 100 target outputs the answer judge needs tested"


def test_a_shift_failure_on_a_constant_baseline_names_distinct_cell_edges():
    """Seen in use: a constant baseline 0.3682 gave 'quintiles 0.3682, 0.3682, 0.3682' (its tolerance
    band's edges printed with :g)."""
    j = AnswerJudge(AnswerOptions(settings_from("scores"), alpha=ALPHA))  # the default tolerance, rel:1e-9
    j.start_step(False, (0, "50 %"))
    j.observe(AnswerWindow(baseline_outputs=(0.3682,) * REFERENCE_SIZE))
    for _ in range(5):
        j.observe(AnswerWindow(target_outputs=(0.5,) * 20, baseline_outputs=(0.3682,) * 20))
    message = j.failure.message
    assert "quintiles and the tolerance bands around the value(s) it repeats" in message
    edges = message.split("repeats ")[1].split(": ")[0].split(", ")
    assert len(edges) == len(set(edges)) == 3
