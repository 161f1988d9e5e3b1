"""ISO-8601 durations as Azure ML takes them (PT5S, PT0.5S, PT1M30S), to and from seconds."""

from __future__ import annotations

import math
import re

# ASCII: \d alone takes any Unicode digit ("PT１０S"); \Z: $ lets a trailing newline through.
_DURATION = re.compile(r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?\Z", re.ASCII)


def iso_seconds(seconds: float) -> str:
    """90 -> PT90S, 0.5 -> PT0.5S."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"PT{text}S"


def parse_iso_seconds(text: str) -> float | None:
    """PT1M30S -> 90.0; None when `text` is not a day/time ISO-8601 duration."""
    match = _DURATION.match(text) if isinstance(text, str) and text not in ("P", "PT") else None
    if not match or text.endswith("T"):
        return None
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    seconds = parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    return seconds if math.isfinite(seconds) else None  # 400 digits of seconds is no duration
