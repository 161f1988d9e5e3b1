"""The answer judge on Azure: Azure ML's data collector's files read from a fake blob store that keeps the
service's rules (tests/fake_blob_store.py: layout, record format, list and ranged-read API)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlcanary.components.answer_compare import settings_from
from mlcanary.components.spec import load_stack_config
from mlcanary.rollout.answer_judge import AnswerJudge, AnswerOptions
from mlcanary.rollout.collector_source import (
    LANDING_DELAY, Collection, CollectorAnswerSource, answer_collection)
from mlcanary.rollout.sources import SourceError
from fake_blob_store import FakeContainer, collector_file, response_record

START = datetime(2026, 11, 30, 13, 58, 0, tzinfo=UTC)
ENDPOINT = "fraud-scorer"
BLUE = Collection("blue", "response", "workspaceblobstore", f"modelDataCollector/{ENDPOINT}/blue/response")
GREEN = Collection("green", "response", "workspaceblobstore", f"modelDataCollector/{ENDPOINT}/green/response")


class Clock:
    def __init__(self, now: datetime = START):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store():
    return FakeContainer()


def source(store, clock, notes=None, path="$"):
    options = AnswerOptions(settings_from(path, "0.01"), max_disagreement=0.01)
    return CollectorAnswerSource({"workspaceblobstore": store}, GREEN, BLUE, options, clock=clock,
                                 on_note=(notes.append if notes is not None else lambda text: None))


def write(store, deployment, answers, moment, correlations=None, instance="i-0"):
    name = collector_file(ENDPOINT, deployment, "response", moment, instance)
    for i, answer in enumerate(answers):
        store.append(name, response_record(ENDPOINT, deployment, answer, correlations[i] if correlations else None, moment))
    return name


def scores(n, seed=1):
    rng = random.Random(seed)
    return [{"predictions": [round(rng.uniform(0, 1000), 3)]} for _ in range(n)]


def test_mirrored_pairs_logged_under_one_correlation_id_are_compared(store):
    clock = Clock()
    reader = source(store, clock, path="predictions")
    answers, ids = scores(30), [f"req-{i}" for i in range(30)]
    write(store, "blue", answers, START + timedelta(seconds=5), ids)
    write(store, "green", answers[:25] + [{"predictions": [0.5]}] * 5, START + timedelta(seconds=6), ids)
    clock.now = START + timedelta(seconds=30)
    window = reader.read()
    assert (window.compared, window.agreed, window.unpaired, window.pending) == (30, 25, 0, None)
    assert "0.5" in window.samples[0]["mirrorValue"] and window.samples[0]["mirror"] == "green"
    assert len(window.target_outputs) == len(window.baseline_outputs) == 30


def test_a_green_answering_a_constant_is_rolled_back_by_the_pairs(store):
    clock, judge = Clock(), AnswerJudge(AnswerOptions(settings_from("predictions", "0.01"), 0.01))
    reader = source(store, clock, path="predictions")
    judge.start_step(mirror_step=True)
    for minute in range(5):
        moment = START + timedelta(minutes=minute, seconds=10)
        ids = [f"m{minute}-{i}" for i in range(20)]
        write(store, "blue", scores(20, seed=minute), moment, ids)
        write(store, "green", [{"predictions": [0.5]}] * 20, moment, ids)
        clock.now = moment + timedelta(seconds=20)
        judge.observe(reader.read())
        if judge.failure:
            break
    assert judge.failure is not None and judge.failure.what == "output agreement", judge.failure
    assert "disagreed" in judge.failure.message


def test_without_shared_correlation_ids_a_constant_green_is_rolled_back_by_the_distributions(store):
    """Azure may give the mirrored copy its own request id: then nothing pairs and the mirror phase is judged
    on the distributions of the two sides' outputs."""
    clock, judge = Clock(), AnswerJudge(AnswerOptions(settings_from("predictions", "0.01"), 0.01))
    reader = source(store, clock, path="predictions")
    judge.start_step(mirror_step=True)
    for minute in range(12):
        moment = START + timedelta(minutes=minute, seconds=10)
        write(store, "blue", scores(40, seed=minute), moment, [f"b{minute}-{i}" for i in range(40)])
        write(store, "green", [{"predictions": [0.5]}] * 40, moment, [f"g{minute}-{i}" for i in range(40)])
        clock.now = moment + timedelta(seconds=20)
        window = reader.read()
        assert window.compared == 0 and window.unpaired == 40
        judge.observe(window)
        if judge.failure:
            break
    assert judge.failure is not None and judge.failure.what == "output distribution", judge.failure


