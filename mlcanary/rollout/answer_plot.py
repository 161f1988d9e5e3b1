"""The --plot panel of what the models answered: the share of mirrored pairs that agreed, per window
(mirror phase), and each deployment's output per window during live steps (median, 10-90 % band)."""

from __future__ import annotations

from typing import Any


def has_answers(judgements: list[dict[str, Any]]) -> bool:
    return any("answers" in e for e in judgements)


def draw_answers(axis, judgements: list[dict[str, Any]], start: float, colours: dict[str, str],
                 target: str, baseline: str) -> None:
    agreement_t, agreement = [], []
    outputs: dict[str, tuple[list, list, list, list]] = {}
    for e in judgements:
        answers = e.get("answers")
        if not answers:
            continue
        t = e["time"] - start
        if answers.get("compared"):
            agreement_t.append(t)
            agreement.append(answers["agreed"] / answers["compared"])
        for side, name in (("targetOutputs", target), ("baselineOutputs", baseline)):
            summary = answers.get(side)
            if summary:
                series = outputs.setdefault(name, ([], [], [], []))
                for values, key in zip(series, ("t", "p10", "p50", "p90")):
                    values.append(t if key == "t" else summary[key])
    axis.set_ylabel("output (median, 10-90 %)")
    for name, (times, low, median, high) in sorted(outputs.items()):
        colour = colours.get(name)
        axis.plot(times, median, marker=".", color=colour, label=f"{name} output")
        axis.fill_between(times, low, high, color=colour, alpha=0.2)
    if agreement:
        share = axis.twinx()
        share.plot(agreement_t, [100 * a for a in agreement], marker="x", linestyle="--", color="black",
                   label="mirrored pairs agreed %")
        share.set_ylabel("agreed % (mirror)")
        share.set_ylim(-5, 105)
        share.legend(loc="upper right", fontsize=7)
