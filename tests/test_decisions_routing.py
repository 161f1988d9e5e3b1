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
