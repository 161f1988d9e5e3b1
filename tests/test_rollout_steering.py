"""Watching and steering a rollout from another terminal (mlcanary/rollout_steer_cli.py, one test group
per verb), and its webhooks (mlcanary/rollout/notify.py). The rollout runs in the simulated world of
test_rollout_runner; the verbs run as a user types them (click's runner), at a chosen simulated time.
Real processes: test_rollout_steering_live.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from mlcanary.cli import main
from mlcanary.local_runtime import lease
from mlcanary.components.answer_compare import settings_from
from mlcanary.rollout.answer_judge import AnswerCheck, AnswerJudge, AnswerOptions, AnswerWindow
from mlcanary.rollout.appliers import ApplyError
from mlcanary.rollout.judges import make_judge
from mlcanary.rollout.notify import Confirmer, Notifier
from mlcanary.rollout.plan import load_plan
from mlcanary.rollout.record import Recorder
from mlcanary.rollout.runner import Runner
from mlcanary.rollout.steering import HeldSteering
from test_rollout_ownership import ENDPOINT, ReadBackWorld
from test_rollout_runner import STAGE_3, decisions, outputs


def verb(state_dir, *args: str):
    return CliRunner().invoke(main, ["rollout", *args, "--state-dir", str(state_dir)], catch_exceptions=False)


def steered_run(tmp_path, at: dict[float, tuple[str, ...]], world=None, notifier=None, confirmer=None,
                answer_source=None, said=None, updates=None, resources=None, **flags):
    """Run a rollout; at each simulated time in `at`, run that verb (`--timeout 0`: it does not wait)."""
    world = world or ReadBackWorld()
    answers = {}
    serve = world.sleep

    def sleep(seconds):
        serve(seconds)
        for when in sorted(at):
            if world.now >= when and when not in answers:
                answers[when] = verb(tmp_path, *at[when], *(["--timeout", "0"] if at[when][0] != "status" else []))

    world.sleep = sleep
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "alpha": 0.001, **flags})
    recorder = Recorder(None, clock=world.clock)
    o = plan.options
    steering = HeldSteering(lease.lease_dir(tmp_path), plan, world, record=tmp_path / "r.jsonl", notifier=notifier,
                            confirmer=confirmer, warn=lambda _m: None, resources=resources)
    check = None
    if answer_source is not None:
        check = AnswerCheck(AnswerJudge(AnswerOptions(settings_from(o.compare_path, o.output_tolerance),
                                                      o.max_disagreement, o.alpha)), answer_source(world))
        check.source.start()
    runner = Runner(plan, world, world, make_judge(o.judge, o.alpha, o.rules, o.failure_limit), recorder,
                    clock=world.clock, sleep=world.sleep, steering=steering, answers=check,
                    on_decision=said.append if said is not None else lambda _line: None,
                    on_update=updates if updates is not None else lambda _view: None)
    return runner.run(), recorder.events, world, answers


# --- pause / resume ---------------------------------------------------------------------------------------

def test_pause_holds_the_step_past_its_interval_and_resume_lets_it_promote(tmp_path):
    outcome, events, world, answers = steered_run(
        tmp_path, {1.0: ("pause", ENDPOINT), 12.0: ("resume", ENDPOINT)}, steps=[10, 100])
    assert answers[1.0].exit_code == 0 and "pause requested" in answers[1.0].output
    assert outcome.exit_code == 0
    promoted_10 = next(e for e in events if e["event"] == "decision" and e["step"] == "10 %")
    assert promoted_10["time"] >= 12.0  # held 10 s past its 2 s interval, not halted for want of time
    actions = [(e["action"], e["step"]) for e in events if e["event"] == "intervention"]
    assert actions == [("pause", "10 %"), ("resume", "10 %")]
    user = os.environ.get("USER") or lease.this_process()["user"]
    assert next(e for e in events if e["event"] == "intervention")["by"]["user"] == user


def test_a_failure_while_paused_still_rolls_back(tmp_path):
    world = ReadBackWorld(green_error_rate=0.5)
    outcome, _, world, _ = steered_run(tmp_path, {0.5: ("pause", ENDPOINT)}, world=world, steps=[10, 100])
    assert outcome.exit_code == 1 and outcome.decision == "rolled back"
    assert world.traffic == {"blue": 100, "green": 0}


def test_a_paused_step_without_enough_requests_is_not_halted(tmp_path):
    world = ReadBackWorld(rps=1)  # 0.1 requests/s to green: the 5 needed take 50 s
    outcome, events, _, _ = steered_run(tmp_path, {0.5: ("pause", ENDPOINT), 30.0: ("abort", ENDPOINT)},
                                        world=world, steps=[10, 100], maxHold=1)
    assert outcome.decision == "aborted"  # not "halted" after 1 extra interval
    assert not [e for e in events if e.get("decision") == "halted"]


# --- promote ----------------------------------------------------------------------------------------------

def test_promote_advances_one_step_now(tmp_path):
    world = ReadBackWorld(rps=1)  # too few requests to promote by itself
    outcome, events, world, answers = steered_run(
        tmp_path, {1.0: ("promote", ENDPOINT), 3.0: ("abort", ENDPOINT)}, world=world, steps=[10, 50, 100])
    assert answers[1.0].exit_code == 0
    assert decisions(events)[:1] == [("promoted", "10 %")]
    assert outcome.decision == "aborted" and outcome.step == "50 %"


def test_promote_full_goes_straight_to_the_last_step(tmp_path):
    world = ReadBackWorld(rps=1)
    outcome, events, world, _ = steered_run(tmp_path, {1.0: ("promote", ENDPOINT, "--full")}, world=world,
                                            steps=[10, 25, 50, 100], bake="60s")
    assert outcome.exit_code == 0 and outcome.decision == "promoted"
    assert world.applied == ["stage-3-green-dark.yaml", "10 %", "100 %"]  # 25 and 50 skipped, no bake
    intervention = next(e for e in events if e["event"] == "intervention")
    assert intervention["action"] == "promote --full" and intervention["by"]["at"] > 0


# --- abort ------------------------------------------------------------------------------------------------

def test_abort_puts_the_baseline_back_and_the_rollout_exits_1_saying_from_where(tmp_path):
    outcome, events, world, answers = steered_run(tmp_path, {3.0: ("abort", ENDPOINT)}, steps=[50, 100], minRequests=500)
    assert answers[3.0].exit_code == 0
    assert outcome.exit_code == 1 and outcome.decision == "aborted"
    assert "from step 50 %" in outcome.message and "traffic is back on blue" in outcome.message
    assert world.traffic == {"blue": 100, "green": 0} and world.applied[-1] == "rollback"
    ended = lease.read(lease.lease_dir(tmp_path), ENDPOINT)
    assert ended["outcome"] == "aborted" and ended["interventions"][-1]["action"] == "abort"


def test_an_abort_records_its_step_message_e_values_and_requests_and_says_it_in_one_line(tmp_path):
    said = []
    outcome, events, _, _ = steered_run(tmp_path, {3.0: ("abort", ENDPOINT)}, said=said, steps=[50, 100], minRequests=500)
    line = events[-1]
    assert (line["event"], line["decision"], line["step"], line["index"], line["message"]) == (
        "decision", "aborted", "50 %", 0, outcome.message)
    served = [e for e in events if e["event"] == "judgement"][-1]["targetServed"]
    assert line["targetServed"] == outcome.target_served == served > 0
    assert line["eValues"] == outcome.e_values and set(outcome.e_values) == {"errors", "latency"}
    assert said[-1] == f"aborted at 50 %: {outcome.message}" and outcome.step == "50 %"
    assert "failed" not in outcome.message


def test_an_abort_whose_rollback_fails_says_so(tmp_path):
    world = ReadBackWorld()
    apply = world.apply

    def apply_or_fail(step):
        if step.label == "rollback":
            raise ApplyError("the runtime is not answering")
        apply(step)
    world.apply = apply_or_fail
    outcome, events, _, _ = steered_run(tmp_path, {3.0: ("abort", ENDPOINT)}, world=world, steps=[50, 100],
                                        minRequests=500)
    assert outcome.message.endswith("\nsetting rollback failed: the runtime is not answering")
    assert events[-1]["message"] == outcome.message


# --- status -----------------------------------------------------------------------------------------------

def test_status_shows_step_traffic_counts_judge_and_what_is_next(tmp_path):
    _, _, _, answers = steered_run(tmp_path, {3.0: ("status", ENDPOINT), 3.5: ("status", ENDPOINT, "--format", "json")},
                                   steps=[50, 100], minRequests=500, maxHold=5)
    text = answers[3.0].output
    assert answers[3.0].exit_code == 0, text
    assert "RUNNING" in text and "step 1/2: 50 %" in text and "live blue 50, green 50" in text
    assert "green:" in text and "requests" in text and "e(errors)" in text and "next: 100 % once green served 500" in text
    document = json.loads(answers[3.5].output)
    assert document["state"] == "running" and document["step"] == "50 %" and document["traffic"] == {"blue": 50, "green": 50}
    assert document["counts"]["green"]["requests"] > 0 and "errors" in document["eValues"]
    assert "rollbackStage" not in document


class WorldAnswers:
    """The answers of the simulated world: each mirrored copy to green is compared and one in four
    disagrees; every live answer gives one output number, alike on both sides."""

    def __init__(self, world):
        self.world, self.seen = world, {}

    def _totals(self) -> dict[str, int]:
        green, blue = self.world.totals["green"], self.world.totals["blue"]
        return {"mirrored": green.mirrored.requests, "green": green.live.requests, "blue": blue.live.requests}

    def start(self) -> None:
        self.seen = self._totals()

    def read(self) -> AnswerWindow:
        now = self._totals()
        new = {k: now[k] - self.seen.get(k, 0) for k in now}
        self.seen = now
        sample = {"mirror": "green", "request": "ab12", "reason": "$.scores[0]: 0.1 vs 0.5 (outside tolerance)"}
        return AnswerWindow(new["mirrored"], new["mirrored"] - new["mirrored"] // 4, target_outputs=outputs(new["green"]),
                            baseline_outputs=outputs(new["blue"]), samples=(sample,) if new["mirrored"] >= 4 else ())


def test_status_shows_the_answers_agreement_in_the_mirror_phase_and_the_distribution_test_in_live_steps(tmp_path):
    _, _, _, answers = steered_run(
        tmp_path, {3.0: ("status", ENDPOINT), 3.5: ("status", ENDPOINT, "--format", "json"),
                   5.0: ("status", ENDPOINT), 5.5: ("status", ENDPOINT, "--format", "json")},
        answer_source=WorldAnswers, mirror=50, mirrorFor="4s", steps=[50, 100], minRequests=20, maxHold=5,
        compare={"path": "scores", "maxDisagreement": 0.3})
    mirror = answers[3.0].output
    assert answers[3.0].exit_code == 0, mirror
    assert "step 1/4: mirror 50 %" in mirror
    line = next(l for l in mirror.splitlines() if l.startswith("  answers at scores"))
    agreed, compared, share = re.search(r"\(within rel:1e-09\): (\d+) of (\d+) agreed \(([\d.]+) %\) in the mirror "
                                        r"phase, \d+ in this step; e\(disagreement\) [\d.e+-]+ of 1000 \(allowed 30 % "
                                        r"disagreeing\)$", line).groups()
    assert int(compared) > 0 and float(share) == round(100 * int(agreed) / int(compared), 1) and 70 < float(share) < 80
    assert "last disagreement: $.scores[0]: 0.1 vs 0.5 (outside tolerance)" in mirror
    assert "output distribution" not in mirror  # the distribution test judges live steps
    document = json.loads(answers[3.5].output)["answers"]
    assert document["mirrorStep"] is True and document["stepCompared"] == document["compared"] > 0
    assert document["shareAgreed"] == round(document["agreed"] / document["compared"], 4)
    assert document["threshold"] == 1000.0 and document["eDisagreement"] < 1  # 25 % disagree, 30 % allowed
    assert document["compare"] == {"path": "scores", "tolerance": "rel:1e-09", "maxDisagreement": 0.3}

    live = answers[5.0].output
    assert "step 3/4: 50 %" in live and "in the mirror phase;" in live  # the mirror phase's agreement stays shown
    shift = next(l for l in live.splitlines() if l.startswith("  output distribution:"))
    assert "e(output shift) " in shift and " of 1000, distance " in shift and "target outputs tested in this step" in shift
    document = json.loads(answers[5.5].output)["answers"]
    assert document["mirrorStep"] is False and document["eShift"] < 1000 and document["stepTested"] > 0


def test_status_of_a_rollout_without_a_mirror_phase_shows_the_distribution_test_waiting_for_its_reference(tmp_path):
    _, _, _, answers = steered_run(tmp_path, {1.5: ("status", ENDPOINT)}, answer_source=WorldAnswers, steps=[50, 100],
                                   minRequests=20, maxHold=5, compare={"path": "scores"})
    text = answers[1.5].output
    assert "answers at scores (within rel:1e-09): no mirrored pair was compared (no mirror phase)" in text
    waiting = re.search(r"output distribution: (\d+) of the 200 baseline outputs its reference needs; the test starts "
                        r"then", text)
    assert waiting and 0 < int(waiting.group(1)) < 200, text


class LateAnswers(WorldAnswers):
    """As the data collector's answers: they have not landed yet, and none could be paired."""

    def read(self) -> AnswerWindow:
        window = super().read()
        return AnswerWindow(target_outputs=window.target_outputs, baseline_outputs=window.baseline_outputs,
                            unpaired=window.compared, pending="answers until 12:00:05 have not landed yet")