def test_matching_answers_pass(store):
    clock, judge = Clock(), AnswerJudge(AnswerOptions(settings_from("predictions", "0.01"), 0.01))
    reader = source(store, clock, path="predictions")
    judge.start_step(mirror_step=True)
    for minute in range(4):
        moment = START + timedelta(minutes=minute, seconds=10)
        ids = [f"m{minute}-{i}" for i in range(50)]
        answers = scores(50, seed=minute)
        write(store, "blue", answers, moment, ids)
        write(store, "green", answers, moment, ids)
        clock.now = moment + timedelta(seconds=20)
        judge.observe(reader.read())
    assert judge.failure is None
    assert judge.waiting(min_requests=100) is None and (judge.compared, judge.agreed) == (200, 200)
    judge.check_interval(mirrored=200, min_requests=100)
    assert judge.failure is None


def test_a_mirror_step_on_late_answers_needs_min_requests_pairs_compared(store):
    """Azure Monitor may have counted 500 mirrored requests while only a few of their answers have landed."""
    clock = Clock()
    judge = AnswerJudge(AnswerOptions(settings_from("predictions", "0.01"), 0.01))
    reader = source(store, clock, path="predictions")
    judge.start_step(mirror_step=True)
    ids = [f"r{i}" for i in range(3)]
    write(store, "blue", scores(3), START + timedelta(seconds=5), ids)
    write(store, "green", scores(3), START + timedelta(seconds=5), ids)
    clock.now = START + timedelta(seconds=30)
    judge.observe(reader.read())
    assert judge.waiting(min_requests=10) == "3 of the 10 compared answers the answer judge needs"


def test_data_not_landed_yet_holds_the_step_and_never_passes(store):
    clock, judge = Clock(), AnswerJudge(AnswerOptions(settings_from("predictions", "0.01"), 0.01))
    reader = source(store, clock, path="predictions")
    judge.start_step(mirror_step=True)
    write(store, "blue", scores(20), START + timedelta(seconds=5), [f"r{i}" for i in range(20)])
    clock.now = START + timedelta(seconds=30)
    window = reader.read()
    assert window.pending.startswith("no answers of green collected since the rollout began have landed in "
                                     "azureml://datastores/workspaceblobstore/paths/modelDataCollector/fraud-scorer/"
                                     "green/response yet")
    judge.observe(window)
    assert judge.waiting(min_requests=10) == window.pending
    judge.check_interval(mirrored=500, min_requests=10)  # Azure Monitor saw the copies: still no verdict
    assert judge.failure is None and judge.waiting(min_requests=10) is not None


def test_a_target_whose_answers_stop_landing_holds_again(store):
    clock = Clock()
    reader = source(store, clock, path="predictions")
    write(store, "blue", scores(5), START + timedelta(seconds=5), [f"r{i}" for i in range(5)])
    write(store, "green", scores(5), START + timedelta(seconds=5), [f"r{i}" for i in range(5)])
    clock.now = START + timedelta(seconds=30)
    assert reader.read().pending is None
    clock.now = START + LANDING_DELAY + timedelta(minutes=1)
    write(store, "blue", scores(5), clock.now - timedelta(seconds=5), [f"s{i}" for i in range(5)], instance="i-1")
    pending = reader.read().pending
    assert pending.startswith("the newest collected answer of green is from 13:58:05 UTC, more than 10 min ago")


