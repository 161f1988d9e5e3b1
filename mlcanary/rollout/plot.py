"""`--plot FILE.png`: traffic share and error rate / latency per deployment over time, decisions marked."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from mlcanary.rollout.answer_plot import draw_answers, has_answers

DECISION_COLOURS = {"promoted": "tab:green", "baked": "tab:green", "finished": "tab:green", "held": "tab:orange",
                    "rolled-back": "tab:red", "halted": "tab:purple", "interrupted": "tab:gray"}


def _traffic_changes(events: list[dict[str, Any]], start: float) -> list[tuple[float, dict, dict]]:
    """(time, live, mirror) each time the traffic changed: steps applied, rollbacks, interruptions."""
    plan = next((e["plan"] for e in events if e["event"] == "plan"), {})
    by_label = {s["label"]: (s["traffic"], s["mirror"]) for s in plan.get("stages", [])}
    changes = []
    for e in events:
        t = e["time"] - start
        if e["event"] == "step":
            changes.append((t, e["traffic"], e["mirror"]))
        elif e["event"] == "decision" and e["decision"] in ("rolled-back", "halted"):
            changes.append((t, plan.get("rollback", {}), {}))
        elif e["event"] == "decision" and e["decision"] == "interrupted" and e["step"] in by_label:
            changes.append((t, *by_label[e["step"]]))
    return changes


def plot_record(events: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judgements = [e for e in events if e["event"] == "judgement"]
    start = events[0]["time"] if events else 0.0
    series: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for e in judgements:
        t = e["time"] - start
        for name in {*e["traffic"], *e["window"]}:
            s = series[name]
            s["t"].append(t)
            s["live"].append(e["traffic"].get(name, 0))
            s["mirror"].append(e["mirror"].get(name, 0))
            w = e["window"].get(name, {})
            s["error"].append(100 * w["errors"] / w["requests"] if w.get("requests") else None)
            s["p90"].append(w.get("p90Ms"))
    with_answers = has_answers(judgements)
    axes = plt.subplots(4 if with_answers else 3, 1, sharex=True, figsize=(10, 10.5 if with_answers else 8))[1]
    figure = axes[0].figure
    share, errors, latency = axes[:3]
    colours = {}
    changes = _traffic_changes(events, start)
    end = max([e["time"] - start for e in events] or [0.0])
    for name, s in sorted(series.items()):
        times = [t for t, _, _ in changes] + [end]
        live = [traffic.get(name, 0) for _, traffic, _ in changes]
        mirror = [m.get(name, 0) for _, _, m in changes]
        line = share.step(times, live + live[-1:], where="post", label=f"{name} live")[0] if changes else \
            share.plot([], [])[0]
        if any(mirror):
            share.step(times, mirror + mirror[-1:], where="post", linestyle="--", color=line.get_color(),
                       label=f"{name} mirror")
        colours[name] = line.get_color()
        errors.plot(s["t"], [v if v is not None else float("nan") for v in s["error"]], marker=".", label=name,
                    color=line.get_color())
        latency.plot(s["t"], [v if v is not None else float("nan") for v in s["p90"]], marker=".", label=name,
                     color=line.get_color())
    share.set_ylabel("traffic %")
    share.set_ylim(-5, 105)
    errors.set_ylabel("error rate % (per window)")
    latency.set_ylabel("p90 latency ms (per window)")
    axes[-1].set_xlabel("seconds since the rollout started")
    if with_answers:
        plan = next((e["plan"] for e in events if e["event"] == "plan"), {})
        draw_answers(axes[3], judgements, start, colours, plan.get("to", "target"), plan.get("from", "baseline"))
    for e in events:
        if e["event"] == "decision":
            colour = DECISION_COLOURS.get(e["decision"], "black")
            for axis in axes:
                axis.axvline(e["time"] - start, color=colour, linestyle=":", linewidth=1.2)
            share.annotate(f"{e['decision']} {e.get('step', '')}", (e["time"] - start, 102), rotation=90, fontsize=7,
                           color=colour, va="top", ha="right")
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="upper left", fontsize=7)
    share.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
