"""Decisions of the rules module and the transition rules, pinned at their edges (issue 19).

Each test states a rule of Azure ML (design.md, "Azure facts") or of `mlcanary check` at the exact
value where allowed turns into refused, so an off-by-one or a dropped case fails here.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from mlcanary.check import _check_transition, policy_defaults
from mlcanary.components import rules
from mlcanary.components.spec import load_stack_config
from mlcanary.components.stage_file import namespaced
from mlcanary.policy_config import policy_settings
from conftest import PROJECT_DIR, STAGE_FILES, stage_config


@pytest.mark.parametrize("traffic", [{"blue": 0, "green": 0}, {}], ids=["all_zero", "empty_map"])
def test_nothing_live_is_an_allowed_live_traffic_sum(traffic):
    """Azure: the live shares sum to exactly 100, or to 0 when nothing is live (an endpoint before its
    first deployment goes live, or after its traffic was taken away)."""
    assert rules.traffic_problems(traffic, {}, ["blue", "green"]) == []


@pytest.mark.parametrize("total", [1, 99, 101])
def test_a_live_traffic_sum_other_than_0_or_100_is_refused(total):
    (problem,) = rules.traffic_problems({"blue": total - 1, "green": 1}, {}, ["blue", "green"])
    assert problem.field == "traffic" and f"got {total}" in problem.message


@pytest.mark.parametrize("length", [3, 31, 32])
def test_names_of_3_to_32_characters_are_allowed(length):
    name = "e" * (length - 1) + "1"
    assert rules.name_problems("endpoint.name", name) == []


@pytest.mark.parametrize("length", [2, 33])
def test_names_shorter_than_3_or_longer_than_32_characters_are_refused(length):
    (problem,) = rules.name_problems("endpoint.name", "e" * length)
    assert problem.field == "endpoint.name" and "3-32 characters" in problem.message


def _endpoint(number: str, traffic: dict[str, int]):
    """A sample stage with its live traffic replaced."""
    path = next(p for p in STAGE_FILES if p.name.startswith(f"stage-{number}"))
    config = stage_config(path)
    config["mlcanary:endpoint"]["traffic"] = traffic
    config["mlcanary:endpoint"]["mirrorTraffic"] = {}
    return load_stack_config(namespaced(config, "mlcanary"), PROJECT_DIR).endpoint


def _max_shift_violations(before, after, limit: int) -> list[str]:
    settings = policy_settings({"max-traffic-shift": {"enforcementLevel": "mandatory", "maxShiftPercent": limit}},
                               policy_defaults())
    return [v.message for v in _check_transition("A -> B", before, after, settings) if v.policy == "max-traffic-shift"]


def test_a_step_moving_exactly_max_shift_percent_is_allowed():
    before, after = _endpoint("5", {"blue": 90, "green": 10}), _endpoint("5", {"blue": 60, "green": 40})
    assert _max_shift_violations(before, after, 30) == []


def test_a_step_moving_one_point_more_than_max_shift_percent_is_refused():
    before, after = _endpoint("5", {"blue": 90, "green": 10}), _endpoint("5", {"blue": 59, "green": 41})
    assert _max_shift_violations(before, after, 30) == [
        "this step moves 31 percentage points of live traffic; at most 30 may move in one step"]


# --- how messages echo a user's value (a 100 KB name is not echoed in full) -----------------------


def test_a_long_string_is_echoed_as_its_first_60_characters_and_its_length():
    assert rules.shown("a" * 100) == "'" + "a" * 60 + "'… (100 characters)"
    assert rules.shown("a" * 60) == "'" + "a" * 60 + "'"
    assert rules.shown_text("b" * 61) == "b" * 60 + "… (61 characters)" and rules.shown_text("b" * 60) == "b" * 60


@pytest.mark.parametrize("value, echoed", [
    (["x" * 100, 2, 3, 4, 5], "['" + "x" * 20 + "'… (100 characters), 2, 3, ...]"),
    (list(range(1000)), "[0, 1, 2, ...]"),
    (tuple(range(10)), "(0, 1, 2, ...)"),
    ({1, 2, 3, 4, 5}, "{1, 2, 3, ...}"),
    ({"a": 1, "b": 2, "c": 3, "d": 4}, "{'a': 1, 'b': 2, 'c': 3, ...}"),
    ([[[["deep"]]]], "[[[[...]]]]"),
    (10 ** 100, "1" + "0" * 17 + "..." + "0" * 19),
], ids=["strings_inside_a_list", "long_list", "long_tuple", "long_set", "long_mapping", "deep_nesting", "huge_number"])
def test_containers_are_echoed_with_three_items_and_strings_inside_them_cut_to_20(value, echoed):
    assert rules.shown(value) == echoed


def test_an_echo_is_at_most_180_characters():
    echoed = rules.shown([["y" * 200] * 3] * 3)
    assert len(echoed) == 181 and echoed.endswith("…")
    assert echoed.startswith("[['" + "y" * 20 + "'… (200 characters), ")


def test_a_problem_reads_field_colon_message_or_the_message_alone():
    assert str(rules.Problem("endpoint.name", "too long")) == "endpoint.name: too long"
    assert str(rules.Problem("", "too long")) == "too long"


# --- Kubernetes mirror, asset names ---------------------------------------------------------------


@pytest.mark.parametrize("mirror", [{}, {"green": 0}, {"green": 0.0, "blue": 0}], ids=["none", "zero", "zero_floats"])
def test_kubernetes_endpoints_accept_a_mirror_map_of_zeros(mirror):
    assert rules.kubernetes_mirror_problems("mirrorTraffic", mirror) == []


@pytest.mark.parametrize("mirror", [{"green": 10}, {"blue": 0, "green": 1}], ids=["ten", "one_of_two"])
def test_kubernetes_endpoints_refuse_any_mirror_share(mirror):
    assert rules.kubernetes_mirror_problems("mirrorTraffic", mirror) == [
        rules.Problem("mirrorTraffic", "mirror traffic is not supported on Kubernetes online endpoints")]


@pytest.mark.parametrize("name", ["m", "7", "model-1.2_b", "A" * 255], ids=["one_letter", "digit", "all_kinds", "255"])
def test_asset_names_of_letters_digits_dash_underscore_dot_are_allowed(name):
    assert rules.asset_name_problems("model", name) == []


@pytest.mark.parametrize("name, echoed", [
    ("_m", "'_m'"), ("-m", "'-m'"), (".m", "'.m'"), ("A" * 256, "'" + "A" * 60 + "'… (256 characters)"),
    ("m/1", "'m/1'"), ("", "''"), ("m\n", "'m\\n'"),
], ids=["underscore_first", "dash_first", "dot_first", "256", "slash", "empty", "newline"])
def test_other_asset_names_are_refused_saying_what_is_allowed(name, echoed):
    assert rules.asset_name_problems("model", name) == [rules.Problem(
        "model", f"{echoed} is not a valid asset name: up to 255 letters, digits, '-', '_' and '.', "
                 "starting with a letter or digit")]


def _without_green(number: str, traffic: dict[str, int]):
    path = next(p for p in STAGE_FILES if p.name.startswith(f"stage-{number}"))
    config = stage_config(path)
    endpoint = config["mlcanary:endpoint"]
    endpoint["deployments"].pop("green", None)
    endpoint["traffic"], endpoint["mirrorTraffic"] = traffic, {}
    return load_stack_config(namespaced(config, "mlcanary"), PROJECT_DIR).endpoint


def test_a_new_deployments_whole_share_counts_as_moved():
    before, after = _without_green("2", {"blue": 100}), _endpoint("5", {"blue": 70, "green": 30})
    assert _max_shift_violations(before, after, 30) == []
    assert _max_shift_violations(before, after, 29) == [
        "this step moves 30 percentage points of live traffic; at most 29 may move in one step"]


def test_max_shift_without_a_configured_limit_allows_any_move():
    from mlcanary.policies.transitions import TRANSITION_POLICIES

    (max_shift,) = [p for p in TRANSITION_POLICIES if p.name == "max-traffic-shift"]
    before, after = _endpoint("5", {"blue": 100, "green": 0}), _endpoint("5", {"blue": 0, "green": 100})
    assert max_shift.check(before, after, {}) == []
    assert max_shift.check(before, after, {"maxShiftPercent": 99}) == [
        "this step moves 100 percentage points of live traffic; at most 99 may move in one step"]


# --- instance-type-kept: which deployments it judges and what it says of their traffic ------------


def _instance_type_kept(before, after) -> list[str]:
    from mlcanary.policies.transitions import TRANSITION_POLICIES

    (rule,) = [p for p in TRANSITION_POLICIES if p.name == "instance-type-kept"]
    return rule.check(before, after, {})


def _with_types(endpoint, types: dict[str, str | None], mirror: dict[str, int] | None = None):
    """`endpoint` with these deployments (copies of its blue) on these instance types (None: not known,
    as a running local state records it), sharing no live traffic but blue's."""
    blue = endpoint.deployments["blue"]
    deployments = {name: blue.model_copy(update={"instance_type": kind}) for name, kind in types.items()}
    traffic = {name: (100 if name == "blue" else 0) for name in deployments}
    return endpoint.model_copy(update={"deployments": deployments, "traffic": traffic, "mirror_traffic": mirror or {}})


