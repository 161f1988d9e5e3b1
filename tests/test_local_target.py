"""The local target as Pulumi resources: rendered under mocks, and the providers against a real runtime."""

from __future__ import annotations

import base64

import dill
import pytest
from pulumi.dynamic.dynamic import serialize_provider

from mlcanary.components.local_target import LocalDeploymentProvider, LocalEndpointProvider, LocalTrafficProvider
from mlcanary.components.render import is_secret
from conftest import PROJECT_DIR, render_config, stage_config
from mlcanary.local_runtime.client import RuntimeClient, RuntimeRefusal
from mlcanary.local_runtime.pulumi_access import RuntimeAccess
from test_local_runtime import score, spec, stop_runtime

LOCAL_STAGES = sorted((PROJECT_DIR / "stacks" / "local").glob("stage-*.yaml"))
COMPONENT = "mlcanary:endpoint:OnlineEndpoint"
ENDPOINT = "pulumi-python:dynamic/local:LocalOnlineEndpoint"
DEPLOYMENT = "pulumi-python:dynamic/local:LocalOnlineDeployment"
TRAFFIC = "pulumi-python:dynamic/local:LocalEndpointTraffic"
RUNTIME = RuntimeAccess()  # what __main__.py gives the local-target resources


@pytest.mark.parametrize("path", LOCAL_STAGES, ids=lambda p: p.stem)
def test_local_stage_renders_the_same_tree_on_the_runtime(path):
    config = stage_config(path)
    render = render_config(config)
    (component,) = render.of_type(COMPONENT)
    children = [r for r in render.resources if r is not component]
    assert all(r.parent == component.urn for r in children)
    expected = config["mlcanary:endpoint"]
    (endpoint,) = render.of_type(ENDPOINT)
    deployments = {d.inputs["deploymentName"]: d for d in render.of_type(DEPLOYMENT)}
    (traffic,) = render.of_type(TRAFFIC)
    assert endpoint.inputs["endpointName"] == "fraud-scorer"
    assert set(deployments) == set(expected["deployments"])
    for deployment in deployments.values():
        assert endpoint.urn in deployment.dependencies
        assert deployment.inputs["spec"]["scoringScript"] == "score.py"
        assert deployment.inputs["spec"]["code"].endswith("samples/fraud-model/onlinescoring")
    assert set(traffic.dependencies) == {endpoint.urn, *(d.urn for d in deployments.values())}
    assert {k: int(v) for k, v in traffic.inputs["traffic"].items() if v} == {
        k: v for k, v in expected["traffic"].items() if v}
    assert is_secret(render.outputs["primaryKey"]) and is_secret(render.outputs["secondaryKey"])


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    client = RuntimeClient(tmp_path_factory.mktemp("pulumi-local"))
    yield client
    stop_runtime(client)


def test_providers_run_a_rollout_against_the_runtime(runtime):
    root = str(runtime.root)
    endpoint = LocalEndpointProvider(RUNTIME).create({"endpointName": "ep-pulumi", "authMode": "key", "stateDir": root})
    assert endpoint.id == "ep-pulumi" and endpoint.outs["scoringUri"].startswith("http://127.0.0.1:")
    target = {"uri": endpoint.outs["scoringUri"], "key": endpoint.outs["primaryKey"]}

    blue = {"endpointName": "ep-pulumi", "deploymentName": "blue", "spec": spec("blue"), "stateDir": root}
    green = {"endpointName": "ep-pulumi", "deploymentName": "green", "spec": spec("green"), "stateDir": root}
    assert LocalDeploymentProvider(RUNTIME).create(blue).outs["state"] == "ready"
    LocalDeploymentProvider(RUNTIME).create(green)
    traffic = {"endpoint_name": "ep-pulumi", "traffic": {"blue": 100.0, "green": 0.0}, "mirror_traffic": {},
               "deployments": ["blue", "green"], "stateDir": root}
    LocalTrafficProvider(RUNTIME).create(traffic)
    assert score(target).json()["name"] == "blue"

    switched = {**traffic, "traffic": {"blue": 0.0, "green": 100.0}}
    LocalTrafficProvider(RUNTIME).update("id", traffic, switched)
    assert score(target).json()["name"] == "green"

    with pytest.raises(RuntimeRefusal, match="still has 100% live"):
        LocalDeploymentProvider(RUNTIME).delete("id", green)  # Azure's rule, enforced by the runtime
    LocalDeploymentProvider(RUNTIME).delete("id", blue)
    LocalTrafficProvider(RUNTIME).delete("id", switched)  # traffic to nothing
    assert runtime.status()["endpoints"]["ep-pulumi"]["traffic"] == {}
    LocalDeploymentProvider(RUNTIME).delete("id", green)
    LocalEndpointProvider(RUNTIME).delete("id", {"endpointName": "ep-pulumi", "stateDir": root})
    assert "ep-pulumi" not in runtime.status()["endpoints"]
    LocalEndpointProvider(RUNTIME).delete("id", {"endpointName": "ep-pulumi", "stateDir": root})  # already gone: fine


