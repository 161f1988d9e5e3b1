"""Every policy of the pack, through the pack's own analyzer and configuration path.

A good stage is rendered once under mocks; each bad case changes the registered inputs (wire form,
as the engine hands them to policies: camelCase, floats) and runs the analyzer the way the engine
does (Configure, Analyze per resource, AnalyzeStack).
"""

from __future__ import annotations

import copy
import re

import pytest

from mlcanary.components.render import Registration, Render
from conftest import STAGE_FILES, render_config, stage_config
from mlcanary.check import _analyze, _configured_analyzer, policy_defaults
from mlcanary.policy_config import PolicyConfigError, policy_settings
from mlcanary.policies.azure_ml import ENDPOINT, POLICIES, TRAFFIC


@pytest.fixture(scope="module")
def canary_render() -> Render:
    """Stage 5: blue 90 / green 10, both deployed."""
    return render_config(stage_config(next(p for p in STAGE_FILES if p.name.startswith("stage-5"))))


def violations(render: Render, config: dict | None = None):
    analyzer = _configured_analyzer(policy_settings(config or {}, policy_defaults()))
    return _analyze("stage", render, analyzer)


def custom(render: Render, name: str) -> Registration:
    """The custom resource called `name` (the component shares the endpoint's name)."""
    return render.named(name, ENDPOINT) if name == EP else render.named(name)


def changed(render: Render, name: str, change) -> Render:
    copied = copy.deepcopy(render)
    change(custom(copied, name).inputs)
    return copied


def traffic(inputs, live=None, mirror=None):
    if live is not None:
        inputs["traffic"] = live
    if mirror is not None:
        inputs["mirror_traffic"] = mirror


def extra_deployment(render: Render, name: str, like: str = "fraud-scorer-blue") -> Render:
    copied = copy.deepcopy(render)
    original = copied.named(like)
    clone = copy.deepcopy(original)
    clone.name, clone.urn = f"fraud-scorer-{name}", original.urn.replace(original.name, f"fraud-scorer-{name}")
    clone.inputs["deploymentName"] = name
    copied.resources.append(clone)
    return copied


def many_deployments(render: Render, count: int) -> Render:
    for i in range(count - 2):
        render = extra_deployment(render, f"model-{i:02d}")
    return render


def kubernetes(render: Render, mirror: bool = True, via_endpoint: bool = True) -> Render:
    render = copy.deepcopy(render)
    if via_endpoint:
        custom(render, EP).inputs["properties"]["compute"] = "/subscriptions/s/k8s-compute"
    else:
        render.named("fraud-scorer-green").inputs["properties"]["endpointComputeType"] = "Kubernetes"
    if mirror:
        traffic(render.named("fraud-scorer-traffic").inputs, {"blue": 100.0, "green": 0.0}, {"green": 10.0})
    return render


T, EP, BLUE, GREEN = "fraud-scorer-traffic", "fraud-scorer", "fraud-scorer-blue", "fraud-scorer-green"

