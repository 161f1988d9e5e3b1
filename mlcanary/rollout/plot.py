"""`--plot FILE.png`: a rollout's record as a picture.

Four panels over time, one point per closed window: live traffic (stacked, so it sums to 100 at every
instant) with the target's mirror share; requests per window (the split's, mirrored copies and
header-pinned requests apart); error rate (from 0); p90 latency. Colours follow roles, not names: the
baseline and the target look the same in every plot. Decisions are numbered on the time axis and
listed under the panels, so their labels never overlap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlcanary.rollout.answer_plot import draw_answers, has_answers

ROLE_COLOURS = {"baseline": "#1f77b4", "target": "#ff7f0e", "other": "#7f7f7f"}
DECISION_COLOURS = {"promoted": "#2ca02c", "baked": "#2ca02c", "finished": "#2ca02c", "held": "#bcbd22",
                    "rolled-back": "#d62728", "halted": "#9467bd", "interrupted": "#7f7f7f", "unconfirmed": "#9467bd"}
NOT_PLOTTED = ("held",)  # a held interval is shown by its windows; the list keeps the decisions that change things


def _roles(plan: dict[str, Any], names: set[str]) -> dict[str, str]:
    roles = {name: "other" for name in names}
    if plan.get("from"):
        roles[plan["from"]] = "baseline"
    if plan.get("to"):
        roles[plan["to"]] = "target"
    return roles


def _traffic_timeline(events: list[dict[str, Any]], plan: dict[str, Any], start: float) -> list[tuple[float, dict, dict]]:
    """(time, live, mirror) from the first applied stage on, each time the traffic changed."""
    by_label = {s["label"]: (s["traffic"], s["mirror"]) for s in plan.get("stages", [])}
    changes = []
    for e in events:
        t = e["time"] - start
        if e["event"] == "step":
            changes.append((t, e["traffic"], e["mirror"]))
        elif e["event"] == "decision" and e["decision"] in ("rolled-back", "halted") and not e.get("rollbackError"):
            changes.append((t, plan.get("rollback", {}), {}))
        elif e["event"] == "decision" and e["decision"] == "interrupted" and e.get("step") in by_label:
            changes.append((t, *by_label[e["step"]]))
    if changes and changes[0][0] > 0:  # what ran when the rollout started: its first recorded state
        changes[0] = (0.0, *changes[0][1:])
    return changes


def plot_record(events: list[dict[str, Any]], path: Path, title: str) -> None:
    """Draw the record into the PNG `path`, written 0600 (a plot names the endpoint and its traffic)."""
    import matplotlib.pyplot as plt

    figure = draw(events, title)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as out:
            figure.savefig(out, dpi=100, format="png")
    finally:
        plt.close(figure)


def draw(events: list[dict[str, Any]], title: str):
    """The figure of a record: panels traffic, requests, error rate, latency (in that order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not events:
        raise ValueError("the record holds no events")
    plan = next((e["plan"] for e in events if e["event"] == "plan"), {})
    start = events[0]["time"]
    last = max(e["time"] - start for e in events)
    end = last + max(0.5, 0.05 * last)  # room to show what the last decision left live
    judgements = [e for e in events if e["event"] == "judgement"]
    changes = _traffic_timeline(events, plan, start)
    names = {n for _, live, mirror in changes for n in (*live, *mirror)} | {n for e in judgements for n in e["window"]}
    roles = _roles(plan, names)
    order = sorted(names, key=lambda n: (["baseline", "target", "other"].index(roles[n]), n))
    colour = {n: ROLE_COLOURS[roles[n]] for n in order}
    label = {n: f"{n} ({roles[n]})" if roles[n] != "other" else n for n in order}

    with_answers = has_answers(judgements)  # a fifth panel: what the models answered (answer_plot.py)
    figure, axes = plt.subplots(5 if with_answers else 4, 1, sharex=True, figsize=(10, 12.5 if with_answers else 10),
                                gridspec_kw={"height_ratios": [1.2, 1, 1, 1, 1][:5 if with_answers else 4]})
    share, volume, errors, latency = axes[:4]
    _draw_traffic(share, changes, order, colour, label, plan.get("to"), end)
    _draw_windows(volume, errors, latency, judgements, start, order, colour, label, plan.get("to"))
    if with_answers:
        draw_answers(axes[4], judgements, start, colour, plan.get("to", "target"), plan.get("from", "baseline"))
    decisions = [e for e in events if e["event"] == "decision" and e["decision"] not in NOT_PLOTTED]
    listed = _draw_decisions(tuple(axes), decisions, start, end)
    share.set_title(title, fontsize=11)
    axes[-1].set_xlabel("seconds since the rollout started")
    axes[-1].set_xlim(0, end)
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.text(0.01, 0.005, "\n".join(listed) or "no decision recorded", fontsize=8, va="bottom", family="monospace")
    figure.tight_layout(rect=(0, 0.02 + 0.018 * len(listed), 1, 1))
    return figure


def _draw_traffic(axis, changes, order, colour, label, target, end) -> None:
    """Live shares stacked (they sum to 100 at every instant) and the target's mirror share."""
    if changes:
        times = [t for t, _, _ in changes] + [end]
        bottom = [0.0] * len(times)
        for name in order:
            values = [live.get(name, 0) for _, live, _ in changes]
            values.append(values[-1])
            top = [b + v for b, v in zip(bottom, values)]
            if any(values):
                axis.fill_between(times, bottom, top, step="post", color=colour[name], alpha=0.55,
                                  label=f"{label[name]} live %", linewidth=0)
            bottom = top
        mirror = [m.get(target, 0) for _, _, m in changes] if target else []
        if any(mirror):
            axis.step(times, [*mirror, mirror[-1]], where="post", color=colour[target], linestyle="--", linewidth=2,
                      label=f"{label[target]} mirror % (copies)")
    axis.set_ylabel("traffic %")
    axis.set_ylim(0, 105)


def _draw_windows(volume, errors, latency, judgements, start, order, colour, label, target) -> None:
    """One point per closed window; windows without data are marked as gaps."""
    times_all = [e["time"] - start for e in judgements]
    gaps = [(times_all[i - 1] if i else 0.0, t) for i, (e, t) in enumerate(zip(judgements, times_all)) if e.get("noData")]
    highest_latency = 0.0
    highest_error = 0.0
    for name in order:
        points = [(e["time"] - start, e["window"][name]) for e in judgements if name in e["window"]]
        if not points:
            continue
        times = [t for t, _ in points]
        live = [w["requests"] for _, w in points]
        volume.plot(times, live, marker=".", color=colour[name], label=f"{label[name]} via the split")
        mirrored = [w.get("mirrored", {}).get("requests", 0) for _, w in points]
        if any(mirrored):
            volume.plot(times, mirrored, marker="x", linestyle="--", color=colour[name], label=f"{label[name]} mirrored")
        pinned = [w.get("pinned", {}).get("requests", 0) for _, w in points]
        if any(pinned):
            volume.plot(times, pinned, marker="+", linestyle=":", color=colour[name],
                        label=f"{label[name]} header-pinned (not judged)")
        rate = []
        for _, w in points:
            judged = w["requests"] + (w.get("mirrored", {}).get("requests", 0) if name == target else 0)
            failed = w["errors"] + (w.get("mirrored", {}).get("errors", 0) if name == target else 0)
            rate.append(100 * failed / judged if judged else float("nan"))
        highest_error = max([highest_error, *(r for r in rate if r == r)])
        errors.plot(times, rate, marker=".", color=colour[name], label=label[name])
        p90 = [w.get("p90Ms") if w.get("p90Ms") is not None else float("nan") for _, w in points]
        highest_latency = max([highest_latency, *(v for v in p90 if v == v)])
        latency.plot(times, p90, marker=".", color=colour[name], label=label[name])
    for axis in (volume, errors, latency):
        for begin, finish in gaps:
            axis.axvspan(begin, finish, color="#d62728", alpha=0.1, linewidth=0)
    if gaps:
        volume.plot([], [], color="#d62728", alpha=0.3, linewidth=6, label="window without data")
    volume.set_ylabel("requests per window")
    volume.set_ylim(bottom=0)
    errors.set_ylabel("error rate % per window")
    errors.set_ylim(0, max(1.0, highest_error * 1.15))
    latency.set_ylabel("p90 latency ms per window")
    latency.set_ylim(0, max(1.0, highest_latency * 1.15))


def _draw_decisions(axes, decisions, start, end) -> list[str]:
    """Numbered markers on every panel; the labels go in a list under the figure (they never overlap)."""
    listed = []
    close = end * 0.03
    previous, level = None, 0
    for number, e in enumerate(decisions, start=1):
        t = e["time"] - start
        colour = DECISION_COLOURS.get(e["decision"], "black")
        for axis in axes:
            axis.axvline(t, color=colour, linestyle=":", linewidth=1.2)
        level = (level + 1) % 3 if previous is not None and t - previous < close else 0
        axes[0].annotate(str(number), (t, 100 - 9 * level), fontsize=8, color="white", ha="center", va="center",
                         bbox={"boxstyle": "circle,pad=0.2", "facecolor": colour, "edgecolor": "none"})
        previous = t
        listed.append(f"{number:>2}  {t:7.1f} s  {e['decision']} {e.get('step', '')}")
    return listed