def test_a_deployment_whose_instance_type_is_not_known_on_one_side_is_not_judged():
    base = _endpoint("5", {"blue": 100, "green": 0})
    known, unknown = _with_types(base, {"blue": "Standard_DS3_v2"}), _with_types(base, {"blue": None})
    assert _instance_type_kept(known, unknown) == [] and _instance_type_kept(unknown, known) == []


def test_every_changed_instance_type_is_reported_whatever_deployments_come_before_it():
    base = _endpoint("5", {"blue": 100, "green": 0})
    unknown = {f"dark{i}": None for i in range(9)}
    changed = [f"moved{i}" for i in range(10)]
    before = _with_types(base, {"blue": None, **unknown, **dict.fromkeys(changed, "Standard_DS3_v2")})
    after = _with_types(base, {"blue": None, **unknown, **dict.fromkeys(changed, "Standard_F8s_v2")})
    reported = _instance_type_kept(before, after)
    assert sorted(m.split("'")[1] for m in reported) == sorted(changed)


def test_a_mirrored_deployment_changing_instance_type_has_traffic():
    base = _endpoint("5", {"blue": 100, "green": 0})
    before = _with_types(base, {"blue": "Standard_DS3_v2", "green": "Standard_DS3_v2"}, mirror={"green": 10})
    after = _with_types(base, {"blue": "Standard_DS3_v2", "green": "Standard_F8s_v2"})
    (message,) = _instance_type_kept(before, after)
    assert message.startswith("deployment 'green' changes instanceType from Standard_DS3_v2 to Standard_F8s_v2 "
                              "while it has traffic; ")


