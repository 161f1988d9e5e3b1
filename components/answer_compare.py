"""Do two answers to the same request agree? The one comparison rule of the project.

Used by the local router on mirrored requests (the live answer against the mirror's), by the rollout's
answer judge, and by bench/judge.py. Pure functions; no I/O.

- Both answers must be 200; an answer that is not 200 disagrees with one that is. A pair whose live
  answer failed is not compared (there is no reference to compare with: the error judges see it).
- Bodies that are JSON are compared as JSON, the whole body or the part at the compare path; a body
  that is not JSON is compared byte for byte.
- Same shape and types (a dict where a list was disagrees; `true` is not the number 1; 1 and 1.0 are
  the same number), equal keys, equal list lengths, equal strings, booleans and nulls.
- Numbers agree within the tolerance: |a - b| <= max(absolute, relative * max(|a|, |b|)). NaN agrees
  only with NaN, an infinity only with the same infinity.

Tolerance text (`--output-tolerance`): a bare number is a relative tolerance (`0.01` = 1 %); `abs:X`
an absolute one; both together separated by a comma (`0.01,abs:1e-6`, or `rel:0.01,abs:1e-6`).
The default, `rel:1e-9`, asks for the same answer (only float round-off differs).

Compare path (`--compare-path`): `$` is the whole body; `predictions` or `$.predictions` a key;
`$.result[0].score` keys and list indices; `$["odd key"]` a key with any characters.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_RELATIVE = 1e-9
SAMPLE_CHARS = 200  # a disagreement sample keeps at most this much of each compared value


class CompareError(ValueError):
    """A compare path or tolerance that cannot be used; the message says what is allowed."""


# --- tolerance -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    relative: float = DEFAULT_RELATIVE
    absolute: float = 0.0

    def __str__(self) -> str:
        parts = [f"rel:{self.relative:g}"] if self.relative else []
        parts += [f"abs:{self.absolute:g}"] if self.absolute else []
        return ",".join(parts) or "exact"

    def allows(self, a: float, b: float) -> bool:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= max(self.absolute, self.relative * max(abs(a), abs(b)))


TOLERANCE_ALLOWED = ("a relative tolerance as a number (0.01 = 1 %), abs:NUMBER for an absolute one, "
                     "or both separated by a comma (0.01,abs:1e-6)")


def parse_tolerance(text: Any) -> Tolerance:
    """`0.01`, `rel:0.01`, `abs:0.5`, `0.01,abs:1e-6` -> Tolerance; CompareError otherwise."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise CompareError(f"output tolerance {text!r}: allowed: {TOLERANCE_ALLOWED}")
    parts = [p.strip() for p in str(text).split(",")] if isinstance(text, str) else [str(text)]
    found: dict[str, float] = {}
    for part in parts:
        kind, _, number = part.rpartition(":")
        kind = kind.strip().lower() or "rel"
        if kind not in ("rel", "abs") or kind in found:
            raise CompareError(f"output tolerance {text!r}: {part!r} is not allowed; allowed: {TOLERANCE_ALLOWED}")
        try:
            value = float(number)
        except ValueError:
            raise CompareError(f"output tolerance {text!r}: {number.strip()!r} is not a number; "
                               f"allowed: {TOLERANCE_ALLOWED}") from None
        if not math.isfinite(value) or value < 0:
            raise CompareError(f"output tolerance {text!r}: a tolerance is a finite number of at least 0, got {number.strip()}")
        if kind == "rel" and value >= 1:
            raise CompareError(f"output tolerance {text!r}: a relative tolerance is below 1 (0.01 = 1 %), got {number.strip()}")
        found[kind] = value
    return Tolerance(found.get("rel", 0.0), found.get("abs", 0.0))


# --- compare path --------------------------------------------------------------------------------------

_STEP = re.compile(r'\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\["((?:[^"\\]|\\.)*)"\]')
PATH_ALLOWED = "$ (the whole body), a key (predictions), or a path of keys and indices ($.result[0].score, $[\"a key\"])"


