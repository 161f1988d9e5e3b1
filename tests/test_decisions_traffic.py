"""The traffic resource's decisions (issue 19): what counts as a change, what counts as applied, and
what a delete leaves behind, against the fake ARM of test_traffic_provider (Azure's rules)."""

from __future__ import annotations

import json

import pytest

from mlcanary.components.arm import ArmError
from mlcanary.components.traffic import TrafficProvider
from test_traffic_provider import ENDPOINT_ID, arm, props, response  # noqa: F401 - `arm` is a fixture

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




def test_a_new_endpoint_id_replaces_the_traffic_resource_after_deleting_the_old_one():
    provider, base = TrafficProvider(), props({"blue": 100})
    moved = provider.diff("id", base, {**base, "endpoint_id": base["endpoint_id"] + "-2"})
    assert (moved.changes, moved.replaces, moved.delete_before_replace) == (True, ["endpoint_id"], True)
    retraffic = provider.diff("id", base, props({"blue": 90, "green": 10}))
    assert (retraffic.changes, retraffic.replaces) == (True, [])
    assert provider.diff("id", base, {**base, "cloud": "AzureUSGovernment"}).changes


def test_check_without_traffic_maps_refuses_nothing_and_names_unknown_deployments():
    provider = TrafficProvider()
    assert provider.check({}, {"endpoint_id": "x", "deployments": ["blue"]}).failures == []
    failures = provider.check({}, {"traffic": {"red": 100}, "mirror_traffic": None, "deployments": None}).failures
    assert [(f.property, f.reason) for f in failures] == [
        ("traffic.red", "live traffic names unknown deployment 'red'; deployments: none")]


def test_a_refresh_reports_the_live_and_mirror_traffic_azure_has(arm):  # noqa: F811
    arm(["blue", "green"], traffic={"blue": 100}, mirror={"green": 20})
    outs = TrafficProvider().read("the-id", props({"blue": 100}))
    assert outs.id == "the-id"
    assert (outs.outs["traffic"], outs.outs["mirror_traffic"]) == ({"blue": 100}, {"green": 20})
    assert outs.outs["endpoint_name"] == "fraud-scorer"  # the rest of the inputs as they were


def test_create_and_update_report_what_they_set(arm):  # noqa: F811
    arm(["blue", "green"], traffic={})
    created = TrafficProvider().create(props({"blue": 90, "green": 10}, {}))
    assert created.id == f"{ENDPOINT_ID}/traffic" and created.outs["endpoint_id"] == ENDPOINT_ID
    assert (created.outs["traffic"], created.outs["mirror_traffic"]) == ({"blue": 90, "green": 10}, {})
    assert created.outs["deployments"] == ["blue", "green"]
    updated = TrafficProvider().update(created.id, created.outs, props({"blue": 100, "green": 0}, {"green": 10}))
    assert (updated.outs["traffic"], updated.outs["mirror_traffic"]) == ({"blue": 100, "green": 0}, {"green": 10})


def test_setting_traffic_on_an_endpoint_that_is_gone_is_an_error_naming_it(arm):  # noqa: F811
    fake = arm(["blue"], traffic={"blue": 100})
    fake.exists = False
    with pytest.raises(ArmError) as raised:
        TrafficProvider().update("id", props({"blue": 100}), props({"blue": 100}, deployments=["blue"]))
    assert str(raised.value) == f"cannot set traffic: endpoint {fake.endpoint['id']} does not exist"
    assert [m for m, _ in fake.paths()] == ["GET"]


def test_the_same_traffic_spelled_with_zero_shares_or_other_case_is_no_change():
    config = props({"Blue": 100, "green": 0}, {"green": 0})
    assert not TrafficProvider().diff("id", config, dict(config)).changes


def test_another_deployment_of_the_same_count_is_a_change():
    before = props({"blue": 100}, deployments=["blue", "green"])
    assert TrafficProvider().diff("id", before, props({"blue": 100}, deployments=["blue", "red"])).changes


def test_check_passes_the_inputs_on_unchanged():
    news = props({"blue": 100})
    assert TrafficProvider().check({}, news).inputs == news


def test_create_sets_the_mirror_too(arm):  # noqa: F811
    fake = arm(["blue", "green"], traffic={})
    created = TrafficProvider().create(props({"blue": 100, "green": 0}, {"green": 10}))
    assert fake.endpoint["properties"]["mirrorTraffic"] == {"green": 10} and created.outs["mirror_traffic"] == {"green": 10}


def test_a_refresh_of_an_endpoint_that_is_gone_deletes_the_resource_from_the_state(arm):  # noqa: F811
    fake = arm(["blue"], traffic={"blue": 100})
    fake.exists = False
    gone = TrafficProvider().read("id", props({"blue": 100}))
    assert (gone.id, gone.outs) == (None, {})


def test_a_refresh_of_an_endpoint_without_properties_reads_no_traffic(arm):  # noqa: F811
    fake = arm(["blue"], traffic={"blue": 100})
    del fake.endpoint["properties"]
    outs = TrafficProvider().read("id", props({"blue": 100})).outs
    assert (outs["traffic"], outs["mirror_traffic"]) == ({}, {})


def test_the_program_registers_the_traffic_resource_with_the_stages_maps_after_every_deployment(canary_config):
    """Stage 5 (blue 90 / green 10) rendered under Pulumi's mocks: what the engine receives."""
    from conftest import render_config

    config = {**canary_config}
    config["mlcanary:endpoint"] = {**config["mlcanary:endpoint"], "mirrorTraffic": {}}
    render = render_config(config)
    (traffic,) = render.of_type("pulumi-python:dynamic/azureml:EndpointTraffic")
    assert traffic.name == "fraud-scorer-traffic"
    inputs = traffic.inputs
    assert (inputs["endpoint_name"], inputs["traffic"], inputs["mirror_traffic"]) == (
        "fraud-scorer", {"blue": 90, "green": 10}, {})
    assert sorted(inputs["deployments"]) == ["blue", "green"] and inputs["cloud"] == "AzureCloud"
    deployments = [r for r in render.resources if r.type.endswith(":OnlineDeployment")]
    assert len(deployments) == 2 and {d.urn for d in deployments} <= set(traffic.dependencies)


def test_outputs_hold_the_inputs_with_the_maps_as_whole_numbers(arm):  # noqa: F811
    """The engine sends numbers as floats; the outputs hold the whole numbers Azure took, and no other keys."""
    arm(["blue", "green"], traffic={})
    sent = props({"blue": 90, "green": 10}, {})
    for result in (TrafficProvider().create(sent), TrafficProvider().update("id", sent, sent)):
        assert set(result.outs) == set(sent) | {"written_at"}
        assert [type(v) for v in result.outs["traffic"].values()] == [int, int]
