"""The YAML guards' decisions on duplicate keys (issue 19): a duplicate is two keys with the same
value, however they are spelled, and keys brought in by a merge (`<<`) are not duplicates."""

from __future__ import annotations

import pytest

from mlcanary.components.safe_yaml import load_yaml
from mlcanary.components.user_files import UnusableFile


@pytest.mark.parametrize("text, shown", [
    ("1: a\n+1: b\n", "1"),  # YAML 1.1 ints: +1 is 1
    ("true: a\nyes: b\n", "True"),  # YAML 1.1 booleans: yes is true
    ("1.0: a\n1.00: b\n", "1.0"),
    ("'k': a\nk: b\n", "'k'"),  # a quoted and a plain k are the same string
], ids=["int_spellings", "bool_spellings", "float_spellings", "quoted_and_plain"])
def test_keys_spelled_differently_but_equal_are_duplicates(text, shown):
    with pytest.raises(UnusableFile) as raised:
        load_yaml(text, "stage.yaml")
    assert str(raised.value).startswith(f"stage.yaml: duplicate key {shown} at line 2, column 1 (first at line 1")


def test_keys_equal_in_spelling_only_as_strings_are_distinct():
    assert load_yaml("'1': a\n1: b\n", "stage.yaml") == {"1": "a", 1: "b"}


def test_a_mapping_with_its_own_merge_used_again_by_alias_is_not_a_duplicate():
    """`&common` overrides a key it merges from `*defaults`; PyYAML rewrites its pairs when the mapping
    around it is merged, so the alias `*common` later must still be judged on the pairs as written."""
    text = (
        "defaults: &defaults {instanceCount: 1}\n"
        "blue:\n"
        "  <<: &common\n"
        "    <<: *defaults\n"
        "    instanceCount: 2\n"
        "  model: m1\n"
        "green: *common\n"
    )
    loaded = load_yaml(text, "stage.yaml")
    assert loaded["green"] == {"instanceCount": 2}


def test_an_unacceptable_character_is_placed_by_its_line_and_column():
    with pytest.raises(UnusableFile) as raised:
        load_yaml("a: 1\nb: 2\nccc: x\x07y\n", "stage.yaml")
    assert str(raised.value) == ("stage.yaml: not valid YAML at line 3, column 7: unacceptable character #x0007 "
                                 "(special characters are not allowed)")


def test_keys_after_a_merge_key_are_still_checked_for_duplicates():
    with pytest.raises(UnusableFile) as raised:
        load_yaml("base: &b {x: 1}\nm: {<<: *b, k: 1, k: 2}\n", "stage.yaml")
    assert "duplicate key 'k' at line 2, column 19 (first at line 2, column 13)" in str(raised.value)


def test_keys_after_an_unhashable_key_are_still_checked_for_duplicates():
    with pytest.raises(UnusableFile) as raised:
        load_yaml("? [a]\n: 1\nk: 1\nk: 2\n", "stage.yaml")
    assert "duplicate key 'k' at line 4, column 1 (first at line 3, column 1)" in str(raised.value)
