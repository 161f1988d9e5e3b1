"""The runner's decisions where the answer judge has its say (mlcanary/rollout/runner.py with
rollout/answer_judge.py): a step is promoted only once the answers it needs were compared or tested,
held then halted saying what the answer judge waited for, rolled back when the answers disagree, and
each judgement line keeps the window's answers. The simulated world of test_rollout_runner.py and the
answer sources of test_answer_resume.py drive the real AnswerCheck; a run takes simulated seconds."""

from __future__ import annotations

from mlcanary.rollout.answer_judge import AnswerCheck, AnswerWindow
from mlcanary.rollout.judges import make_judge
from mlcanary.rollout.plan import load_plan
from mlcanary.rollout.record import Recorder
from mlcanary.rollout.runner import Runner
from mlcanary.rollout_cli import _answer_judge
import test_answer_resume
from test_answer_resume import LiveOutputs, NoTargetNumbers, PartlyCompared, mirror_step_windows
from test_rollout_runner import STAGE_3, World, decisions, judgements, outputs


def rolled_out(source, world: World, **flags):
    """A rollout of green over blue comparing answers at `scores`: (outcome, record lines, decision lines)."""
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "alpha": 0.001, "compare": {"path": "scores"},
                               **flags})
    options = plan.options
    answers = AnswerCheck(_answer_judge(plan), source(world))  # the judge `mlcanary rollout` makes
    answers.source.start()
    recorder, lines = Recorder(None, "r1", clock=world.clock), []
    runner = Runner(plan, world, world, make_judge(options.judge, options.alpha, options.rules, options.failure_limit),
                    recorder, clock=world.clock, sleep=world.sleep, answers=answers, on_decision=lines.append)
    return runner.run(), recorder.events, lines


def only(events: list[dict], decision: str) -> dict:
    [line] = [e for e in events if e.get("decision") == decision]
    return line


# --- a live step in which both sides serve: the distribution test must have tested the target's outputs ---

def test_a_1_percent_step_whose_target_gives_no_number_is_held_then_halted_saying_what_the_answer_judge_waited_for():
    # 1 request/s to green: it has served exactly --min-requests (10) when the 4th hold halts the step.
    # Its answers carry no number, so none of them is ever tested against the baseline's: the requests
    # are enough, the answers are not, and the step must not pass.
    outcome, events, lines = rolled_out(NoTargetNumbers, World(rps=100), steps=[1, 100], minRequests=10, maxHold=3)
    waited = "0 of the 10 target outputs the answer judge needs tested"
    assert (outcome.exit_code, outcome.decision, outcome.step) == (3, "halted", "1 %")
    assert outcome.message == (f"at step 1 %: not enough data for the answer judge ({waited}), after 3 extra "
                               "interval(s); traffic is back on blue")
    halted = only(events, "halted")
    assert halted["requests"] == 10  # exactly --min-requests: the requests were enough
    assert halted["waitedFor"] == waited and halted["noData"] is None and halted["message"] == outcome.message
    assert decisions(events) == [("held", "1 %")] * 4 + [("halted", "1 %")]
    assert [e["reason"] for e in events if e.get("decision") == "held"][-1] == waited
    assert lines[-1] == "halted at 1 %: not enough answers compared or tested; rolled back: live blue 100, green 0"
    assert "promoted" not in [d for d, _ in decisions(events)]


def test_a_step_halted_for_too_few_requests_says_so_even_while_the_answer_judge_also_waits():
    # The same target, 40 requests needed: at the halt green served 10; what the user must add is requests.
    outcome, events, lines = rolled_out(NoTargetNumbers, World(rps=100), steps=[1, 100], minRequests=40, maxHold=3)
    assert (outcome.exit_code, outcome.decision) == (3, "halted")
    assert outcome.message == ("at step 1 %: green served 10 of the 40 requests a step needs, after 3 extra "
                               "interval(s); traffic is back on blue")
    halted = only(events, "halted")
    assert halted["requests"] == 10 and "waitedFor" not in halted
    assert lines[-1] == "halted at 1 %: not enough requests; rolled back: live blue 100, green 0"


def test_a_step_halted_on_unreadable_metrics_says_no_data_not_that_the_answer_judge_waited():
    # Enough requests and no tested output, but the last interval's reading failed: what the user must
    # fix is the metrics source; the halt names it and does not put the blame on the answers.
    world = World(rps=100, fail_reads={9})  # the reading at 8 s, in the last interval before the halt
    outcome, events, lines = rolled_out(NoTargetNumbers, world, steps=[1, 100], minRequests=4, maxHold=3)
    assert (outcome.exit_code, outcome.decision) == (3, "halted")
    assert outcome.message.startswith("at step 1 %: no data in its windows (metrics unavailable); a step is never "
                                      "promoted on missing data, after 3 extra interval(s)")
    halted = only(events, "halted")
    assert halted["requests"] >= 4 and halted["noData"] == "metrics unavailable" and "waitedFor" not in halted
    assert lines[-1] == "halted at 1 %: no data; rolled back: live blue 100, green 0"


