"""The comparison rule of two answers (components/answer_compare.py): what agrees, what does not, and why."""

from __future__ import annotations

import json
import math

import pytest

from mlcanary.components.answer_compare import (
    CompareError, Settings, Tolerance, compare, compare_values, output_value, parse_path, parse_tolerance,
    request_hash, settings_from,
)


def pair(live, mirror, path=None, tolerance=None, live_status=200, mirror_status=200):
    encode = lambda v: v if isinstance(v, bytes) else json.dumps(v).encode()  # noqa: E731
    return compare(live_status, encode(live), mirror_status, encode(mirror), settings_from(path, tolerance))


# --- agreement ---------------------------------------------------------------------------------------

def test_the_same_answer_agrees_with_no_deviation():
    result = pair({"scores": [0.1, 0.9], "label": "fraud"}, {"label": "fraud", "scores": [0.1, 0.9]})
    assert result.agreed is True and result.deviation == 0.0 and result.reason == ""


def test_by_default_numbers_must_be_the_same_up_to_float_round_off():
    assert pair([0.1 + 0.2], [0.3]).agreed is True
    result = pair([0.5], [0.5001])
    assert result.agreed is False and "$[0]: 0.5 vs 0.5001" in result.reason


def test_a_relative_tolerance_allows_that_share_of_the_larger_value():
    assert pair([100.0], [100.9], tolerance="0.01").agreed is True
    result = pair([100.0], [101.5], tolerance="0.01")
    assert result.agreed is False and result.deviation == pytest.approx(1.5 / 101.5)


def test_an_absolute_tolerance_is_given_with_abs():
    assert pair([0.0], [0.0004], tolerance="abs:0.001").agreed is True
    assert pair([0.0], [0.002], tolerance="abs:0.001").agreed is False


def test_relative_and_absolute_together_allow_the_larger_of_the_two():
    tolerance = parse_tolerance("0.01,abs:1e-6")
    assert tolerance == Tolerance(0.01, 1e-6) and str(tolerance) == "rel:0.01,abs:1e-06"
    assert pair([1e-7], [5e-7], tolerance="0.01,abs:1e-6").agreed is True
    assert pair([1000.0], [1005.0], tolerance="rel:0.01,abs:1e-6").agreed is True


def test_an_integer_and_the_same_float_are_the_same_number():
    assert pair({"n": 1}, {"n": 1.0}).agreed is True


def test_the_deviation_is_the_largest_relative_difference_of_all_numbers():
    result = pair([1.0, 2.0, 4.0], [1.0, 2.1, 4.0], tolerance="0.1")
    assert result.agreed is True and result.deviation == pytest.approx(0.1 / 2.1)


# --- disagreement ------------------------------------------------------------------------------------

def test_a_dict_where_a_list_was_is_a_shape_change():
    result = pair({"scores": [0.1, 0.9]}, {"scores": {"fraud": 0.9}})
    assert result.agreed is False and result.reason == "$.scores: shape: live list, mirror object"


def test_a_list_of_another_length_is_a_shape_change():
    result = pair([[1, 2], [3, 4]], [[1, 2], [3]])
    assert result.agreed is False and result.reason == "$[1]: shape: live 2 items, mirror 1"


def test_nested_lists_are_compared_item_by_item_and_the_first_difference_named():
    result = pair({"a": [[1, 2], [3, [4, 5]]]}, {"a": [[1, 2], [3, [4, 6]]]})
    assert result.agreed is False and result.reason.startswith("$.a[1][1][1]: 5 vs 6")


def test_a_boolean_is_not_the_number_one():
    result = pair({"fraud": True}, {"fraud": 1})
    assert result.agreed is False and "shape: live boolean, mirror number" in result.reason


def test_a_string_label_must_be_equal():
    result = pair({"label": "fraud"}, {"label": "ok"})
    assert result.agreed is False and result.reason == '$.label: "fraud" vs "ok"'


def test_a_number_as_a_string_is_not_a_number():
    assert pair([0.5], ["0.5"]).agreed is False