def test_a_deployment_without_traffic_changing_instance_type_is_refused_without_a_word_on_traffic():
    base = _endpoint("5", {"blue": 100, "green": 0})
    before = _with_types(base, {"blue": "Standard_DS3_v2", "green": "Standard_DS3_v2"})
    after = _with_types(base, {"blue": "Standard_DS3_v2", "green": "Standard_F8s_v2"})
    assert _instance_type_kept(before, after) == [
        "deployment 'green' changes instanceType from Standard_DS3_v2 to Standard_F8s_v2; an online deployment "
        "cannot change its instance type in place: add a new deployment with the new type under another name, "
        "as a stage of its own, and move traffic to it"]


# --- echoes, names, counts and traffic maps at their edges (mutmut survivors of rules.py) ----------


@pytest.mark.parametrize("value, echoed", [
    (list(range(4)), "[0, 1, 2, ...]"),
    ((0, 1, 2, 3), "(0, 1, 2, ...)"),
    ({0, 1, 2, 3}, "{0, 1, 2, ...}"),
    ({"a": 1, "b": 2, "c": 3, "d": 4}, "{'a': 1, 'b': 2, 'c': 3, ...}"),
    ([[[["deep"]]]], "[[[[...]]]]"),
    (10 ** 100, "1" + "0" * 17 + "..." + "0" * 19),
    (Fraction(10 ** 70, 3), "Fraction(1" + "0" * 18 + "..." + "0" * 25 + ", 3)"),  # 60 characters
], ids=["four_items", "four_tuple_items", "four_set_items", "four_keys", "four_levels", "huge_number", "other_value"])
def test_the_echo_keeps_three_items_three_levels_and_60_characters_of_any_other_value(value, echoed):
    """The module's echo is built once, at import; a fresh one is built here so its limits are read
    when the test runs (a mutation tool switches code only then)."""
    assert rules._ShortRepr().repr(value) == echoed


