"""The YAML guards' decisions on duplicate keys (issue 19): a duplicate is two keys with the same
value, however they are spelled, and keys brought in by a merge (`<<`) are not duplicates."""

from __future__ import annotations

import pytest

from mlcanary.components import safe_yaml
from mlcanary.components.safe_yaml import load_yaml
from mlcanary.components.user_files import UnusableFile


@pytest.fixture(autouse=True)
def documents_read_afresh():
    """load_yaml keeps the documents it read (per process, by text): each test reads its own afresh, so
    what it checks is the reader's work, not a document an earlier test (or process) left behind."""
    safe_yaml._document.cache_clear()
    yield
    safe_yaml._document.cache_clear()


def test_a_document_changed_by_its_reader_is_read_as_written_next_time():
    text = "deployments: {blue: {instanceCount: 1}}\n"
    first = load_yaml(text, "stage.yaml")
    first["deployments"]["blue"]["instanceCount"] = 5
    assert load_yaml(text, "stage.yaml") == {"deployments": {"blue": {"instanceCount": 1}}}


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


# --- where the bounds are, and what the refusals say (mutation survivors of safe_yaml.py) ----------

def refusal(text: str, *typical: str) -> str:
    with pytest.raises(UnusableFile) as raised:
        load_yaml(text, "stage.yaml", *typical)
    return str(raised.value)


def sequence(count: int) -> str:
    return "[" + ", ".join(["1"] * count) + "]"


def test_10000_values_are_read_and_one_more_is_refused():
    """A sequence of 9,999 numbers is 10,000 values (the sequence itself is one)."""
    assert len(load_yaml(sequence(9_999), "stage.yaml")) == 9_999
    assert refusal(sequence(10_000)) == "stage.yaml: more than 10000 values, at line 1"


def test_the_advice_names_what_the_file_usually_holds_only_when_the_caller_says():
    assert refusal(sequence(10_000), "a stage file is a few KB") == (
        "stage.yaml: more than 10000 values, at line 1; a stage file is a few KB: it holds a few hundred")


def test_10000_values_through_an_alias_are_read_and_one_more_is_refused_at_the_alias_line():
    """The document, `x`, the anchored sequence of k numbers and its alias: 1 + 1 + 2 (1 + k) values."""
    at_the_bound = "- x\n- &s " + sequence(4_998) + "\n- *s\n"
    assert len(load_yaml(at_the_bound, "stage.yaml")[2]) == 4_998
    one_more = "- x\n- &s " + sequence(4_999) + "\n- *s\n"
    assert refusal(one_more) == "stage.yaml: more than 10000 values once YAML aliases are expanded, at line 3"


def test_50_levels_of_nesting_are_read_and_51_are_refused():
    """A scalar inside 49 sequences is at level 50; inside 50, at level 51 (no bracket opens level 51)."""
    assert load_yaml("[" * 49 + "x" + "]" * 49, "stage.yaml") is not None
    assert refusal("[" * 50 + "x" + "]" * 50) == "stage.yaml: nested deeper than 50 levels at line 1"


def test_flow_nesting_is_refused_at_the_bracket_that_opens_level_51():
    """The scanner reads ahead inside brackets; it stops at the 51st, not at a later one."""
    assert refusal("[\n" * 60 + "x" + "]" * 60) == "stage.yaml: nested deeper than 50 levels at line 51"


def test_block_nesting_is_refused_at_the_line_that_opens_level_51():
    text = "".join("  " * level + "-\n" for level in range(60)) + "  " * 60 + "x\n"
    assert refusal(text) == "stage.yaml: nested deeper than 50 levels at line 51"


def nested_alias(brackets: int) -> str:
    """`*a` (4 levels: three sequences and x) used inside `brackets` sequences of the top sequence:
    its deepest value is at level 1 + brackets + 4."""
    return "- &a [[[x]]]\n- " + "[" * brackets + "*a" + "]" * brackets + "\n"


def test_nesting_through_an_alias_counts_the_levels_the_alias_stands_for():
    assert load_yaml(nested_alias(45), "stage.yaml")[1] is not None  # level 50
    assert refusal(nested_alias(46)) == "stage.yaml: nested deeper than 50 levels at line 2"  # level 51


def test_invalid_yaml_is_placed_by_its_line_and_column():
    assert refusal("a: 1\nb: [1\n") == (
        "stage.yaml: not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'")


@pytest.mark.parametrize("written, reads_as", [
    ("010", "as octal"),
    ("01", "as octal"),
    ("-010", "as octal"),
    ("!!int 0o17", "as octal"),  # Python's int(text, 8) takes the 0o prefix
    ("+0x1A", "as hexadecimal"),
    ("0b10", "as binary"),
    ("1_000", "with its underscores dropped"),
    ("1:30", "as base 60 (sexagesimal)"),
    ("!!int --5", "with its signs multiplied"),  # PyYAML reads it as 5
    ("!!float +-2.5", "with its signs multiplied"),  # and this as -2.5
], ids=["octal", "octal_two_digits", "negative_octal", "octal_0o", "signed_hex", "binary", "underscores",
        "sexagesimal", "two_signs_int", "two_signs_float"])
def test_a_number_not_in_plain_digits_is_refused_saying_how_yaml_1_1_reads_it(written, reads_as):
    shown = written.rpartition(" ")[2]
    assert refusal(f"a: 1\nb: {written}\n") == (
        f"stage.yaml: {shown} at line 2 is not a plain number: YAML 1.1 reads it {reads_as}; "
        "write it in decimal digits (10, 2.5), or quote it if it is text")


def test_decimal_numbers_with_a_zero_after_the_first_digit_read_as_written():
    assert load_yaml("a: 10.5\nb: 100\nc: -20.25\n", "stage.yaml") == {"a": 10.5, "b": 100, "c": -20.25}


def test_a_tagged_integer_that_is_no_number_is_refused_as_unreadable():
    assert refusal("a: !!int X0x1\n") == "stage.yaml: not valid YAML at line 1, column 4: cannot read 'X0x1' as an integer"