def test_status_says_when_the_answers_have_not_landed_and_how_many_could_not_be_paired(tmp_path):
    _, _, _, answers = steered_run(tmp_path, {2.5: ("status", ENDPOINT), 3.0: ("status", ENDPOINT, "--format", "json")},
                                   answer_source=LateAnswers, mirror=50, mirrorFor="2s", steps=[100], minRequests=20,
                                   maxHold=1, compare={"path": "scores"})
    text = answers[2.5].output
    assert "answers pending: answers until 12:00:05 have not landed yet (the step waits for them)" in text
    assert re.search(r"  \d+ answers of the target found no partner to pair with in this step: judged on their "
                     r"distribution", text), text
    document = json.loads(answers[3.0].output)["answers"]
    assert document["pending"] == "answers until 12:00:05 have not landed yet" and document["stepUnpaired"] > 0


@pytest.mark.parametrize("answers, shown", [
    ({"compared": "many", "compare": {}}, "answers: not readable in the hold document"),
    ([1, 2], "answers: not readable in the hold document ([1, 2])"),
], ids=["count_not_a_number", "not_an_object"])
def test_status_of_a_hold_document_with_tampered_answers_says_so_without_a_traceback(tmp_path, answers, shown):
    directory = lease.lease_dir(tmp_path)
    lease.acquire(directory, ENDPOINT, {"id": "x-1", "step": "mirror 50 %", "answers": answers})
    lease.forget(directory, ENDPOINT)
    result = verb(tmp_path, "status", ENDPOINT)
    assert result.exit_code == 0 and shown in result.output