@dataclass(frozen=True)
class ComparePath:
    text: str
    steps: tuple[str | int, ...]

    def __str__(self) -> str:
        return self.text

    def find(self, document: Any) -> tuple[bool, Any]:
        """(True, the part at this path) or (False, where the path stopped)."""
        node, walked = document, "$"
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    return False, walked
                node, walked = node[step], f"{walked}[{step}]"
            else:
                if not isinstance(node, dict) or step not in node:
                    return False, walked
                node, walked = node[step], f"{walked}.{step}"
        return True, node


def parse_path(text: Any) -> ComparePath:
    if not isinstance(text, str) or not text.strip():
        raise CompareError(f"compare path {text!r}: allowed: {PATH_ALLOWED}")
    body = text.strip()
    if not body.startswith("$"):
        body = "$." + body if not body.startswith("[") else "$" + body
    rest, steps, position = body[1:], [], 0
    while position < len(rest):
        match = _STEP.match(rest, position)
        if match is None:
            raise CompareError(f"compare path {text!r}: cannot read it from {rest[position:][:40]!r}; allowed: {PATH_ALLOWED}")
        key, index, quoted = match.groups()
        if quoted is not None:
            try:
                quoted = json.loads(f'"{quoted}"')
            except ValueError as err:  # a bad escape (\x) or a raw control character in the quoted key
                raise CompareError(f"compare path {text!r}: the quoted key {quoted!r} is not a JSON string "
                                   f"({err.msg}); allowed: {PATH_ALLOWED}") from None
        steps.append(int(index) if index is not None else key if key is not None else quoted)
        position = match.end()
    return ComparePath(text.strip(), tuple(steps))


WHOLE_BODY = ComparePath("$", ())


# --- comparing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """The outcome for one pair. `agreed` None: not compared (the live answer failed or lacks the path)."""

    agreed: bool | None
    reason: str = ""  # why not agreed / not compared, with where: "$.scores[1]: 0.91 vs 0.52"
    deviation: float | None = None  # the largest relative difference of the compared numbers (0 if equal)
    live_value: str = ""  # truncated text of the compared parts, kept for disagreements only
    mirror_value: str = ""


@dataclass(frozen=True)
class Settings:
    path: ComparePath = WHOLE_BODY
    tolerance: Tolerance = Tolerance()

    def as_json(self) -> dict:
        return {"comparePath": str(self.path), "outputTolerance": str(self.tolerance)}


def settings_from(compare_path: Any = None, output_tolerance: Any = None) -> Settings:
    return Settings(WHOLE_BODY if compare_path in (None, "") else parse_path(compare_path),
                    Tolerance() if output_tolerance in (None, "") else parse_tolerance(output_tolerance))