def test_missing_or_extra_keys_disagree_and_are_named():
    result = pair({"a": 1, "b": 2}, {"a": 1, "c": 2})
    assert result.agreed is False and "mirror lacks b" in result.reason and "mirror adds c" in result.reason


def test_null_agrees_only_with_null():
    assert pair([None], [None]).agreed is True
    assert pair([None], [0]).agreed is False


def test_nan_agrees_only_with_nan():
    assert compare_values([math.nan], [math.nan]).agreed is True
    assert compare_values([math.nan], [0.5]).agreed is False
    assert compare(200, b"[NaN]", 200, b"[NaN]").agreed is True  # Python's json (and so the models) writes NaN


def test_infinity_agrees_only_with_the_same_infinity():
    assert compare_values([math.inf], [math.inf]).agreed is True
    assert compare_values([math.inf], [-math.inf], Tolerance(0.5, 10)).agreed is False
    assert compare_values([math.inf], [1e308], Tolerance(0.5)).agreed is False


def test_a_mirror_error_disagrees_with_a_live_answer():
    result = pair([0.5], {"message": "boom"}, mirror_status=424)
    assert result.agreed is False and result.reason == "status: live 200, mirror 424"


def test_a_failed_live_answer_is_not_compared():
    result = pair({"message": "boom"}, [0.5], live_status=503)
    assert result.agreed is None and "503" in result.reason


# --- bodies that are not JSON -----------------------------------------------------------------------

def test_bodies_that_are_not_json_are_compared_byte_for_byte():
    assert compare(200, b"label=fraud", 200, b"label=fraud").agreed is True
    result = compare(200, b"label=fraud", 200, b"label=ok")
    assert result.agreed is False and result.reason == "the bodies (not JSON) differ"
    assert result.live_value == "label=fraud" and result.mirror_value == "label=ok"


def test_json_against_not_json_disagrees():
    result = compare(200, b"[0.5]", 200, b"<html>")
    assert result.agreed is False and result.reason == "only the live answer is JSON"


def test_an_answer_nested_deeper_than_python_recurses_is_compared_as_text():
    deep = b"[" * 5000 + b"]" * 5000
    assert compare(200, deep, 200, deep).agreed is True
    assert compare(200, deep, 200, deep[:-1] + b"1]").agreed is False


# --- compare path ------------------------------------------------------------------------------------

def test_a_compare_path_compares_only_that_part():
    live = {"model": "fraud", "version": 1, "scores": [0.1, 0.9]}
    mirror = {"model": "fraud", "version": 2, "scores": [0.1, 0.9]}
    assert pair(live, mirror).agreed is False
    assert pair(live, mirror, path="scores").agreed is True
    assert pair(live, mirror, path="$.scores").agreed is True


def test_a_json_path_with_indices_reaches_one_value():
    live, mirror = {"result": [{"score": 0.7}, {"score": 0.1}]}, {"result": [{"score": 0.7}, {"score": 0.2}]}
    assert pair(live, mirror, path="$.result[0].score").agreed is True
    result = pair(live, mirror, path="$.result[1].score")
    assert result.agreed is False and result.reason.startswith("$.result[1].score: 0.1 vs 0.2")


def test_a_quoted_key_may_hold_any_character():
    path = parse_path('$["class probabilities"][1]')
    assert path.steps == ("class probabilities", 1)


def test_a_path_the_live_answer_lacks_is_not_compared_and_says_where_it_stopped():
    result = pair({"result": []}, {"result": []}, path="$.result[0].score")
    assert result.agreed is None and "stops at $.result" in result.reason


def test_a_path_only_the_mirror_lacks_disagrees():
    result = pair({"scores": [1]}, {"predictions": [1]}, path="scores")
    assert result.agreed is False and "the mirror's answer has no scores" in result.reason


def test_the_settings_say_what_they_compare():
    assert settings_from().as_json() == {"comparePath": "$", "outputTolerance": "rel:1e-09"}
    assert settings_from("scores", "abs:0.5").as_json() == {"comparePath": "scores", "outputTolerance": "abs:0.5"}