def test_status_of_a_rollout_whose_process_died_says_so(tmp_path):
    directory = lease.lease_dir(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lease.acquire(directory, ENDPOINT, {"id": "x-1", "step": "50 %", "traffic": {"blue": 50, "green": 50},
                                        "record": "/tmp/r.jsonl"})
    lease.forget(directory, ENDPOINT)
    doc = lease.read(directory, ENDPOINT)
    doc["holder"]["pid"] = gone.pid
    lease.write_atomically(lease.document_file(directory, ENDPOINT), json.dumps(doc))
    shown = verb(tmp_path, "status", ENDPOINT)
    assert shown.exit_code == 0 and "DIED" in shown.output
    assert f"pid {gone.pid}" in shown.output and f"`mlcanary rollout abort {ENDPOINT}` puts the baseline back" in shown.output
    for action in ("pause", "resume", "promote"):
        refused = verb(tmp_path, action, ENDPOINT)
        assert refused.exit_code == 1 and "died (its process is gone)" in refused.output, action


def test_status_watch_of_an_ended_rollout_shows_it_once_and_returns(tmp_path):
    steered_run(tmp_path, {}, steps=[100])
    shown = verb(tmp_path, "status", ENDPOINT, "--watch", "--format", "json")
    assert shown.exit_code == 0 and len(shown.output.strip().splitlines()) == 1
    assert json.loads(shown.output)["state"] == "promoted"


def test_status_with_no_rollout_is_exit_1(tmp_path):
    shown = verb(tmp_path, "status", ENDPOINT)
    assert shown.exit_code == 1 and f"error: no rollout has held endpoint {ENDPOINT}" in shown.output


def test_steering_an_ended_rollout_is_refused(tmp_path):
    steered_run(tmp_path, {}, steps=[100])
    refused = verb(tmp_path, "pause", ENDPOINT)
    assert refused.exit_code == 1 and "no rollout is running" in refused.output and "ended: promoted" in refused.output


def test_an_invalid_endpoint_name_is_exit_2(tmp_path):
    shown = verb(tmp_path, "status", "../etc")
    assert shown.exit_code == 2 and "error: endpoint '../etc': an endpoint name is 3-32 letters" in shown.output


def test_state_dir_and_stack_together_are_exit_2(tmp_path):
    shown = verb(tmp_path, "status", ENDPOINT, "--stack", "dev")
    assert shown.exit_code == 2 and "not both" in shown.output


def test_a_stack_rollout_is_looked_up_in_the_users_state_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert lease.stack_lease_dir("dev") == tmp_path / "state" / "mlcanary" / "stacks" / "dev" / "rollouts"
    lease.acquire(lease.stack_lease_dir("dev"), ENDPOINT, {"id": "azure-1", "step": "10 %"})
    try:
        shown = CliRunner().invoke(main, ["rollout", "status", ENDPOINT, "--stack", "dev", "--format", "json"])
        assert shown.exit_code == 0 and json.loads(shown.output)["id"] == "azure-1"
    finally:
        lease.forget(lease.stack_lease_dir("dev"), ENDPOINT)


# --- history ----------------------------------------------------------------------------------------------

def test_history_lists_past_rollouts_with_outcome_step_interventions_and_record(tmp_path):
    steered_run(tmp_path, {}, steps=[100])
    steered_run(tmp_path, {3.0: ("abort", ENDPOINT)}, steps=[50, 100], minRequests=500)
    shown = verb(tmp_path, "history", ENDPOINT)
    lines = shown.output.strip().splitlines()
    assert shown.exit_code == 0 and len(lines) == 2
    assert "promoted at 100 %" in lines[0] and "aborted at 50 %" in lines[1]
    user = os.environ.get("USER") or lease.this_process()["user"]
    assert f"abort by {user}" in lines[1] and f"record {tmp_path / 'r.jsonl'}" in lines[1]
    entries = json.loads(verb(tmp_path, "history", ENDPOINT, "--format", "json").output)
    assert [e["outcome"] for e in entries] == ["promoted", "aborted"] and all(e["endedAt"] for e in entries)


# --- webhooks ---------------------------------------------------------------------------------------------

class Hooks:
    """An HTTP server on 127.0.0.1 that records posted JSON and answers `status`."""

    def __init__(self, status: int = 200):
        self.status, self.posts = status, []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                hooks.posts.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(hooks.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def hooks():
    server = Hooks()
    yield server
    server.close()


def test_notify_posts_one_event_per_decision(tmp_path, hooks):
    outcome, _, _, _ = steered_run(tmp_path, {}, notifier=Notifier([f"{hooks.url}/events?token=s3cret"]), steps=[50, 100])
    assert outcome.exit_code == 0
    posted = [body for _, body in hooks.posts]
    assert [(b["event"], b.get("decision")) for b in posted if b["event"] == "decision"] == [
        ("decision", "promoted"), ("decision", "promoted"), ("decision", "finished")]
    promoted = next(b for b in posted if b.get("decision") == "promoted")
    assert promoted["endpoint"] == ENDPOINT and promoted["rolloutId"].startswith(ENDPOINT)
    assert promoted["step"] == "50 %" and "judgeState" in promoted and promoted["traffic"] == {"blue": 50, "green": 50}
    step = next(b for b in posted if b["event"] == "step" and b["label"] == "50 %")
    assert step["traffic"] == {"blue": 50, "green": 50}


def test_a_failing_notify_is_reported_and_the_rollout_goes_on(tmp_path, hooks):
    hooks.status = 500
    unreachable = Hooks()
    unreachable.close()  # nothing listens there any more
    notifier = Notifier([f"{hooks.url}/secret-path", unreachable.url])
    outcome, events, _, _ = steered_run(tmp_path, {}, notifier=notifier, steps=[100])
    assert outcome.exit_code == 0
    failed = [e["message"] for e in events if e["event"] == "notify-failed"]
    assert any("answered 500" in m for m in failed) and any("could not be reached" in m for m in failed)
    assert all("secret-path" not in m for m in failed)  # a webhook's path may hold its token


def test_an_unconfirmed_promotion_holds_the_step_then_halts(tmp_path, hooks):
    hooks.status = 403
    outcome, events, world, _ = steered_run(tmp_path, {}, confirmer=Confirmer(f"{hooks.url}/gate"), steps=[50, 100],
                                            maxHold=2)
    assert outcome.exit_code == 3 and outcome.decision == "halted" and "not confirmed" in outcome.message
    held = [e for e in events if e.get("decision") == "held"]
    assert len(held) == 3 and "answered 403" in held[0]["reason"]
    assert world.traffic == {"blue": 100, "green": 0}
    assert {body["event"] for _, body in hooks.posts} == {"confirm-promotion"}


def test_a_confirmed_promotion_goes_ahead(tmp_path, hooks):
    outcome, _, _, _ = steered_run(tmp_path, {}, confirmer=Confirmer(f"{hooks.url}/gate"), steps=[50, 100])
    assert outcome.exit_code == 0
    assert [body["step"] for _, body in hooks.posts] == ["50 %", "100 %"]


def test_webhook_urls_are_checked_before_anything_runs(tmp_path):
    result = CliRunner().invoke(main, ["rollout", str(STAGE_3), "--to", "green", "--plan-only",
                                       "--confirm-promotion", "file:///etc/passwd"])
    assert result.exit_code == 2 and "error: --confirm-promotion: must be an http:// or https:// URL" in result.output
    assert "/etc/passwd" not in result.output


def test_webhooks_in_the_stack_config_are_validated_by_the_plan(tmp_path):
    from mlcanary.rollout.plan import PlanError
    from test_rollout_local import stage

    path = stage(tmp_path, ENDPOINT, rollout={"to": "green", "notify": ["http://127.0.0.1:9/a", "gopher://x"]})
    with pytest.raises(PlanError, match=r"mlcanary:rollout.notify: must be an http:// or https:// URL"):
        load_plan(path, {})


def test_webhooks_of_the_stack_config_are_used_and_flags_win(tmp_path):
    import dataclasses

    from mlcanary.components.rollout_spec import RolloutSpec
    from mlcanary.rollout_steer_cli import _META_KEY, steering_for

    plan = load_plan(STAGE_3, {"to": "green", "steps": [100]})
    config = RolloutSpec.model_validate({"notify": "http://127.0.0.1:9/config-hook",
                                         "confirmPromotion": "http://127.0.0.1:9/config-gate"})
    plan = dataclasses.replace(plan, start=dataclasses.replace(plan.start, spec=plan.start.spec.model_copy(
        update={"rollout": config})))
    client = type("Client", (), {"root": tmp_path})()
    steering = steering_for(plan, ReadBackWorld(), client, None, None)
    assert steering.notifier.urls == ["http://127.0.0.1:9/config-hook"]
    assert steering.confirmer.url == "http://127.0.0.1:9/config-gate"
    assert lease.read(lease.lease_dir(tmp_path), ENDPOINT)["id"] == steering.id  # held from here on
    lease.forget(lease.lease_dir(tmp_path), ENDPOINT)

    import click

    with click.Context(click.Command("rollout")) as ctx:
        ctx.meta[_META_KEY] = {"force": True, "notify": ["http://127.0.0.1:9/flag-hook"], "confirm": None}
        steering = steering_for(plan, ReadBackWorld(), client, None, None)
    assert steering.notifier.urls == ["http://127.0.0.1:9/flag-hook"]
    assert steering.confirmer.url == "http://127.0.0.1:9/config-gate"
    lease.forget(lease.lease_dir(tmp_path), ENDPOINT)


def test_a_tampered_intent_is_ignored_with_a_warning_not_a_traceback(tmp_path):
    directory = lease.lease_dir(tmp_path)
    warnings = []
    world = ReadBackWorld()
    serve = world.sleep

    def sleep(seconds):
        serve(seconds)
        if world.now > 1 and not warnings:
            with lease.locked(directory, ENDPOINT) as held:
                held.save({**held.doc, "intent": {"promote": {"seq": "lots"}, "abort": 7}})

    world.sleep = sleep
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "alpha": 0.001, "steps": [50, 100]})
    o = plan.options
    steering = HeldSteering(directory, plan, world, record=None, warn=warnings.append)
    runner = Runner(plan, world, world, make_judge(o.judge, o.alpha, o.rules, o.failure_limit),
                    Recorder(None, clock=world.clock), clock=world.clock, sleep=world.sleep, steering=steering)
    outcome = runner.run()
    assert outcome.exit_code == 0 and len(warnings) == 1 and "its intent is not one" in warnings[0]


def test_steering_where_no_rollout_ever_ran_changes_nothing(tmp_path):
    state_dir = tmp_path / "never-used"
    for action in ("pause", "resume", "promote", "abort"):
        refused = verb(state_dir, action, ENDPOINT)
        assert refused.exit_code == 1 and f"no rollout has held endpoint {ENDPOINT}" in refused.output, action
    assert not state_dir.exists()


def test_status_after_a_dead_rollouts_hold_was_taken_over_says_who_took_it(tmp_path):
    directory = lease.lease_dir(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lease.acquire(directory, ENDPOINT, {"id": "x-2", "step": "50 %"})
    lease.forget(directory, ENDPOINT)
    doc = lease.read(directory, ENDPOINT)
    doc["holder"]["pid"] = gone.pid
    lease.write_atomically(lease.document_file(directory, ENDPOINT), json.dumps(doc))
    lease.admit(directory, ENDPOINT, "pid 7 applying stage-3.yaml")
    shown = verb(tmp_path, "status", ENDPOINT)
    assert "DIED" in shown.output and "taken over by pid 7 applying stage-3.yaml" in shown.output
    assert "puts the baseline back" not in shown.output
