"""The traffic resource's decisions (issue 19): what counts as a change, what counts as applied, and
what a delete leaves behind, against the fake ARM of test_traffic_provider (Azure's rules)."""

from __future__ import annotations

import json

import pytest

from mlcanary.components.arm import ArmError
from mlcanary.components.traffic import TrafficProvider
from test_traffic_provider import arm, props, response  # noqa: F401 - `arm` is a fixture

__all__ = ["arm"]


def test_the_order_of_the_deployment_list_is_no_change():
    provider = TrafficProvider()
    before = props({"blue": 90, "green": 10}, deployments=["blue", "green"])
    after = props({"blue": 90, "green": 10}, deployments=["green", "Blue"])  # names are case-insensitive in Azure
    assert not provider.diff("id", before, after).changes
    assert provider.diff("id", before, props({"blue": 90, "green": 10}, deployments=["blue", "green", "red"])).changes


def test_a_mirror_azure_accepted_but_did_not_apply_is_an_error(arm, mocker):  # noqa: F811
    fake = arm(["blue", "green"], traffic={"blue": 100})
    original = fake.request

    def drop_the_mirror(method, url, **kwargs):
        if method == "PUT":
            body = json.loads(kwargs["data"])
            body["properties"]["mirrorTraffic"] = {}
            return original(method, url, **{**kwargs, "data": json.dumps(body)})
        return original(method, url, **kwargs)

    mocker.patch("requests.Session").return_value.request.side_effect = drop_the_mirror
    with pytest.raises(ArmError, match=r"reports traffic \{'blue': 100\} and mirror \{\} instead of "
                                       r"\{'blue': 100\} and \{'green': 10\}"):
        TrafficProvider().update("id", props({"blue": 100}), props({"blue": 100, "green": 0}, {"green": 10}))


def test_delete_turns_the_mirror_off_as_well(arm):  # noqa: F811
    fake = arm(["blue", "green"], traffic={"blue": 100}, mirror={"green": 10})
    TrafficProvider().delete("id", props({"blue": 100}, {"green": 10}))
    assert fake.endpoint["properties"]["traffic"] == {}
    assert fake.endpoint["properties"]["mirrorTraffic"] == {}