def test_unchanged_inputs_are_no_change_whatever_the_outputs():
    """Outputs recorded in the old state (URI, keys, state) are None in new inputs: not a change."""
    endpoint = {"endpointName": "ep", "authMode": "key", "stateDir": "/s",
                "scoringUri": None, "primaryKey": None, "secondaryKey": None}
    recorded = {**endpoint, "scoringUri": "http://127.0.0.1:1/score", "primaryKey": "k", "secondaryKey": "k2"}
    assert not LocalEndpointProvider(RUNTIME).diff("id", recorded, endpoint).changes
    assert LocalEndpointProvider(RUNTIME).diff("id", recorded, {**endpoint, "authMode": "aml_token"}).changes
    deployment = {"endpointName": "ep", "deploymentName": "blue", "spec": {"instanceCount": 1}, "instanceCount": 1,
                  "stateDir": "/s", "state": None}
    assert not LocalDeploymentProvider(RUNTIME).diff("id", {**deployment, "state": "ready"}, deployment).changes
    traffic = {"endpoint_name": "ep", "traffic": {"blue": 100.0}, "mirror_traffic": {}, "deployments": ["blue"], "stateDir": "/s"}
    assert not LocalTrafficProvider(RUNTIME).diff("id", {**traffic, "__provider": "old"}, {**traffic, "__provider": "new"}).changes
    assert LocalTrafficProvider(RUNTIME).diff("id", traffic, {**traffic, "mirror_traffic": {"blue": 0.0}}).changes


def test_diff_replaces_only_on_identity():
    old = {"endpointName": "ep", "deploymentName": "blue", "spec": {"instanceCount": 1}, "stateDir": "/s"}
    scaled = LocalDeploymentProvider(RUNTIME).diff("id", old, {**old, "spec": {"instanceCount": 2}})
    assert scaled.changes and scaled.replaces == []
    renamed = LocalDeploymentProvider(RUNTIME).diff("id", old, {**old, "deploymentName": "green"})
    assert renamed.replaces == ["deploymentName"]


def test_providers_survive_the_dill_round_trip(runtime):
    """What Pulumi does to ship dynamic providers; each shipped provider then does real work."""
    ship = lambda provider: dill.loads(base64.b64decode(serialize_provider(provider)))  # noqa: E731
    # The runtime adapter travels by reference: the provider host imports it, components do not.
    assert b"mlcanary.local_runtime.pulumi_access" in base64.b64decode(serialize_provider(LocalEndpointProvider(RUNTIME)))
    root = str(runtime.root)
    ship(LocalEndpointProvider(RUNTIME)).create({"endpointName": "ep-dill", "authMode": "key", "stateDir": root})
    ship(LocalDeploymentProvider(RUNTIME)).create(
        {"endpointName": "ep-dill", "deploymentName": "only", "spec": spec("only"), "stateDir": root})
    ship(LocalTrafficProvider(RUNTIME)).create(
        {"endpoint_name": "ep-dill", "traffic": {"only": 100.0}, "mirror_traffic": {}, "deployments": ["only"], "stateDir": root})
    assert runtime.status()["endpoints"]["ep-dill"]["traffic"] == {"only": 100}
    runtime.delete_endpoint("ep-dill")


def test_probe_settings_arrive_as_wire_floats_and_are_accepted(runtime):
    root = str(runtime.root)
    LocalEndpointProvider(RUNTIME).create({"endpointName": "ep-probe", "authMode": "key", "stateDir": root})
    probed = {**spec("blue"), "instanceCount": 1.0,
              "readinessProbe": {"initialDelay": 0.0, "period": 2.0, "failureThreshold": 30.0}}
    created = LocalDeploymentProvider(RUNTIME).create(
        {"endpointName": "ep-probe", "deploymentName": "blue", "spec": probed, "stateDir": root})
    assert created.outs["state"] == "ready"
    assert runtime.status()["endpoints"]["ep-probe"]["deployments"]["blue"]["spec"]["readinessProbe"] == {
        "initialDelay": 0, "period": 2, "failureThreshold": 30}
    LocalEndpointProvider(RUNTIME).delete("id", {"endpointName": "ep-probe", "stateDir": root})


def test_a_process_can_render_stages_without_bound():
    """pulumi.dynamic's serialize_provider leaves a sorting wrapper around pickle's _batch_setitems on
    every dynamic resource (pulumi/dynamic/dynamic.py), each wrapping the last: a test worker that had
    rendered a few hundred stages failed every render with RecursionError. A render puts pickle back."""
    import pickle

    path = next(p for p in LOCAL_STAGES if p.stem.startswith("stage-5"))
    for _ in range(3):
        render_config(stage_config(path))
        setitems = pickle._Pickler._batch_setitems
        assert (setitems.__module__, setitems.__qualname__) == ("pickle", "_Pickler._batch_setitems")