def test_a_line_cut_mid_write_waits_for_the_rest(store):
    clock = Clock()
    reader = source(store, clock, path="predictions")
    write(store, "blue", scores(3), START + timedelta(seconds=5), ["a", "b", "c"])
    name = collector_file(ENDPOINT, "green", "response", START, "i-0")
    whole = b"".join(response_record(ENDPOINT, "green", answer, c, START + timedelta(seconds=6))
                     for answer, c in zip(scores(3), ["a", "b", "c"]))
    store.append(name, whole[:len(whole) - 40])  # the third record is half written
    clock.now = START + timedelta(seconds=30)
    first = reader.read()
    assert (first.compared, first.malformed) == (2, 0)
    store.append(name, whole[len(whole) - 40:])
    second = reader.read()
    assert (second.compared, second.agreed, second.malformed) == (1, 1, 0)
    assert reader.read().compared == 0  # nothing is read twice


def test_a_last_line_without_newline_counts_once_the_file_stops_growing(store):
    clock = Clock()
    reader = source(store, clock, path="predictions")
    write(store, "blue", scores(1), START + timedelta(seconds=5), ["a"])
    name = collector_file(ENDPOINT, "green", "response", START, "i-0")
    store.append(name, response_record(ENDPOINT, "green", scores(1)[0], "a", START + timedelta(seconds=6)).rstrip(b"\n"))
    clock.now = START + timedelta(seconds=30)
    assert reader.read().compared == 0  # it may still be being written
    assert reader.read().compared == 1  # the same size at the next reading: the line is whole


def test_malformed_lines_are_counted_and_ignored_with_a_note(store):
    clock, notes = Clock(), []
    reader = source(store, clock, notes, path="predictions")
    name = write(store, "blue", scores(2), START + timedelta(seconds=5), ["a", "b"])
    store.append(name, b"{not json\n[1, 2]\n" + b'{"time": "2026-11-30T13:58:09Z"}\n')
    other = collector_file(ENDPOINT, "blue", "response", START, "i-1")
    store.append(other, b'{"data": 1, "time": "yesterday"}\n')
    write(store, "green", scores(2), START + timedelta(seconds=6), ["a", "b"])
    clock.now = START + timedelta(seconds=30)
    window = reader.read()
    assert (window.compared, window.agreed, window.malformed) == (2, 2, 4)
    assert window.as_json()["malformedLines"] == 4
    reasons = [n.split("collected record (", 1)[1].rsplit("): ignored", 1)[0] for n in notes]
    assert [r.split(":")[0] for r in reasons] == ["not JSON", "a JSON list, not an object", "no data", "no valid time"]
    assert all(n.startswith(f"data collector: a line of {f} (datastore workspaceblobstore) is not a collected record")
               for n, f in zip(notes, [name, name, name, other]))


def test_a_file_of_garbage_is_noted_in_a_few_lines_and_counted(store):
    clock, notes = Clock(), []
    reader = source(store, clock, notes, path="predictions")
    name = collector_file(ENDPOINT, "green", "response", START, "i-0")
    store.append(name, b"\x00garbage\n" * 500)
    clock.now = START + timedelta(seconds=30)
    assert reader.read().malformed == 500
    assert len(notes) == 4 and notes[-1] == f"data collector: 497 more lines of {name} are not collected records: ignored"


def test_a_file_that_cannot_be_read_keeps_what_was_read_before_it(store, mocker):
    """A file deleted between the listing and the read (BlobNotFound): the answers of the files read before it in
    the same reading are not lost (their offsets have moved on), and the window says why it is incomplete."""
    clock = Clock()
    reader = source(store, clock, path="predictions")
    write(store, "green", scores(2), START + timedelta(seconds=5), ["a", "b"])
    gone = write(store, "blue", scores(2), START + timedelta(seconds=5), ["a", "b"], instance="i-0")
    write(store, "blue", scores(2), START + timedelta(seconds=5), ["a", "b"], instance="i-1")
    listed = store.list_blobs

    def listing(name_starts_with=None, **kwargs):
        found = listed(name_starts_with)
        if gone in store.blobs and any(b.name == gone for b in found):
            del store.blobs[gone]  # the deletion lands after the listing
        return found

    mocker.patch.object(store, "list_blobs", side_effect=listing)
    clock.now = START + timedelta(seconds=30)
    window = reader.read()
    assert len(window.target_outputs) == 2 and window.pending.startswith(f"cannot read {gone} in datastore "
                                                                         "workspaceblobstore: ResourceNotFoundError")


