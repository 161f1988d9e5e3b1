"""The router's choice of a mirror deployment (issue 19): a 0 % entry is no mirror, wherever it is
listed (a stage may keep `mirrorTraffic: {blue: 0, green: 10}`)."""

from __future__ import annotations

import pytest

from mlcanary.local_runtime.routing import Routing


@pytest.mark.parametrize("mirror", [{"blue": 0, "green": 10}, {"green": 10, "blue": 0}], ids=["zero_first", "zero_last"])
def test_a_zero_percent_mirror_entry_never_takes_the_mirror(mirror):
    routing = Routing({"blue": 100, "green": 0}, mirror)
    copies = [routing.mirror.take() for _ in range(100)]
    assert copies.count("green") == 10 and copies.count(None) == 90


def test_only_zero_percent_mirror_entries_mirror_nothing():
    routing = Routing({"blue": 100}, {"green": 0})
    assert [routing.mirror.take() for _ in range(100)] == [None] * 100


@pytest.mark.parametrize("percent", [1, 10, 33, 50])
def test_the_mirror_never_runs_ahead_of_its_share(percent):
    """After n un-pinned requests exactly floor(n * percent / 100) copies have gone out: none early."""
    routing = Routing({"blue": 100}, {"green": percent})
    copies = 0
    for n in range(1, 301):
        copies += routing.mirror.take() == "green"
        assert copies == n * percent // 100, f"after {n} requests"


def test_a_routing_holds_the_maps_it_was_made_from_and_splits_by_them():
    traffic, mirror = {"blue": 90, "green": 10, "dark": 0}, {"shadow": 20}
    routing = Routing(traffic, mirror)
    assert (routing.traffic, routing.mirror_traffic) == (traffic, mirror)  # what the endpoint's status reports
    picks = [routing.live.pick() for _ in range(100)]
    assert (picks.count("blue"), picks.count("green"), picks.count("dark")) == (90, 10, 0)
