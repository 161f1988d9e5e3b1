"""`--plot`: what a reader of the picture relies on, checked on the figure the PNG is made from."""

from __future__ import annotations

import stat

import pytest
from matplotlib.colors import to_hex

from mlcanary.rollout.plan import load_plan, plan_json
from mlcanary.rollout.plot import draw, plot_record
from test_rollout_runner import STAGE_3, World, fail_reads_while, run


def record(world: World, **flags) -> tuple[str, list[dict]]:
    outcome, events = run(world, **flags)
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, **flags})
    return outcome.decision, [{"time": 0.0, "event": "plan", "plan": plan_json(plan)}, *events]


BASELINE_BLUE, TARGET_ORANGE = "#1f77b4", "#ff7f0e"


def legend(axis) -> list[str]:
    return [text.get_text() for text in axis.get_legend().get_texts()]


@pytest.fixture
def fifty_fifty():
    return record(World(), steps=[50, 100])[1]


def test_the_traffic_panel_stacks_live_shares_so_they_sum_to_100_and_names_each_role(fifty_fifty):
    figure = draw(fifty_fifty, "t")
    share = figure.axes[0]
    assert legend(share) == ["blue (baseline) live %", "green (target) live %"]
    baseline, target = share.collections[:2]  # fill_between bands, baseline first, target stacked on it
    tops = target.get_paths()[0].vertices[:, 1]
    assert max(tops) == pytest.approx(100)  # at 50/50 the target is drawn on top of the baseline, not hidden
    # the baseline in matplotlib's blue, the target in its orange: told apart at a glance
    assert to_hex(baseline.get_facecolor()[0]) == BASELINE_BLUE
    assert to_hex(target.get_facecolor()[0]) == TARGET_ORANGE


def test_colours_follow_roles_not_names():
    """Rolling out blue from green: blue wears the target's colour (before, colours followed names)."""
    plan = load_plan(STAGE_3, {"to": "blue", "from": "green", "steps": [100]})
    events = [{"time": 0.0, "event": "plan", "plan": plan_json(plan)},
              {"time": 0.0, "event": "step", "index": 0, "label": "100 %", "traffic": {"green": 0, "blue": 100}, "mirror": {}},
              {"time": 1.0, "event": "judgement", "traffic": {}, "mirror": {}, "window": {
                  "blue": {"requests": 10, "errors": 0}, "green": {"requests": 0, "errors": 0}}}]
    figure = draw(events, "t")
    volume = figure.axes[1]
    colours = {line.get_label(): to_hex(line.get_color()) for line in volume.get_lines()}
    assert colours["blue (target) via the split"] == TARGET_ORANGE
    assert colours["green (baseline) via the split"] == BASELINE_BLUE


def test_the_error_axis_starts_at_0_and_each_closed_window_is_one_point(fifty_fifty):
    figure = draw(fifty_fifty, "t")
    errors = figure.axes[2]
    assert errors.get_ylim()[0] == 0 and errors.get_ylim()[1] >= 1
    windows = [e for e in fifty_fifty if e["event"] == "judgement" and "green" in e["window"]]
    (green,) = [line for line in errors.get_lines() if line.get_label() == "green (target)"]
    assert len(green.get_xdata()) == len(windows)


def test_a_mirror_phase_shows_the_mirror_share_and_the_mirrored_requests():
    _, events = record(World(), steps=[50, 100], mirror=20, mirrorFor="2s")
    figure = draw(events, "t")
    assert "green (target) mirror % (copies)" in legend(figure.axes[0])
    (mirrored,) = [line for line in figure.axes[1].get_lines() if line.get_label() == "green (target) mirrored"]
    assert max(mirrored.get_ydata()) > 0


def test_a_halted_run_marks_its_windows_without_data_and_lists_every_decision(tmp_path):
    world = World()
    died = []
    fail_reads_while(world, lambda: died or (world.traffic.get("green") == 50 and world.now > 3 and died.append(1)))
    decision, events = record(world, steps=[10, 50, 100], maxHold=1)
    assert decision == "halted"
    figure = draw(events, "t")
    assert "window without data" in legend(figure.axes[1])
    listing = figure.texts[-1].get_text().splitlines()
    assert [line.split()[-2:] for line in listing] == [["10", "%"], ["50", "%"]]
    assert "promoted" in listing[0] and "halted" in listing[1]
    path = tmp_path / "halted.png"
    plot_record(events, path, "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