def test_records_before_the_rollout_and_payloads_stored_apart_are_not_compared(store):
    clock = Clock()
    reader = source(store, clock, path="predictions")
    write(store, "blue", scores(3), START - timedelta(minutes=5), ["x", "y", "z"], instance="old")
    name = write(store, "blue", scores(1), START + timedelta(seconds=5), ["a"])
    store.append(name, b'{"time": "2026-11-30T13:58:07Z", "data": "https://acct.blob.core.windows.net/x", '
                       b'"datainblob": "true", "correlationid": "b"}\n')
    write(store, "green", scores(1) + scores(1), START + timedelta(seconds=6), ["a", "b"])
    write(store, "green", scores(3), START + timedelta(seconds=6), ["x", "y", "z"], instance="i-9")
    clock.now = START + timedelta(seconds=30)
    window = reader.read()
    assert window.compared == 1 and len(window.baseline_outputs) == 1


def test_files_of_every_day_since_the_start_are_read(store):
    clock = Clock(datetime(2026, 11, 30, 23, 59, 50, tzinfo=UTC))
    reader = source(store, clock, path="predictions")
    reader.start()
    before, after = datetime(2026, 11, 30, 23, 59, 55, tzinfo=UTC), datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)
    write(store, "blue", scores(2), before, ["a", "b"])
    write(store, "green", scores(1), before, ["a"])
    write(store, "green", scores(2)[1:], after, ["b"])
    clock.now = after + timedelta(seconds=10)
    assert reader.read().compared == 2


def test_a_store_that_cannot_be_read_holds_with_the_reason(store, mocker):
    clock = Clock()
    reader = source(store, clock)
    from azure.core.exceptions import ClientAuthenticationError

    mocker.patch.object(store, "list_blobs", side_effect=ClientAuthenticationError("AuthorizationPermissionMismatch"))
    window = reader.read()
    assert window.pending == ("cannot list azureml://datastores/workspaceblobstore/paths/modelDataCollector/"
                              "fraud-scorer/green/response: ClientAuthenticationError: AuthorizationPermissionMismatch")


# --- which collection holds a deployment's answers ---------------------------------------------------------

def spec(collector):
    config = {"target": "azure", "endpoint": {"name": ENDPOINT, "resourceGroup": "rg", "workspace": "ws",
              "deployments": {"green": {"model": "azureml:m:1", "instanceType": "Standard_DS3_v2",
                                        **({"dataCollector": collector} if collector else {})}},
              "traffic": {"green": 100}}}
    return load_stack_config(config, Path(".")).endpoint.deployments["green"]


def test_payload_logging_is_read_first_then_custom_logging():
    both = spec({"collections": {"model_outputs": {"enabled": True}, "response": {"enabled": True}}})
    assert str(answer_collection(ENDPOINT, "green", both, "f")) == \
        "azureml://datastores/workspaceblobstore/paths/modelDataCollector/fraud-scorer/green/response"
    custom = spec({"collections": {"model_outputs": {"enabled": True}, "response": {"enabled": False}}})
    assert answer_collection(ENDPOINT, "green", custom, "f").name == "model_outputs"


def test_a_collection_with_its_own_data_path_is_read_there():
    named = spec({"collections": {"response": {"enabled": True, "data": {
        "name": "answers", "path": "azureml://datastores/auditstore/paths/fraud/green/answers/"}}}})
    collection = answer_collection(ENDPOINT, "green", named, "f")
    assert (collection.datastore, collection.folder) == ("auditstore", "fraud/green/answers")


@pytest.mark.parametrize("collector", [None, {"collections": {"request": {"enabled": True}}},
                                       {"collections": {"response": {"enabled": False}}}],
                         ids=["no_collector", "requests_only", "response_disabled"])
