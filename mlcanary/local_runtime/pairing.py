"""What the models answer, per endpoint: mirrored pairs compared, and live outputs kept for distributions.

An endpoint compares answers once told what to compare (`PUT /endpoints/<e>/comparison`, which the
rollout sends when its judging starts). Then:

- every mirrored request pairs the live answer with the mirror's answer to the same body; the pair is
  compared (components/answer_compare.py) in the mirror's background task, after the live answer has
  gone to the client, so comparing never delays a live answer;
- every live (un-pinned) answer gives one number at the compare path, kept per deployment for the
  rollout's distribution test during live steps.

Memory is bounded and no payload is kept: counters and a deviation histogram per (live, mirror)
pair, the last MAX_SAMPLES disagreements per pair (compared values truncated, the request as a
hash), and the last MAX_OUTPUTS output numbers per endpoint. The rollout reads them with
`GET /endpoints/<e>/answers?since=N` (only what is newer than its last reading); Prometheus reads the
counters and the histogram in /metrics.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from mlcanary.components.answer_compare import Comparison, Settings, compare, output_value, request_hash

# Relative deviation of the compared numbers: from float round-off to "a different answer".
DEVIATION_BUCKETS = (1e-9, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
MAX_SAMPLES = 20  # disagreement samples kept per pair
MAX_OUTPUTS = 50_000  # output numbers kept per endpoint (about 1.6 MB): minutes of load between readings
# Statuses the router answers for a mirror copy the model never answered: shed under load, no healthy
# instance, timed out. Not a disagreement about answers (the error and latency judges see them).
ROUTER_STATUSES = {408: "timed out", 429: "shed: no free instance slot", 503: "no healthy instance"}
MAX_COMPARED_BYTES = 1024 * 1024  # larger answers are counted as not compared rather than walked in the loop


@dataclass
class PairCounts:
    compared: int = 0
    agreed: int = 0
    not_compared: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DEVIATION_BUCKETS) + 1))
    deviation_sum: float = 0.0
    samples: deque = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))

    def observe(self, comparison: Comparison) -> None:
        if comparison.agreed is None:
            self.not_compared += 1
            return
        self.compared += 1
        self.agreed += comparison.agreed
        if comparison.deviation is not None:
            index = next((i for i, b in enumerate(DEVIATION_BUCKETS) if comparison.deviation <= b), len(DEVIATION_BUCKETS))
            self.buckets[index] += 1
            if comparison.deviation != float("inf"):
                self.deviation_sum += comparison.deviation

    def as_json(self) -> dict[str, Any]:
        return {"compared": self.compared, "agreed": self.agreed, "notCompared": self.not_compared,
                "deviationBuckets": list(self.buckets)}


class Answers:
    """The answer book of every endpoint of one runtime (it lives next to the request metrics)."""

    def __init__(self) -> None:
        self.settings: dict[str, Settings] = {}
        self.pairs: dict[tuple[str, str, str], PairCounts] = defaultdict(PairCounts)  # (endpoint, live, mirror)
        self.outputs: dict[str, deque] = {}  # endpoint -> (seq, deployment, value)
        self.sequence = itertools.count(1)
        self.last_reason: dict[str, str] = {}  # endpoint -> why the last pair was not compared
        self.evicted_upto: dict[str, int] = {}  # endpoint -> sequence number of the newest output dropped

    # --- settings ---------------------------------------------------------------------------------

    def configure(self, endpoint: str, settings: Settings | None) -> None:
        """Start (or change) comparing on `endpoint`, or stop with None; counts so far are kept."""
        if settings is None:
            self.settings.pop(endpoint, None)
        else:
            self.settings[endpoint] = settings
            self.outputs.setdefault(endpoint, deque(maxlen=MAX_OUTPUTS))

    def settings_of(self, endpoint: str) -> Settings | None:
        return self.settings.get(endpoint)

    # --- the data plane's hooks -------------------------------------------------------------------

    async def pair(self, endpoint: str, live: str, mirror: str, live_answer: asyncio.Future,
                   mirror_status: int, mirror_body: bytes, request_body: bytes) -> None:
        """Wait for the live answer to the same request (never the other way round), then compare."""
        settings = self.settings.get(endpoint)
        answer = await live_answer
        if settings is None:
            return
        counts = self.pairs[(endpoint, live, mirror)]
        if answer is None:
            comparison = Comparison(None, "the live request ended without an answer")
        elif mirror_status in ROUTER_STATUSES:
            comparison = Comparison(None, f"the mirror copy got no answer from the model ({mirror_status}: "
                                          f"{ROUTER_STATUSES[mirror_status]})")
        elif len(answer[1]) > MAX_COMPARED_BYTES or len(mirror_body) > MAX_COMPARED_BYTES:
            comparison = Comparison(None, f"an answer is larger than {MAX_COMPARED_BYTES} bytes")
        else:
            comparison = compare(answer[0], answer[1], mirror_status, mirror_body, settings)
        counts.observe(comparison)
        if comparison.agreed is None:
            self.last_reason[endpoint] = comparison.reason
        elif not comparison.agreed:
            counts.samples.append({"seq": next(self.sequence), "live": live, "mirror": mirror,
                                   "request": request_hash(request_body), "reason": comparison.reason[:300],
                                   "liveValue": comparison.live_value, "mirrorValue": comparison.mirror_value})

    def observe_output(self, endpoint: str, deployment: str, status: int, body: bytes) -> None:
        settings = self.settings.get(endpoint)
        if settings is None or len(body) > MAX_COMPARED_BYTES:
            return
        value = output_value(status, body, settings.path)
        if value is not None:
            kept = self.outputs[endpoint]
            if len(kept) == kept.maxlen:
                self.evicted_upto[endpoint] = kept[0][0]
            kept.append((next(self.sequence), deployment, value))

    # --- reading ----------------------------------------------------------------------------------

    def snapshot(self, endpoint: str, since: int = 0) -> dict[str, Any]:
        """Cumulative pair counts, and the samples and output numbers newer than `since`."""
        settings = self.settings.get(endpoint)
        pairs = [{"live": live, "mirror": mirror, **counts.as_json()}
                 for (e, live, mirror), counts in sorted(self.pairs.items()) if e == endpoint]
        samples = sorted((s for (e, _, _), c in self.pairs.items() if e == endpoint for s in c.samples if s["seq"] > since),
                         key=lambda s: s["seq"])
        outputs = self.outputs.get(endpoint, ())
        values: dict[str, list[float]] = defaultdict(list)
        newest = since
        for seq, deployment, value in outputs:
            if seq > since:
                values[deployment].append(value)
                newest = max(newest, seq)
        newest = max([newest, *(s["seq"] for s in samples)])
        return {
            "settings": settings.as_json() if settings else None,
            "pairs": pairs,
            "samples": samples,
            "outputs": dict(values),
            # outputs between `since` and the oldest one kept were dropped (the reader came too late)
            "outputsLost": self.evicted_upto.get(endpoint, 0) > since,
            "next": newest,
            "lastNotCompared": self.last_reason.get(endpoint),
        }

    def forget(self, endpoint: str, deployment: str | None = None) -> None:
        for key in [k for k in self.pairs if k[0] == endpoint and deployment in (None, k[1], k[2])]:
            del self.pairs[key]
        if deployment is None:
            self.settings.pop(endpoint, None)
            self.outputs.pop(endpoint, None)
            self.last_reason.pop(endpoint, None)
            self.evicted_upto.pop(endpoint, None)

    def prometheus(self, label) -> list[str]:
        lines: list[str] = []
        for name, help_text, attribute in (
            ("mlcanary_answers_compared_total", "Mirrored requests whose two answers were compared.", "compared"),
            ("mlcanary_answers_agreed_total", "Compared mirrored requests whose answers agreed.", "agreed"),
            ("mlcanary_answers_not_compared_total", "Mirrored requests not compared (live answer failed, "
                                                   "or lacks the compare path).", "not_compared"),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for (endpoint, live, mirror), counts in sorted(self.pairs.items()):
                lines.append(f'{name}{{{_labels(label, endpoint, live, mirror)}}} {getattr(counts, attribute)}')
        lines += ["# HELP mlcanary_answer_deviation Largest relative difference of the compared numbers of a pair.",
                  "# TYPE mlcanary_answer_deviation histogram"]
        for (endpoint, live, mirror), counts in sorted(self.pairs.items()):
            labels = _labels(label, endpoint, live, mirror)
            cumulative = 0
            for bound, count in zip([*map(str, DEVIATION_BUCKETS), "+Inf"], counts.buckets):
                cumulative += count
                lines.append(f'mlcanary_answer_deviation_bucket{{{labels},le="{bound}"}} {cumulative}')
            lines.append(f"mlcanary_answer_deviation_sum{{{labels}}} {counts.deviation_sum:.9g}")
            lines.append(f"mlcanary_answer_deviation_count{{{labels}}} {cumulative}")
        return lines


def _labels(label, endpoint: str, live: str, mirror: str) -> str:
    """`deployment` is the mirror (the one whose answers are judged), as in every mlcanary_* series;
    `live` the deployment that answered the client."""
    return f'endpoint="{label(endpoint)}",deployment="{label(mirror)}",live="{label(live)}"'
