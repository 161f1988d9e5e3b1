"""Paired comparison of mirrored requests in the local router (local_runtime/pairing.py).

Unit cases drive the answer book with futures; the runtime cases serve a right blue and a wrong green
(tests/answer_model) on a real runtime, mirror to green, and read /metrics and the answers endpoint.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mlcanary.components.answer_compare import settings_from
from mlcanary.local_runtime.client import RuntimeClient, RuntimeRefusal
from mlcanary.local_runtime.metrics import Metrics, label
from mlcanary.local_runtime.pairing import MAX_OUTPUTS, MAX_SAMPLES, Answers
from mlcanary.rollout.sources import parse_local_metrics
from test_local_runtime import serve, stop_runtime, wait_for

MODEL = Path(__file__).parent / "answer_model"
BODY = {"data": [[1.0, 12.5, 0.3, 0.9], [0.2, 3.1, 1.0, 0.1]]}


def answer(**env: str) -> dict:
    return {"code": str(MODEL / "code"), "scoringScript": "score.py", "model": str(MODEL / "model"),
            "instanceCount": 1, "environmentVariables": dict(env)}


def scores(*values) -> bytes:
    return json.dumps({"model": "m", "scores": list(values)}).encode()


# --- the answer book, without a server -----------------------------------------------------------------

def run_pair(book: Answers, live: tuple[int, bytes] | None, mirror: tuple[int, bytes], request: bytes = b"{}"):
    async def go():
        future = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(book.pair("ep", "blue", "green", future, *mirror, request))
        await asyncio.sleep(0)
        assert not task.done()  # the mirror's answer waits for the live one, never the reverse
        future.set_result(live)
        await task
    asyncio.run(go())


def test_a_pair_is_compared_once_the_live_answer_is_there():
    book = Answers()
    book.configure("ep", settings_from("scores"))
    run_pair(book, (200, scores(0.1, 0.9)), (200, scores(0.1, 0.9)))
    run_pair(book, (200, scores(0.1, 0.9)), (200, scores(0.5, 0.5)), request=b'{"secret": "card 4111"}')
    snapshot = book.snapshot("ep")
    assert snapshot["pairs"] == [{"live": "blue", "mirror": "green", "compared": 2, "agreed": 1, "notCompared": 0,
                                  "deviationBuckets": snapshot["pairs"][0]["deviationBuckets"]}]
    [sample] = snapshot["samples"]
    assert sample["reason"] == "$.scores[0]: 0.1 vs 0.5 (outside tolerance)"
    assert sample["liveValue"] == "[0.1, 0.9]" and sample["mirrorValue"] == "[0.5, 0.5]"
    assert "card" not in json.dumps(snapshot) and len(sample["request"]) == 16  # a hash, never the request


def test_a_live_request_that_ended_without_an_answer_is_counted_not_compared():
    book = Answers()
    book.configure("ep", settings_from())
    run_pair(book, None, (200, scores(1)))
    snapshot = book.snapshot("ep")
    assert snapshot["pairs"][0]["notCompared"] == 1 and snapshot["pairs"][0]["compared"] == 0
    assert snapshot["lastNotCompared"] == "the live request ended without an answer"


@pytest.mark.parametrize("status", [408, 429, 503])
def test_a_mirror_copy_the_router_shed_or_timed_out_is_not_a_disagreement(status):
    book = Answers()
    book.configure("ep", settings_from())
    run_pair(book, (200, scores(1)), (status, b'{"message": "busy"}'))
    pair = book.snapshot("ep")["pairs"][0]
    assert (pair["compared"], pair["notCompared"]) == (0, 1)
    assert book.snapshot("ep")["lastNotCompared"].startswith(f"the mirror copy got no answer from the model ({status}")


def test_a_mirror_answering_a_model_error_disagrees():
    book = Answers()
    book.configure("ep", settings_from())
    run_pair(book, (200, scores(1)), (424, b'{"message": "boom"}'))
    assert book.snapshot("ep")["pairs"][0]["agreed"] == 0 and book.snapshot("ep")["pairs"][0]["compared"] == 1


def test_disagreement_samples_are_bounded_and_read_only_once():
    book = Answers()
    book.configure("ep", settings_from())
    for i in range(MAX_SAMPLES + 15):
        run_pair(book, (200, scores(i)), (200, scores(i + 1)))
    first = book.snapshot("ep")
    assert len(first["samples"]) == MAX_SAMPLES and first["pairs"][0]["compared"] == MAX_SAMPLES + 15
    assert book.snapshot("ep", first["next"])["samples"] == []


def test_output_numbers_are_bounded_and_a_late_reader_is_told_it_lost_some():
    book = Answers()
    book.configure("ep", settings_from("scores"))
    book.observe_output("ep", "blue", 200, scores(0.2, 0.4))
    reading = book.snapshot("ep")
    assert reading["outputs"] == {"blue": [pytest.approx(0.3)]} and not reading["outputsLost"]
    for _ in range(MAX_OUTPUTS + 1):
        book.observe_output("ep", "green", 200, scores(0.5))
    late = book.snapshot("ep", reading["next"])
    assert len(late["outputs"]["green"]) == MAX_OUTPUTS and late["outputsLost"]


def test_nothing_is_kept_before_comparing_is_asked_for_or_after_it_stops():
    book = Answers()
    book.observe_output("ep", "blue", 200, scores(1))
    run_pair(book, (200, scores(1)), (200, scores(2)))
    assert book.snapshot("ep")["pairs"] == [] and book.snapshot("ep")["settings"] is None
    book.configure("ep", settings_from())
    book.configure("ep", None)
    run_pair(book, (200, scores(1)), (200, scores(2)))
    assert book.snapshot("ep")["pairs"] == []


def test_the_pair_counts_and_deviation_histogram_are_prometheus_metrics():
    metrics = Metrics()
    metrics.answers.configure("ep", settings_from("scores", "0.1"))
    run_pair(metrics.answers, (200, scores(1.0)), (200, scores(1.05)))
    run_pair(metrics.answers, (200, scores(1.0)), (200, scores(2.0)))
    families = {f.name: f for f in text_string_to_metric_families(metrics.prometheus())}
    labels = {"endpoint": "ep", "deployment": "green", "live": "blue"}
    value = lambda family, name, **extra: next(  # noqa: E731
        s.value for s in families[family].samples if s.name == name and s.labels == {**labels, **extra})
    assert value("mlcanary_answers_compared", "mlcanary_answers_compared_total") == 2
    assert value("mlcanary_answers_agreed", "mlcanary_answers_agreed_total") == 1
    assert value("mlcanary_answer_deviation", "mlcanary_answer_deviation_bucket", le="0.05") == 1
    assert value("mlcanary_answer_deviation", "mlcanary_answer_deviation_bucket", le="0.5") == 2
    # the rollout's reader skips series it does not read, also endpoint-wide ones without a deployment
    metrics.malformed_request("ep")
    assert parse_local_metrics(metrics.prometheus(), "ep") == {}
    metrics.forget("ep", "green")
    assert 'live="blue"' not in metrics.prometheus()
    assert label('a"b') == 'a\\"b'


# --- on a real runtime ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory):
    runtime = RuntimeClient(tmp_path_factory.mktemp("answers-state"))
    runtime.ensure_running()
    yield runtime
    stop_runtime(runtime)


def post(target, body=None, timeout=30):
    return requests.post(target["uri"], data=json.dumps(body or BODY), timeout=timeout,
                         headers={"Authorization": f"Bearer {target['key']}", "Content-Type": "application/json"})


def test_mirrored_answers_are_paired_counted_and_sampled(client):
    target = serve(client, "pairs", {"blue": answer(), "green": answer(ANSWER="constant")}, {"blue": 100, "green": 0},
                   {"green": 50})
    assert client.set_comparison("pairs", "scores", None)["settings"] == {"comparePath": "scores",
                                                                           "outputTolerance": "rel:1e-09"}
    for _ in range(20):
        assert post(target).status_code == 200
    assert wait_for(lambda: client.answers("pairs")["pairs"] and client.answers("pairs")["pairs"][0]["compared"] == 10)
    reading = client.answers("pairs")
    assert reading["pairs"][0]["agreed"] == 0 and reading["samples"][0]["mirrorValue"] == "[0.5, 0.5]"
    assert reading["outputs"]["blue"] and "green" not in reading["outputs"]  # live answers only
    assert 'mlcanary_answers_compared_total{endpoint="pairs",deployment="green",live="blue"} 10' in client.metrics()
    # the rollout's own reader of /metrics still reads the request counts next to these series
    assert parse_local_metrics(client.metrics(), "pairs")["green"].mirrored.requests == 10


def test_a_slow_mirror_never_delays_the_live_answer(client):
    """The mirror takes 3 s per answer: when the live answers are back, their pairs are still open (the live
    request did not wait for the mirror), and they are compared once the mirror answers."""
    target = serve(client, "slowmirror", {"blue": answer(), "green": answer(SLEEP_S="3")}, {"blue": 100, "green": 0},
                   {"green": 50})
    client.set_comparison("slowmirror", None, None)
    assert post(target).status_code == 200 and post(target).status_code == 200
    assert client.answers("slowmirror")["pairs"] == []  # the mirror copy is still being answered
    assert wait_for(lambda: client.answers("slowmirror")["pairs"], timeout=15)
    assert client.answers("slowmirror")["pairs"][0]["compared"] == client.answers("slowmirror")["pairs"][0]["agreed"] == 1


def test_a_live_answer_without_the_compare_path_is_not_compared_and_says_why(client):
    target = serve(client, "nopath", {"blue": answer(), "green": answer()}, {"blue": 100, "green": 0}, {"green": 50})
    client.set_comparison("nopath", "$.predictions", None)
    for _ in range(4):
        post(target)
    assert wait_for(lambda: client.answers("nopath")["pairs"] and client.answers("nopath")["pairs"][0]["notCompared"] == 2)
    assert client.answers("nopath")["lastNotCompared"] == "the live answer has no $.predictions (it stops at $)"


@pytest.mark.parametrize("body, says", [
    ({"comparePath": "$..x"}, "cannot read it from '..x'"),
    ({"outputTolerance": "5 %"}, "'5 %' is not a number"),
    ({"comparePath": "scores", "tolerance": "0.1"}, "unknown comparison setting(s) tolerance"),
    ({"off": "yes"}, "off must be true (to stop comparing), got 'yes'"),
])
def test_bad_comparison_settings_are_refused_and_change_nothing(client, body, says):
    serve(client, "badsettings", {"blue": answer()}, {"blue": 100})
    client.set_comparison("badsettings", "scores", "0.01")
    with pytest.raises(RuntimeRefusal) as refused:
        client.call("PUT", "/endpoints/badsettings/comparison", body)
    assert refused.value.status == 400 and says in str(refused.value)
    assert client.answers("badsettings")["settings"] == {"comparePath": "scores", "outputTolerance": "rel:0.01"}


@pytest.mark.parametrize("since", ["x", "-1", "%C2%B2"], ids=["letter", "negative", "superscript_two"])
def test_a_since_that_is_not_a_whole_number_is_refused(client, since):
    if "badsince" not in client.status()["endpoints"]:
        serve(client, "badsince", {"blue": answer()}, {"blue": 100})
    with pytest.raises(RuntimeRefusal) as refused:
        client.call("GET", f"/endpoints/badsince/answers?since={since}")
    assert refused.value.status == 400 and "since must be a whole number" in str(refused.value)