def test_a_deployment_that_logs_no_answers_is_refused_naming_the_field(collector):
    with pytest.raises(SourceError, match=r"^mlcanary:endpoint\.deployments\.green\.dataCollector: --compare-path on "
                                          r"Azure reads green's answers from Azure ML's data collector; enable "
                                          r"collections\.response"):
        answer_collection(ENDPOINT, "green", spec(collector), "mlcanary:endpoint.deployments.green")


# --- `mlcanary rollout` on an Azure stage, the data collector's files written meanwhile by a second actor --------

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from mlcanary.rollout.record import Recorder  # noqa: E402

from test_rollout_azure_cli import GrowingSource, arm, rollout  # noqa: E402,F401 - the fixture
from test_rollout_azure_stack import project  # noqa: E402,F401 - the fixture


class Collector(threading.Thread):
    """Azure ML's data collector, writing both deployments' answers while the rollout runs: each mirrored
    request is answered by blue (live) and green (the copy), logged under one correlation id. Green's
    answers land only once `green_lands` is set (the test sets it when the rollout has held a step for
    want of them: they land late), and each green record is written in two parts with a pause between (a
    reader catches it cut mid-write)."""

    def __init__(self, store: FakeContainer, green_answer, shared_ids: bool = True):
        super().__init__(daemon=True)
        self.store, self.green_answer, self.shared_ids = store, green_answer, shared_ids
        self.stopped, self.green_lands = threading.Event(), threading.Event()
        self.error: Exception | None = None
        self.rng = random.Random(7)

    def run(self) -> None:
        try:
            self._write()
        except Exception as err:  # the test asserts there was none: a dead actor would hide a hold
            self.error = err

    def _write(self) -> None:
        n = 0
        while not self.stopped.wait(0.02):
            now = datetime.now(UTC)
            for _ in range(5):
                n += 1
                answer = {"predictions": [round(self.rng.uniform(0, 1000), 3)]}
                self.store.append(collector_file(ENDPOINT, "blue", "response", now, "blue-0"),
                                  response_record(ENDPOINT, "blue", answer, f"req-{n}", now))
                if not self.green_lands.is_set():
                    continue
                copy_id = f"req-{n}" if self.shared_ids else f"copy-{n}"
                line = response_record(ENDPOINT, "green", self.green_answer(answer), copy_id, now)
                name = collector_file(ENDPOINT, "green", "response", now, "green-0")
                self.store.append(name, line[:len(line) // 2])
                time.sleep(0.002)
                self.store.append(name, line[len(line) // 2:])


@pytest.fixture
def collecting_stage(project, mocker, monkeypatch, tmp_path):
    """The stage with payload logging on both deployments, and the workspace's blob container faked. Each
    test has its own user state folder (where an Azure rollout keeps its hold, keyed by the stack): the
    suite's other Azure rollouts of stack prod on the other worker hold the same endpoint name."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    stage = project / "stage.yaml"
    document = yaml.safe_load(stage.read_text())
    for name in ("blue", "green"):
        document["config"]["mlcanary:endpoint"]["deployments"][name]["dataCollector"] = {
            "collections": {"request": {"enabled": True}, "response": {"enabled": True}}}
    stage.write_text(yaml.safe_dump(document, sort_keys=False))
    store = FakeContainer()
    containers = mocker.patch("mlcanary.rollout.collector_source.datastore_containers",
                              return_value={"workspaceblobstore": store})
    mocker.patch("mlcanary.rollout.sources.azure_source", return_value=GrowingSource())
    return store, containers


MIRROR_ROLLOUT = ("--mirror", "10", "--mirror-for", "3s", "--compare-path", "predictions", "--output-tolerance", "0.01",
                  "--interval", "1s", "--tick", "0.1", "--min-requests", "10", "--format", "json")


@pytest.mark.parametrize("green_answer, exit_code, decision", [
    (lambda answer: {"predictions": [0.5]}, 1, "rolled back"),
    (lambda answer: answer, 0, "promoted"),
], ids=["constant_green_rolled_back", "same_answers_promoted"])
def test_an_azure_rollout_judges_the_answers_the_data_collector_wrote(
        project, arm, collecting_stage, mocker, green_answer, exit_code, decision):
    store, containers = collecting_stage
    collector = Collector(store, green_answer)
    write = Recorder.write

    def recorded(self, kind, **fields):
        if kind == "decision" and fields.get("decision") == "held":
            collector.green_lands.set()
        return write(self, kind, **fields)

    mocker.patch.object(Recorder, "write", recorded)
    collector.start()
    try:
        result = rollout(project, *MIRROR_ROLLOUT)
    finally:
        collector.stopped.set()
        collector.join()
    assert collector.error is None
    assert result.exit_code == exit_code, result.output
    (workspace, datastores), _ = containers.call_args
    assert workspace == ("sub-1", "ml-prod-rg", "ml-prod-ws") and datastores == {"workspaceblobstore"}
    assert ("answers of green: data collector collection response at azureml://datastores/workspaceblobstore/paths/"
            "modelDataCollector/fraud-scorer/green/response/<yyyy>/<MM>/<dd>/<HH>/*.jsonl") in result.stderr
    assert "held mirror 10 %: no answers of green collected since the rollout began have landed" in result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["decision"] == decision, outcome
    if exit_code:
        assert outcome["failure"]["what"] == "output agreement" and outcome["answers"]["compared"] > 0
        assert "failed step mirror 10 %: answers judge, output agreement" in result.stderr  # before any client got one
    assert "malformed" not in result.stderr  # records cut mid-write were waited for, never counted as bad


def test_without_shared_correlation_ids_an_azure_mirror_phase_rolls_back_a_constant_green_on_distributions(
        project, arm, collecting_stage):
    store, _ = collecting_stage
    collector = Collector(store, lambda answer: {"predictions": [0.5]}, shared_ids=False)
    collector.green_lands.set()
    collector.start()
    try:
        result = rollout(project, *MIRROR_ROLLOUT)
    finally:
        collector.stopped.set()
        collector.join()
    assert collector.error is None
    assert result.exit_code == 1, result.output
    outcome = json.loads(result.stdout)
    assert outcome["failure"]["what"] == "output distribution" and outcome["answers"]["compared"] == 0
    assert "failed step mirror 10 %: answers judge, output distribution" in result.stderr


def test_an_azure_rollout_whose_target_logs_no_answers_is_refused_before_anything_runs(project, arm, mocker):
    source = mocker.patch("mlcanary.rollout.sources.azure_source", return_value=GrowingSource())
    result = rollout(project, *MIRROR_ROLLOUT)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: mlcanary:endpoint.deployments.green.dataCollector: --compare-path on Azure reads green's answers from "
        "Azure ML's data collector; enable collections.response (payload logging) or collections.model_outputs "
        "(custom logging from the scoring script) on both deployments")
    assert not source.called


def test_plan_only_says_where_the_answers_are_read(project, arm, collecting_stage):
    result = rollout(project, *MIRROR_ROLLOUT[:-2], "--plan-only")
    assert result.exit_code == 0, result.output
    assert ("answers of green: data collector collection response at azureml://datastores/workspaceblobstore/paths/"
            "modelDataCollector/fraud-scorer/green/response") in result.stdout
    store, containers = collecting_stage
    assert not containers.called  # --plan-only reads no storage


def test_a_rollout_whose_target_answers_never_land_halts_saying_so(project, arm, collecting_stage):
    """Found in use: the halt said "green served 3200 of the 10 requests a step needs" when the answer judge
    was what waited."""
    store, _ = collecting_stage
    collector = Collector(store, lambda answer: answer)  # green's answers never land
    collector.start()
    try:
        result = rollout(project, *MIRROR_ROLLOUT)
    finally:
        collector.stopped.set()
        collector.join()
    assert collector.error is None
    assert result.exit_code == 3, result.output
    outcome = json.loads(result.stdout)
    assert outcome["decision"] == "halted"
    assert outcome["message"].startswith("at step mirror 10 %: not enough data for the answer judge (no answers of "
                                         "green collected since the rollout began have landed")
    assert ("halted at mirror 10 %: not enough answers compared or tested; rolled back: live blue 100, green 0"
            in result.stderr)