class DelayedOutputs(LiveOutputs):
    """One output number per live answer of each side, landing one window late: the first window of a
    step brings the last of the step before (at 100 %: the baseline's, though it serves no live traffic
    any more), and nothing after it."""

    def __init__(self, world: World):
        super().__init__(world)
        self.held = AnswerWindow()

    def read(self) -> AnswerWindow:
        new = self.new_answers()
        window, self.held = self.held, AnswerWindow(target_outputs=outputs(new["green"]),
                                                    baseline_outputs=outputs(new["blue"]))
        return window


def test_a_100_percent_step_is_promoted_on_its_requests_though_the_baselines_late_outputs_arrive_in_it():
    # At 100 % the baseline serves nothing live: no distribution can be tested, and the step does not
    # wait for one; the baseline's late outputs in its first window do not make it a split step.
    outcome, events, lines = rolled_out(DelayedOutputs, World(rps=100), steps=[50, 100], minRequests=150, maxHold=5)
    assert (outcome.exit_code, outcome.decision) == (0, "promoted"), outcome.message
    assert [s for d, s in decisions(events) if d == "promoted"] == ["50 %", "100 %"]
    first = judgements(events, "100 %")[0]["answers"]
    assert first["baselineOutputs"]["n"] > 0  # the 50 % step's last baseline outputs, landed late
    assert not [e for e in events if e.get("decision") == "held" and e["step"] == "100 %"]
    # the 50 % step, where both sides served, waited for its target outputs to be tested
    held_50 = [e["reason"] for e in events if e.get("decision") == "held" and e["step"] == "50 %"]
    assert held_50 and all("answer judge" in reason for reason in held_50)
    assert lines[-1].startswith("passed step 2/2 100 %")


def test_each_judgement_line_keeps_the_answers_of_its_window():
    # What `--resume` folds again (AnswerJudge.replay) and what a user reads the answers' verdict from.
    outcome, events, _ = rolled_out(LiveOutputs, World(rps=100), steps=[50, 100], minRequests=150, maxHold=2)
    assert outcome.decision == "promoted", outcome.message
    lines = [e for e in events if e["event"] == "judgement"]
    assert lines and all("answers" in e for e in lines)
    window = lines[0]["answers"]
    assert set(window) >= {"compared", "agreed", "notCompared", "baselineOutputs", "fold"}
    assert sum(e["answers"]["baselineOutputs"]["n"] for e in judgements(events, "50 %")) == sum(
        e["window"]["blue"]["requests"] for e in judgements(events, "50 %"))


# --- the mirror phase: compared pairs, not mirrored copies, are its evidence ------------------------------

def test_a_mirror_step_is_not_promoted_before_min_requests_answers_were_compared():
    # 10 mirrored copies/s, 1 in 4 comparable: requests are enough after 4 s, compared pairs after about 16 s.
    outcome, events, lines = rolled_out(lambda w: PartlyCompared(w, every=4), World(rps=20), mirror=50,
                                        mirrorFor="2s", steps=[100], minRequests=40, maxHold=10)
    assert outcome.decision == "promoted", outcome.message
    promoted = next(i for i, e in enumerate(events) if e.get("decision") == "promoted")
    windows = mirror_step_windows(events[:promoted])
    assert sum(e["answers"]["compared"] for e in windows) >= 40
    held = [e["reason"] for e in events[:promoted] if e.get("decision") == "held"]
    assert held[-1].endswith(" of the 40 compared answers the answer judge needs")
    assert any(line.startswith("held mirror 50 %: ") and "compared answers the answer judge needs" in line
               for line in lines)


class Disagreeing(PartlyCompared):
    """Every mirrored copy to green is compared, and each disagrees with blue's live answer."""

    def __init__(self, world: World):
        super().__init__(world, every=1)

    def read(self) -> AnswerWindow:
        window = super().read()
        sample = {"mirror": "green", "request": "ab12", "reason": "$.scores[0]: 0.1 vs 0.5 (outside tolerance)"}
        return AnswerWindow(compared=window.compared, agreed=0, samples=(sample,) if window.compared else ())


def test_a_target_whose_mirrored_answers_disagree_is_rolled_back_before_any_client_got_one():
    world = World(rps=20)
    outcome, events, lines = rolled_out(Disagreeing, world, mirror=50, mirrorFor="60s", steps=[50, 100],
                                        minRequests=10)
    assert (outcome.exit_code, outcome.decision, outcome.step) == (1, "rolled back", "mirror 50 %")
    assert (outcome.failure.judge, outcome.failure.what) == ("answers", "output agreement")
    assert "compared answers disagreed" in outcome.message and "$.scores[0]: 0.1 vs 0.5" in outcome.message
    assert decisions(events) == [("rolled-back", "mirror 50 %")]
    assert only(events, "rolled-back")["failure"]["judge"] == "answers"
    assert lines[-2:] == ["failed step mirror 50 %: answers judge, output agreement", "rolled back: live blue 100, green 0"]
    assert world.totals["green"].live.requests == 0 and world.traffic == {"blue": 100, "green": 0}


# --- a step's answers belong to that step: a resumed step keeps those of its windows before the stop ------
# test_answer_resume.py pins it on the runner in the simulated world; that file also kills real rollouts
# (too slow to run once per mutant), so its simulated test runs here too, as it is.

test_a_resumed_mirror_step_is_promoted_only_once_its_compared_answers_before_and_after_the_kill_are_enough = (
    test_answer_resume.test_a_resumed_mirror_step_is_promoted_only_once_its_compared_answers_before_and_after_the_kill_are_enough)