def relative_difference(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def truncated(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else json.dumps(value, allow_nan=True)
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS - 3] + "..."


def request_hash(body: bytes) -> str:
    """What a disagreement sample keeps of the request: a hash to find it again, never the body."""
    return hashlib.sha256(body).hexdigest()[:16]


TOO_DEEP = "nested too deep to read"


def _load(body: bytes) -> tuple[bool, Any]:
    """(True, the document), or (False, None) for a body that is not JSON, (False, TOO_DEEP) for JSON
    nested deeper than Python's parser recurses."""
    try:
        return True, json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None
    except RecursionError:
        return False, TOO_DEEP


def compare(live_status: int, live_body: bytes, mirror_status: int, mirror_body: bytes,
            settings: Settings = Settings()) -> Comparison:
    """Compare the mirror's answer with the live answer to the same request."""
    if live_status != 200:
        return Comparison(None, f"the live answer is {live_status}: nothing to compare with")
    if mirror_status != 200:
        return Comparison(False, f"status: live 200, mirror {mirror_status}", None,
                          truncated(live_body), truncated(mirror_body))
    live_json, live = _load(live_body)
    mirror_json, mirror = _load(mirror_body)
    if not live_json or not mirror_json:
        if live_json != mirror_json:
            which, other = ("live", mirror) if live_json else ("mirror", live)
            reason = (f"the {'mirror' if live_json else 'live'} answer is JSON {TOO_DEEP}" if other == TOO_DEEP
                      else f"only the {which} answer is JSON")
            return Comparison(False, reason, None, truncated(live_body), truncated(mirror_body))
        if live_body == mirror_body:
            return Comparison(True, deviation=0.0)
        return Comparison(False, "the bodies (not JSON) differ", None, truncated(live_body), truncated(mirror_body))
    found, live_part = settings.path.find(live)
    if not found:
        return Comparison(None, f"the live answer has no {settings.path} (it stops at {live_part})")
    found, mirror_part = settings.path.find(mirror)
    if not found:
        return Comparison(False, f"the mirror's answer has no {settings.path} (it stops at {mirror_part})", None,
                          truncated(live_part), truncated(mirror))
    try:
        return compare_values(live_part, mirror_part, settings.tolerance, _root(settings.path))
    except RecursionError:  # nested deeper than Python recurses: compare the texts
        same = live_body == mirror_body
        return Comparison(same, "" if same else "the bodies (nested too deep to walk) differ", 0.0 if same else None,
                          "" if same else truncated(live_body), "" if same else truncated(mirror_body))


def _root(path: ComparePath) -> str:
    return "$" if not path.steps else str(path) if path.text.startswith("$") else f"$.{path.text}"


def compare_values(live: Any, mirror: Any, tolerance: Tolerance = Tolerance(), where: str = "$") -> Comparison:
    """Compare two JSON values (as json.loads gives them)."""
    worst = [0.0]
    reason = _difference(live, mirror, tolerance, where, worst)
    if reason is None:
        return Comparison(True, deviation=worst[0])
    return Comparison(False, reason, worst[0] if reason.endswith("(outside tolerance)") else None,
                      truncated(live), truncated(mirror))


def _as_float(number: int | float) -> float:
    """A JSON integer beyond a float's range (1 followed by 400 zeros) is that infinity, not an OverflowError."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "list", str: "string", type(None): "null"}[type(value)]


def _difference(a: Any, b: Any, tolerance: Tolerance, where: str, worst: list[float]) -> str | None:
    """The first difference, with where it is; None when the values agree. Updates worst[0]."""
    kind_a, kind_b = _kind(a), _kind(b)
    if kind_a != kind_b:
        return f"{where}: shape: live {kind_a}, mirror {kind_b}"
    if kind_a == "number":
        a, b = _as_float(a), _as_float(b)
        worst[0] = max(worst[0], relative_difference(a, b))
        if tolerance.allows(a, b):
            return None
        return f"{where}: {a:g} vs {b:g} (outside tolerance)"
    if kind_a == "object":
        if a.keys() != b.keys():
            missing, extra = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
            return (f"{where}: keys differ" + (f"; mirror lacks {', '.join(missing)[:80]}" if missing else "")
                    + (f"; mirror adds {', '.join(extra)[:80]}" if extra else ""))
        first = None
        for key in a:
            found = _difference(a[key], b[key], tolerance, f"{where}.{key}", worst)
            first = first or found
        return first
    if kind_a == "list":
        if len(a) != len(b):
            return f"{where}: shape: live {len(a)} items, mirror {len(b)}"
        first = None
        for i, (x, y) in enumerate(zip(a, b)):
            found = _difference(x, y, tolerance, f"{where}[{i}]", worst)
            first = first or found
        return first
    if a != b:
        return f"{where}: {truncated(a)[:60]} vs {truncated(b)[:60]}"
    return None


# --- one number per answer, for comparing distributions ------------------------------------------------

def output_value(status: int, body: bytes, path: ComparePath) -> float | None:
    """The answer's numeric output at `path`: the number there, or the mean of the numbers under it
    (one value per request, so requests stay independent); None if there is none."""
    if status != 200:
        return None
    ok, document = _load(body)
    if not ok:
        return None
    found, part = path.find(document)
    if not found:
        return None
    numbers: list[float] = []
    try:
        _numbers(part, numbers)
    except RecursionError:  # nested deeper than Python recurses: no number to take from it
        return None
    numbers = [n for n in numbers if math.isfinite(n)]
    if not numbers:
        return None
    mean = sum(numbers) / len(numbers)
    # Finite numbers near the float limit (1e308, 1e308) overflow their sum, never their mean.
    return mean if math.isfinite(mean) else sum(n / len(numbers) for n in numbers)


def _numbers(value: Any, into: list[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        into.append(_as_float(value))
    elif isinstance(value, list):
        for item in value:
            _numbers(item, into)
    elif isinstance(value, dict):
        for item in value.values():
            _numbers(item, into)