# --- bad input: one clear message each ---------------------------------------------------------------

@pytest.mark.parametrize("text, says", [
    ("", "allowed: $ (the whole body)"),
    ("$.scores[x]", "cannot read it from '[x]'"),
    ("$..scores", "cannot read it from '..scores'"),
    ("scores[0", "cannot read it from '[0'"),
    (3, "compare path 3"),
    ('$["\\x"]', "the quoted key '\\\\x' is not a JSON string (Invalid \\escape)"),
    ('$["a\nb"]', "is not a JSON string (Invalid control character"),
])
def test_a_bad_compare_path_is_refused(text, says):
    with pytest.raises(CompareError, match=None) as caught:
        parse_path(text)
    assert says in str(caught.value)


@pytest.mark.parametrize("text, says", [
    ("one percent", "'one percent' is not a number"),
    ("-0.1", "at least 0, got -0.1"),
    ("1.5", "a relative tolerance is below 1"),
    ("abs:nan", "a finite number"),
    ("pct:1", "'pct:1' is not allowed"),
    ("abs:1,abs:2", "'abs:2' is not allowed"),
    (True, "output tolerance True"),
])
def test_a_bad_tolerance_is_refused(text, says):
    with pytest.raises(CompareError) as caught:
        parse_tolerance(text)
    assert says in str(caught.value)


def test_a_number_is_a_relative_tolerance():
    assert parse_tolerance(0.05) == Tolerance(0.05, 0.0) and parse_tolerance("0") == Tolerance(0.0, 0.0)


# --- samples and output values -----------------------------------------------------------------------

def test_a_disagreement_keeps_truncated_values_and_an_agreement_none():
    long = {"scores": list(range(500))}
    result = pair(long, {"scores": list(range(499)) + [0]})
    assert result.agreed is False and len(result.live_value) == 200 and result.live_value.endswith("...")
    assert pair(long, long).live_value == ""


def test_a_request_is_kept_as_a_short_hash_only():
    digest = request_hash(b'{"data": [[1, 2]]}')
    assert len(digest) == 16 and digest == request_hash(b'{"data": [[1, 2]]}') != request_hash(b"{}")


def test_an_output_value_is_the_number_at_the_path_or_the_mean_under_it():
    body = json.dumps({"scores": [0.2, 0.4], "flag": True}).encode()
    assert output_value(200, body, parse_path("scores")) == pytest.approx(0.3)
    assert output_value(200, body, parse_path("$.scores[1]")) == 0.4
    assert output_value(200, body, parse_path("flag")) is None  # a boolean is not a numeric output
    assert output_value(424, body, parse_path("scores")) is None
    assert output_value(200, b"not json", Settings().path) is None


def test_an_answer_nested_too_deep_gives_no_output_value_rather_than_an_error():
    deeper = b"[" * 100_000 + b"]" * 100_000
    assert output_value(200, deeper, parse_path("$")) is None


def test_an_integer_beyond_float_range_is_an_infinity_not_an_error():
    huge = b'{"scores": [1' + b"0" * 400 + b"]}"
    result = compare(200, b'{"scores": [0.5]}', 200, huge, settings_from("scores"))
    assert result.agreed is False and "inf (outside tolerance)" in result.reason
    assert compare(200, huge, 200, huge, settings_from("scores")).agreed is True
    assert output_value(200, huge, parse_path("scores")) is None  # an infinity is no output to compare


def test_numbers_near_the_float_limit_have_a_finite_mean_output():
    assert output_value(200, b'{"s": [1e308, 1e308]}', parse_path("s")) == pytest.approx(1e308)


def test_a_mirror_answer_nested_too_deep_to_parse_disagrees_and_says_so_not_that_it_is_not_json():
    deep = b'{"scores": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    result = compare(200, b'{"scores": [0.5]}', 200, deep, settings_from("scores"))
    assert result.agreed is False and result.reason == "the mirror answer is JSON nested too deep to read"
    assert compare(200, b'{"a": 1}', 200, b"not json").reason == "only the live answer is JSON"