# name -> (make the bad render, policy config, policy expected, message regex)
BAD = {
    "traffic_sums_to_90": (
        lambda r: changed(r, T, lambda i: traffic(i, {"blue": 80.0, "green": 10.0})), {},
        "endpoint-traffic-valid",
        r"fraud-scorer-traffic \(EndpointTraffic\): traffic: live traffic must sum to 100 \(or 0 when nothing is live\), got 90",
    ),
    "traffic_sums_to_110": (
        lambda r: changed(r, T, lambda i: traffic(i, {"blue": 100.0, "green": 10.0})), {},
        "endpoint-traffic-valid", r"got 110 \(blue=100, green=10\)",
    ),
    "traffic_above_100": (
        lambda r: changed(r, T, lambda i: traffic(i, {"blue": 150.0, "green": -50.0})), {},
        "endpoint-traffic-valid", r"traffic\.blue: live traffic percent must be a whole number from 0 to 100, got 150",
    ),
    "traffic_negative": (
        lambda r: changed(r, T, lambda i: traffic(i, {"blue": 150.0, "green": -50.0})), {},
        "endpoint-traffic-valid", r"traffic\.green: live traffic percent must be a whole number from 0 to 100, got -50",
    ),
    "traffic_fraction": (
        lambda r: changed(r, T, lambda i: traffic(i, {"blue": 89.5, "green": 10.5})), {},
        "endpoint-traffic-valid", r"traffic\.blue: live traffic percent must be a whole number from 0 to 100, got 89\.5",
    ),
    "traffic_to_undeclared_deployment": (
        lambda r: changed(r, T, lambda i: traffic(i, {"blue": 90.0, "red": 10.0})), {},
        "endpoint-traffic-valid", r"traffic\.red: live traffic names unknown deployment 'red'; deployments: blue, green",
    ),
    "mirror_above_50": (
        lambda r: changed(r, T, lambda i: traffic(i, {"blue": 100.0, "green": 0.0}, {"green": 60.0})), {},
        "endpoint-traffic-valid", r"mirrorTraffic\.green: mirror traffic percent must be a whole number from 0 to 50, got 60",
    ),
    "mirror_above_configured_maximum": (
        lambda r: changed(r, T, lambda i: traffic(i, {"blue": 100.0, "green": 0.0}, {"green": 30.0})),
        {"endpoint-traffic-valid": {"maxMirrorPercent": 20}},
        "endpoint-traffic-valid", r"mirror traffic percent must be a whole number from 0 to 20, got 30",
    ),
    "mirror_on_two_deployments": (
        lambda r: changed(r, T, lambda i: (traffic(i, {"blue": 100.0}, {"green": 10.0, "red": 5.0}),
                                            i.update(deployments=["blue", "green", "red"]))), {},
        "endpoint-traffic-valid", r"mirror traffic may go to at most one deployment, got 2 \(green, red\)",
    ),
    "live_and_mirrored": (
        lambda r: changed(r, T, lambda i: traffic(i, None, {"green": 10.0})), {},
        "endpoint-traffic-valid", r"deployment 'green' has live traffic \(10%\) and mirror traffic \(10%\)",
    ),
    "raw_endpoint_traffic_sums_to_90": (
        lambda r: changed(r, EP, lambda i: i["properties"].update(traffic={"blue": 80.0, "green": 10.0})), {},
        "endpoint-traffic-valid", r"fraud-scorer \(OnlineEndpoint\): traffic: live traffic must sum to 100",
    ),
    "raw_endpoint_mirror_above_50": (
        lambda r: changed(r, EP, lambda i: i["properties"].update(traffic={"blue": 100.0}, mirrorTraffic={"green": 51.0})), {},
        "endpoint-traffic-valid", r"fraud-scorer \(OnlineEndpoint\): mirrorTraffic\.green: mirror traffic percent .* got 51",
    ),
    "endpoint_name_starts_with_digit": (
        lambda r: changed(r, EP, lambda i: i.update(endpointName="9fraud")), {},
        "names-valid", r"fraud-scorer \(OnlineEndpoint\): endpointName: '9fraud' is not a valid endpoint name",
    ),
    "endpoint_name_ends_with_hyphen": (
        lambda r: changed(r, EP, lambda i: i.update(endpointName="fraud-")), {},
        "names-valid", r"endpointName: 'fraud-' is not a valid endpoint name",
    ),
    "endpoint_name_too_long": (
        lambda r: changed(r, EP, lambda i: i.update(endpointName="e" * 33)), {},
        "names-valid", r"endpointName: 'e{33}' is not a valid endpoint name",
    ),
    "deployment_name_with_underscore": (
        lambda r: changed(r, BLUE, lambda i: i.update(deploymentName="blue_1")), {},
        "names-valid", r"fraud-scorer-blue \(OnlineDeployment\): deploymentName: 'blue_1' is not a valid deployment name",
    ),
    "deployment_name_too_short": (
        lambda r: changed(r, BLUE, lambda i: i.update(deploymentName="b")), {},
        "names-valid", r"deploymentName: 'b' is not a valid deployment name",
    ),
    "instance_count_zero": (
        lambda r: changed(r, BLUE, lambda i: i["sku"].update(capacity=0.0)), {},
        "instance-count-in-range", r"fraud-scorer-blue \(OnlineDeployment\): sku\.capacity: instance count must be a whole number from 1 to 50, got 0",
    ),
    "instance_count_above_50": (
        lambda r: changed(r, BLUE, lambda i: i["sku"].update(capacity=51.0)), {},
        "instance-count-in-range", r"from 1 to 50, got 51",
    ),
    "instance_count_fraction": (
        lambda r: changed(r, BLUE, lambda i: i["sku"].update(capacity=1.5)), {},
        "instance-count-in-range", r"from 1 to 50, got 1\.5",
    ),
    "instance_count_below_production_minimum": (
        lambda r: changed(r, GREEN, lambda i: i["sku"].update(capacity=1.0)),
        {"instance-count-in-range": {"minInstanceCount": 2}},
        "instance-count-in-range", r"fraud-scorer-green \(OnlineDeployment\): sku\.capacity: instance count must be a whole number from 2 to 50, got 1",
    ),
    "no_sku_counts_as_one_instance": (
        lambda r: changed(r, GREEN, lambda i: i.pop("sku")),
        {"instance-count-in-range": {"minInstanceCount": 3}},
        "instance-count-in-range", r"from 3 to 50, got 1",
    ),
    "request_timeout_181s": (
        lambda r: changed(r, BLUE, lambda i: i["properties"]["requestSettings"].update(requestTimeout="PT181S")), {},
        "request-timeout-limit", r"properties\.requestSettings\.requestTimeout: request timeout \(ms\) on a managed endpoint must be a whole number from 1 to 180000, got 181000",
    ),
    "request_timeout_in_minutes": (
        lambda r: changed(r, BLUE, lambda i: i["properties"]["requestSettings"].update(requestTimeout="PT3M1S")), {},
        "request-timeout-limit", r"got 181000",
    ),
    "request_timeout_not_iso": (
        lambda r: changed(r, BLUE, lambda i: i["properties"]["requestSettings"].update(requestTimeout="180s")), {},
        "request-timeout-limit", r"requestTimeout: must be an ISO-8601 duration such as PT90S, got '180s'",
    ),
    "request_timeout_above_configured_maximum": (
        lambda r: r, {"request-timeout-limit": {"maxRequestTimeoutMs": 4000}},
        "request-timeout-limit", r"fraud-scorer-blue .* from 1 to 4000, got 5000",
    ),
    "auth_mode_unknown": (
        lambda r: changed(r, EP, lambda i: i["properties"].update(authMode="Password")), {},
        "auth-mode-valid", r"fraud-scorer \(OnlineEndpoint\): properties\.authMode: auth mode must be one of Key, AMLToken, AADToken, got 'Password'",
    ),
    "auth_mode_missing": (
        lambda r: changed(r, EP, lambda i: i["properties"].pop("authMode")), {},
        "auth-mode-valid", r"auth mode must be one of Key, AMLToken, AADToken, got None",
    ),
    "auth_mode_not_allowed_by_config": (
        lambda r: r, {"auth-mode-valid": {"allowedAuthModes": ["aml_token", "aad_token"]}},
        "auth-mode-valid", r"auth mode must be one of AMLToken, AADToken, got 'Key'",
    ),
    "traffic_to_deployment_not_in_stack": (
        lambda r: changed(r, T, lambda i: (traffic(i, {"blue": 90.0, "red": 10.0}),
                                            i.update(deployments=["blue", "green", "red"]))), {},
        "traffic-targets-existing-deployments",
        r"fraud-scorer-traffic \(EndpointTraffic\): traffic\.red: live traffic names unknown deployment 'red'; deployments: blue, green",
    ),
    "mirror_to_deployment_not_in_stack": (
        lambda r: changed(r, T, lambda i: (traffic(i, {"blue": 100.0}, {"red": 10.0}),
                                            i.update(deployments=["blue", "green", "red"]))), {},
        "traffic-targets-existing-deployments", r"mirrorTraffic\.red: mirror traffic names unknown deployment 'red'",
    ),
    "raw_endpoint_traffic_to_deployment_not_in_stack": (
        lambda r: changed(r, EP, lambda i: i["properties"].update(traffic={"blue": 50.0, "red": 50.0})), {},
        "traffic-targets-existing-deployments", r"fraud-scorer \(OnlineEndpoint\): traffic\.red: live traffic names unknown deployment 'red'",
    ),
    "more_than_20_deployments": (
        lambda r: many_deployments(r, 21), {},
        "max-deployments-per-endpoint", r"endpoint fraud-scorer: deployments: an endpoint has at most 20 deployments, got 21",
    ),
    "more_deployments_than_configured": (
        lambda r: r, {"max-deployments-per-endpoint": {"maxDeployments": 1}},
        "max-deployments-per-endpoint", r"an endpoint has at most 1 deployments, got 2",
    ),
    "mirror_on_kubernetes_endpoint": (
        lambda r: kubernetes(r), {},
        "no-mirror-on-kubernetes", r"fraud-scorer-traffic \(EndpointTraffic\): mirrorTraffic: mirror traffic is not supported on Kubernetes online endpoints",
    ),
    "mirror_on_kubernetes_deployment": (
        lambda r: kubernetes(r, via_endpoint=False), {},
        "no-mirror-on-kubernetes", r"mirror traffic is not supported on Kubernetes",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_reported(case, canary_render):
    make, config, policy, message = BAD[case]
    found = [v for v in violations(make(canary_render), config) if v.policy == policy]
    assert found, f"{policy} reported nothing"
    assert any(re.search(message, v.message) for v in found), [v.message for v in found]
    assert all(v.enforcementLevel == "mandatory" for v in found)


def test_the_good_stage_passes_every_policy(canary_render):
    assert violations(canary_render) == []


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: p.stem)
def test_every_sample_stage_passes(path):
    assert violations(render_config(stage_config(path))) == []


def test_kubernetes_without_mirror_passes(canary_render):
    assert [v for v in violations(kubernetes(canary_render, mirror=False)) if v.policy == "no-mirror-on-kubernetes"] == []


def test_violation_names_the_resource_urn(canary_render):
    bad = changed(canary_render, BLUE, lambda i: i["sku"].update(capacity=0.0))
    (violation,) = violations(bad)
    assert violation.resource == canary_render.named(BLUE).urn
    assert violation.description.startswith("A deployment runs between minInstanceCount")


@pytest.mark.parametrize(
    "config, level",
    [
        ({"instance-count-in-range": "advisory"}, "advisory"),
        ({"instance-count-in-range": {"enforcementLevel": "advisory"}}, "advisory"),
        ({"all": "advisory"}, "advisory"),
        ({"all": "advisory", "instance-count-in-range": "mandatory"}, "mandatory"),
        ({"instance-count-in-range": "remediate"}, "mandatory"),  # the SDK reports remediate as mandatory
    ],
)
def test_enforcement_level_from_config(config, level, canary_render):
    bad = changed(canary_render, BLUE, lambda i: i["sku"].update(capacity=0.0))
    assert [v.enforcementLevel for v in violations(bad, config)] == [level]


def test_disabled_policy_reports_nothing(canary_render):
    bad = changed(canary_render, BLUE, lambda i: i["sku"].update(capacity=0.0))
    assert violations(bad, {"instance-count-in-range": "disabled"}) == []


def test_every_policy_has_name_description_level_and_knob_schema():
    for policy in POLICIES:
        assert re.fullmatch(r"[a-z][a-z0-9-]+", policy.name)
        assert len(policy.description) > 40
        assert policy.enforcement_level is not None
        for knob in (policy.config_schema.properties if policy.config_schema else {}).values():
            assert "default" in knob and "description" in knob


@pytest.mark.parametrize(
    "config, message",
    [
        ({"no-such-policy": "advisory"}, r"unknown policy 'no-such-policy'; policies: endpoint-traffic-valid"),
        ({"names-valid": "loud"}, r"names-valid: enforcement level must be one of advisory, mandatory, remediate, disabled, got 'loud'"),
        ({"instance-count-in-range": {"minInstanceCnt": 2}}, r"'minInstanceCnt' was unexpected\); allowed: enforcementLevel, minInstanceCount"),
        ({"instance-count-in-range": {"minInstanceCount": 0}}, r"instance-count-in-range\.minInstanceCount: 0 is less than the minimum of 1"),
        ({"endpoint-traffic-valid": {"maxMirrorPercent": 60}}, r"maxMirrorPercent: 60 is greater than the maximum of 50"),
        ({"auth-mode-valid": {"allowedAuthModes": ["password"]}}, r"allowedAuthModes\.0: 'password' is not one of"),
        ({"max-traffic-shift": {"maxShiftPercent": "half"}}, r"maxShiftPercent: 'half' is not of type 'integer'"),
        ({"names-valid": 3}, r"names-valid: must be an enforcement level .* or an object, got 3"),
    ],
)
def test_bad_policy_config_is_refused(config, message):
    with pytest.raises(PolicyConfigError, match=message):
        policy_settings(config, policy_defaults())


def test_traffic_policy_reads_the_traffic_resource_type():
    assert TRAFFIC == "pulumi-python:dynamic/azureml:EndpointTraffic"
    registered = render_config(stage_config(STAGE_FILES[0]))
    assert [r.type for r in registered.resources if isinstance(r, Registration) and r.type == TRAFFIC]
