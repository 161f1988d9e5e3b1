"""The one YAML reader for every YAML file a user gives the project (stage files, `file:` deployments).

PyYAML's `safe_load` keeps the last of duplicate keys silently and turns aliases into shared
objects: a 1 KB file can stand for billions of values that explode when validation walks them, and
deep nesting ends in a RecursionError. This reader refuses, while composing and before anything is
constructed or validated: duplicate keys (naming both lines), more than MAX_VALUES values once
aliases are expanded, nesting deeper than MAX_DEPTH (aliases included), and an alias inside the
collection it names. Values PyYAML cannot construct (a 5,000-digit number, the 45th of a month)
are refused with their line too, and so are YAML 1.1's other ways of writing a number (`010` is octal
8, `0x2` hex, `1:30` base 60, `1_000` with underscores, `!!int --5` as 5): numbers are plain decimal digits, so what a
file says is what it means (Pulumi's own YAML reader would read some of them otherwise). Every
refusal is an `UnusableFile` naming the file.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from mlcanary.components.rules import shown, shown_text
from mlcanary.components.user_files import CONFIG_FILE_LIMIT, UnusableFile, read_text, shown_path

MAX_DEPTH = 50  # a stage file is 6-8 levels deep
MAX_VALUES = 10_000  # a stage file holds a few hundred; 20 deployments with every key, a few thousand
_MERGE_TAG = "tag:yaml.org,2002:merge"
_KINDS = {"int": "an integer", "float": "a number", "timestamp": "a date", "bool": "true or false"}
_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")


def _unplain_number_form(text: str) -> str | None:
    """How YAML 1.1 reads a number written other than in plain decimal digits, or None if it is plain."""
    body = text.lstrip("+-")
    if len(text) - len(body) > 1:
        return "with its signs multiplied"
    if "_" in body:
        return "with its underscores dropped"
    if ":" in body:
        return "as base 60 (sexagesimal)"
    if body[:2].lower() == "0x":
        return "as hexadecimal"
    if body[:2].lower() == "0b":
        return "as binary"
    if body[:2].lower() == "0o" or (len(body) > 1 and body[0] == "0" and body[1].isdigit()):
        return "as octal"
    return None


def load_yaml_file(path: Path, what: str, typical: str) -> Any:
    """The document in the YAML file `path`, a `what` ("stage file"); `typical` says its usual size."""
    return load_yaml(read_text(path, what, CONFIG_FILE_LIMIT, typical), shown_path(path), typical)


def load_yaml(text: str, source: str, typical: str = "") -> Any:
    """The document in `text`; `source` names it in messages."""
    try:
        return copy.deepcopy(_document(text))  # a copy: callers may change what they get
    except _Refused as refused:
        advice = f"; {typical}: {refused.advice}" if typical and refused.advice else ""
        raise UnusableFile(f"{source}: {refused}{advice}") from None
    except yaml.reader.ReaderError as err:
        line, column = _line_and_column(text, err.position)
        raise UnusableFile(
            f"{source}: not valid YAML at line {line}, column {column}: unacceptable character "
            f"#x{err.character:04x} ({err.reason})"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UnusableFile(f"{source}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None


@functools.lru_cache(maxsize=32)
def _document(text: str) -> Any:
    """The document in `text`, composed once per process: `mlcanary check` reads a `file:` deployment once
    for the stage's config and once in the program, for every stage that names it (the same text always
    gives the same document; a refusal is not remembered)."""
    loader = _BoundedLoader(text)  # reading starts here: a control character is refused already
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _Refused(Exception):
    def __init__(self, message: str, advice: str = ""):
        super().__init__(message)
        self.advice = advice


def _line_and_column(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader (the pure-Python one: its composer can be bounded) with the refusals above."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._values = 0  # values composed so far, each alias counted as everything it stands for
        self._deepest: list[int] = []  # per open node: the deepest level reached inside it
        self._open_anchors: set[str] = set()
        self._measures: dict[str, tuple[int, int]] = {}  # anchor -> (values, height) of its node
        self._own_keys: dict[int, list[tuple[Node, Node]]] = {}  # mapping node id -> its written pairs

    # The scanner looks ahead for keys inside flow collections at a cost that grows with their
    # depth, so nesting is refused there already, as well as in the composer below.
    def fetch_flow_collection_start(self, token_class: type) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels at line {self.line + 1}")
        super().fetch_flow_collection_start(token_class)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels at line {self.line + 1}")
        return super().add_indent(column)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        depth = len(self._deepest) + 1
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise _Refused(
                    f"the alias *{event.anchor} at line {event.start_mark.line + 1} refers to a collection that "
                    "contains it (a structure without end)"
                )
            if event.anchor in self._measures:  # else PyYAML reports the undefined alias
                values, height = self._measures[event.anchor]
                self._count(values, depth + height - 1, event.start_mark, alias=True)
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        before = self._values
        self._deepest.append(depth)
        self._count(1, depth, event.start_mark)
        if anchor is not None:
            self._open_anchors.add(anchor)
        node = super().compose_node(parent, index)
        deepest = self._deepest.pop()
        if self._deepest:
            self._deepest[-1] = max(self._deepest[-1], deepest)
        if anchor is not None:
            self._open_anchors.discard(anchor)
            self._measures[anchor] = (self._values - before, deepest - depth + 1)
        return node

    def _count(self, values: int, reached: int, mark: yaml.Mark, alias: bool = False) -> None:
        self._values += values
        if self._deepest:
            self._deepest[-1] = max(self._deepest[-1], reached)
        if reached > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels at line {mark.line + 1}")
        if self._values > MAX_VALUES and alias:
            raise _Refused(
                f"more than {MAX_VALUES} values once YAML aliases are expanded, at line {mark.line + 1}",
                "write the values out or use fewer aliases",
            )
        if self._values > MAX_VALUES:
            raise _Refused(f"more than {MAX_VALUES} values, at line {mark.line + 1}", "it holds a few hundred")

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        # Merge keys (`<<: *base`) rewrite node.value in place later: keep the pairs as written.
        self._own_keys[id(node)] = list(node.value)
        return node

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, _ in self._own_keys.get(id(node), node.value):
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.get(key)
                except TypeError:
                    continue  # an unhashable key: PyYAML refuses it below
                here = key_node.start_mark
                if earlier is not None:
                    raise _Refused(
                        f"duplicate key {shown(key)} at line {here.line + 1}, column {here.column + 1} "
                        f"(first at line {earlier.line + 1}, column {earlier.column + 1}); "
                        "a key may appear once in a mapping"
                    )
                first[key] = here
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Node) -> int:
        self._refuse_unplain_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Node) -> float:
        self._refuse_unplain_number(node)
        return super().construct_yaml_float(node)

    def _refuse_unplain_number(self, node: Node) -> None:
        text = str(node.value)
        form = None if _PLAIN_INT.fullmatch(text) else _unplain_number_form(text)
        if form is not None:
            raise _Refused(f"{shown_text(text, str)} at line {node.start_mark.line + 1} is not a plain number: YAML 1.1 "
                           f"reads it {form}; write it in decimal digits (10, 2.5), or quote it if it is text")

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (_Refused, yaml.YAMLError):
            raise
        except Exception:  # noqa: BLE001 - PyYAML's constructors fail in many ways (`!!timestamp x`)
            kind = _KINDS.get(node.tag.rsplit(":", 1)[-1], node.tag)
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown_text(str(node.value), repr)} as {kind}", node.start_mark
            ) from None


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _BoundedLoader.construct_yaml_float)