def test_an_echo_of_exactly_180_characters_is_kept_whole_and_one_more_is_cut():
    whole = [["a" * 15] * 3, ["a" * 15] * 3, ["a" * 15, "a" * 15, "a" * 18]]  # strings short enough to be whole
    assert len(repr(whole)) == 180 and rules.shown(whole) == repr(whole)
    longer = [["a" * 15] * 3, ["a" * 15] * 3, ["a" * 15, "a" * 15, "a" * 19]]
    assert rules.shown(longer) == repr(longer)[:180] + "…"


def test_a_name_is_judged_as_a_name_unless_the_caller_says_what_it_is():
    allowed = "3-32 characters, starting with a letter, only letters, digits and hyphens, not ending in a hyphen"
    assert rules.name_problems("endpoint.name", "ab") == [
        rules.Problem("endpoint.name", f"'ab' is not a valid name: {allowed}")]
    assert rules.name_problems("endpoint.name", 5, "endpoint name") == [
        rules.Problem("endpoint.name", f"endpoint name must be a string ({allowed}), got 5")]


def test_a_whole_float_off_the_wire_is_echoed_as_the_integer_it_stands_for():
    assert rules.instance_count_problems("sku.capacity", 51.0) == [
        rules.Problem("sku.capacity", "instance count must be a whole number from 1 to 50, got 51")]


def test_an_endpoint_may_have_20_deployments_and_not_21():
    assert rules.deployment_count_problems("deployments", 20) == []
    assert rules.deployment_count_problems("deployments", 21) == [
        rules.Problem("deployments", "an endpoint has at most 20 deployments, got 21")]


def test_a_lower_mirror_maximum_given_to_the_traffic_rules_is_applied():
    (problem,) = rules.traffic_problems({"blue": 100}, {"green": 30}, ["blue", "green"], max_mirror_percent=20)
    assert problem == rules.Problem("mirrorTraffic.green", "mirror traffic percent must be a whole number from 0 to 20, "
                                                           "got 30")


def test_unknown_deployments_are_named_beside_every_known_one_whatever_their_type():
    """A YAML key can be a number (`1:`); the names are listed sorted as text, or as none."""
    assert rules.traffic_target_problems({"red": 100}, {}, ["blue", 1]) == [
        rules.Problem("traffic.red", "live traffic names unknown deployment 'red'; deployments: 1, blue")]
    assert rules.traffic_target_problems({"red": 100}, {}, []) == [
        rules.Problem("traffic.red", "live traffic names unknown deployment 'red'; deployments: none")]


def test_a_bad_live_share_is_reported_even_when_a_good_one_follows_it():
    assert rules.traffic_share_problems({"blue": 101, "green": 0}, {}) == [
        rules.Problem("traffic.blue", "live traffic percent must be a whole number from 0 to 100, got 101")]


def test_a_refused_mirror_share_is_not_counted_as_a_mirror():
    assert rules.traffic_share_problems({"blue": 100}, {"green": 60, "red": 0}) == [
        rules.Problem("mirrorTraffic.green", "mirror traffic percent must be a whole number from 0 to 50, got 60")]


def test_an_environment_variable_name_starting_with_a_digit_is_refused_saying_what_is_allowed():
    assert rules.environment_variable_problems("environmentVariables", {"1X": "v"}) == [
        rules.Problem("environmentVariables.1X", "'1X' is not a valid environment variable name: letters, digits and "
                                                 "underscores, not starting with a digit")]


def test_a_kubernetes_deployment_without_an_instance_type_runs_on_the_clusters_default():
    assert rules.instance_type_on_azure("kubernetes", None) == "defaultinstancetype"
    assert rules.instance_type_on_azure("managed", None) is None
    assert rules.instance_type_on_azure("kubernetes", "gpu") == "gpu"
