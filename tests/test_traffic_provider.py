"""The traffic provider against a fake ARM behind azure-core's own requests transport (the HTTP
session and azure-identity mocked): the exact Azure calls. The fake validates every PUT body
against Azure's REST models, as ARM would."""

from __future__ import annotations

import base64
import json
import time
from unittest.mock import MagicMock

import dill
import pytest
import requests
from urllib.parse import parse_qs, urlsplit
from azure.ai.ml._restclient.arm_ml_service import models as rest
from azure.core.credentials import AccessToken
from pulumi.dynamic.dynamic import serialize_provider

from azure_rest import rest_problems
from mlcanary.components.arm import ArmClient, ArmError
from mlcanary.components.traffic import TrafficProvider

ARM_ENDPOINT = "https://management.azure.com"

ENDPOINT_ID = (
    "/subscriptions/sub/resourceGroups/ml-prod-rg/providers/Microsoft.MachineLearningServices"
    "/workspaces/ml-prod-ws/onlineEndpoints/fraud-scorer"
)
OPERATION = f"{ARM_ENDPOINT}/subscriptions/sub/providers/Microsoft.MachineLearningServices/locations/westus2/mfeOperationsStatus/op-1"
TOKEN = "secret-arm-token-value"


def response(status: int, body=None, headers=None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = json.dumps(body).encode() if body is not None else b""
    r.headers.update({"Content-Type": "application/json", **(headers or {})})
    r.raw = MagicMock()
    r._content_consumed = True  # a body already read, as requests has it after a non-streamed call
    return r


class FakeArm:
    """Azure's rules for endpoint traffic as ARM enforces them, and a log of every request."""

    def __init__(self, deployments, traffic, mirror=None, operation_status="Succeeded", host=ARM_ENDPOINT):
        self.deployments = set(deployments)
        self.endpoint = {
            "id": ENDPOINT_ID,
            "name": "fraud-scorer",
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "location": "westus2",
            "identity": {"type": "SystemAssigned"},
            "tags": {"team": "risk"},
            "systemData": {"createdBy": "someone"},
            "properties": {
                "authMode": "Key",
                "traffic": dict(traffic),
                "mirrorTraffic": dict(mirror or {}),
                "provisioningState": "Succeeded",
                "scoringUri": "https://fraud-scorer.westus2.inference.ml.azure.com/score",
                "swaggerUri": "https://fraud-scorer.westus2.inference.ml.azure.com/swagger.json",
            },
        }
        self.exists = True
        self.host = host
        self.operation = OPERATION.replace(ARM_ENDPOINT, host)
        self.throttle: list[requests.Response] = []  # answers given before the real one (429, 409, ...)
        self.operation_status = operation_status
        self.calls: list[tuple[str, str, dict | None]] = []
        self.tokens_seen: set[str] = set()
        self.api_versions: set[str | None] = set()

    def request(self, method, url, headers=None, data=None, **_kwargs):
        self.tokens_seen.add(headers["Authorization"])
        assert url.startswith(self.host), url
        if url.split("?")[0] != self.operation:  # the poll URL is Azure's own, api-version and all
            self.api_versions.add(parse_qs(urlsplit(url).query).get("api-version", [None])[0])
        path = url.removeprefix(self.host).split("?")[0]
        body = json.loads(data) if data else None
        self.calls.append((method, path, body))
        if self.throttle:
            return self.throttle.pop(0)
        if url.split("?")[0] == self.operation:
            return response(200, {"status": self.operation_status, "error": {"code": "InternalError", "message": "boom"}})
        if path == ENDPOINT_ID and method == "GET":
            return response(200, self.endpoint) if self.exists else response(404, {"error": {"code": "NotFound"}})
        if path == ENDPOINT_ID and method == "PUT":
            problems = rest_problems(rest.OnlineEndpoint, body)
            if problems:
                return response(400, {"error": {"code": "BadRequest", "message": "; ".join(problems)}})
            live = body["properties"].get("traffic", {})
            unknown = sorted((set(live) | set(body["properties"].get("mirrorTraffic", {}))) - self.deployments)
            if unknown:
                return response(400, {"error": {"code": "BadRequest", "message": f"Deployment(s) {unknown} not found"}})
            if self.operation_status == "Succeeded":
                self.endpoint["properties"].update(traffic=dict(live), mirrorTraffic=dict(body["properties"]["mirrorTraffic"]))
                self.touch()
            return response(201, body, {"Azure-AsyncOperation": self.operation})
        if path.startswith(f"{ENDPOINT_ID}/deployments/") and method == "DELETE":
            name = path.rsplit("/", 1)[1]
            share = self.endpoint["properties"]["traffic"].get(name, 0)
            if share:
                return response(400, {"error": {"code": "BadRequest", "message": f"{name} has {share}% traffic"}})
            self.deployments.discard(name)
            return response(200)
        raise AssertionError(f"unexpected Azure call {method} {url}")

    def touch(self) -> None:
        """A write: ARM sets `systemData.lastModifiedAt` (ARM common-types `systemData`)."""
        self.writes = getattr(self, "writes", 0) + 1
        self.endpoint["systemData"] = {**self.endpoint["systemData"], "lastModifiedAt": f"2026-11-30T10:{self.writes:02d}:00Z"}

    def paths(self):
        return [(method, path) for method, path, _ in self.calls]


class FakeCredential:
    def get_token(self, *scopes, **_kwargs):
        self.scopes = scopes
        return AccessToken(TOKEN, int(time.time()) + 3600)


@pytest.fixture
def arm(mocker):
    """Install a FakeArm behind requests.Session (azure-core's transport) and a fake credential."""

    def install(*args, **kwargs):
        fake = FakeArm(*args, **kwargs)
        fake.credential = FakeCredential()
        mocker.patch("mlcanary.components.arm.azure_credential", return_value=fake.credential)
        session = mocker.patch("requests.Session").return_value
        session.request.side_effect = fake.request
        return fake

    return install


def props(traffic, mirror=None, deployments=("blue", "green")):
    return {
        "endpoint_id": ENDPOINT_ID,
        "endpoint_name": "fraud-scorer",
        "traffic": {k: float(v) for k, v in traffic.items()},  # the engine sends floats
        "mirror_traffic": {k: float(v) for k, v in (mirror or {}).items()},
        "deployments": list(deployments),
        "endpoint_modified_at": "2026-01-01T00:00:00Z",
        "cloud": "AzureCloud",
    }


def test_create_reads_puts_waits_and_confirms(arm):
    fake = arm(["blue"], traffic={})
    result = TrafficProvider().create(props({"blue": 100}, deployments=["blue"]))
    assert fake.paths() == [
        ("GET", ENDPOINT_ID),
        ("PUT", ENDPOINT_ID),
        ("GET", OPERATION.removeprefix(ARM_ENDPOINT)),
        ("GET", ENDPOINT_ID),
    ]
    put_body = fake.calls[1][2]
    assert put_body["properties"] == {"authMode": "Key", "traffic": {"blue": 100}, "mirrorTraffic": {}}
    assert put_body["identity"] == {"type": "SystemAssigned"} and put_body["tags"] == {"team": "risk"}
    # Read-only properties are not echoed back (Azure's REST model decides which they are).
    assert {"id", "name", "type", "systemData"}.isdisjoint(put_body)
    assert put_body["location"] == "westus2"
    assert result.id == f"{ENDPOINT_ID}/traffic"
    assert result.outs["traffic"] == {"blue": 100}
    assert fake.tokens_seen == {f"Bearer {TOKEN}"}


def test_update_sets_mirror(arm):
    fake = arm(["blue", "green"], traffic={"blue": 100, "green": 0})
    old, new = props({"blue": 100, "green": 0}), props({"blue": 100, "green": 0}, {"green": 10})
    result = TrafficProvider().update("id", old, new)
    assert fake.calls[1][2]["properties"]["traffic"] == {"blue": 100}  # as az ml sends it: no 0 % shares
    assert fake.calls[1][2]["properties"]["mirrorTraffic"] == {"green": 10}
    assert fake.endpoint["properties"]["mirrorTraffic"] == {"green": 10}
    assert result.outs["mirror_traffic"] == {"green": 10}


def test_removed_deployment_goes_to_zero_before_it_is_deleted(arm):
    """Stage 5 (blue 90) straight to stage 7 (blue gone): Pulumi updates traffic, then deletes blue."""
    fake = arm(["blue", "green"], traffic={"blue": 90, "green": 10})
    delete_blue = f"{ENDPOINT_ID}/deployments/blue"
    # Azure refuses to delete a deployment that still has live traffic:
    assert fake.request("DELETE", ARM_ENDPOINT + delete_blue, headers={"Authorization": "x"}).status_code == 400
    fake.calls.clear()

    TrafficProvider().update("id", props({"blue": 90, "green": 10}), props({"green": 100}, deployments=["green"]))
    # ...what the engine then does for the resource that left the program (azure-native's delete):
    deleted = fake.request("DELETE", ARM_ENDPOINT + delete_blue, headers={"Authorization": "x"})

    assert [m for m, _ in fake.paths()] == ["GET", "PUT", "GET", "GET", "DELETE"]
    assert fake.calls[1][2]["properties"]["traffic"] == {"green": 100}
    assert deleted.status_code == 200 and fake.deployments == {"green"}


def test_delete_takes_all_traffic_away(arm):
    fake = arm(["green"], traffic={"green": 100})
    TrafficProvider().delete("id", props({"green": 100}, deployments=["green"]))
    assert fake.paths()[:2] == [("GET", ENDPOINT_ID), ("GET", ENDPOINT_ID)]
    assert fake.calls[2][0] == "PUT"
    assert fake.calls[2][2]["properties"]["traffic"] == {}
    assert fake.calls[2][2]["properties"]["mirrorTraffic"] == {}
    assert fake.endpoint["properties"]["traffic"] == {}


def test_delete_when_the_endpoint_is_already_gone_calls_nothing_else(arm):
    fake = arm(["green"], traffic={"green": 100})
    fake.exists = False
    TrafficProvider().delete("id", props({"green": 100}, deployments=["green"]))
    assert fake.paths() == [("GET", ENDPOINT_ID)]


def test_azure_refusal_is_a_clear_error_and_nothing_is_reported_applied(arm):
    fake = arm(["blue"], traffic={"blue": 100})
    with pytest.raises(ArmError) as raised:
        TrafficProvider().update("id", props({"blue": 100}, deployments=["blue"]),
                                 props({"blue": 90, "green": 10}, deployments=["blue"]))
    message = str(raised.value)
    assert message == (
        f"Azure rejected PUT {ENDPOINT_ID} (HTTP 400): BadRequest: Deployment(s) ['green'] not found"
    )
    assert TOKEN not in message
    assert fake.endpoint["properties"]["traffic"] == {"blue": 100}
    assert [m for m, _ in fake.paths()] == ["GET", "PUT"]


def test_failed_long_running_operation_is_an_error(arm):
    fake = arm(["blue", "green"], traffic={"blue": 100}, operation_status="Failed")
    with pytest.raises(ArmError, match=r"PUT .*fraud-scorer ended Failed: .*boom"):
        TrafficProvider().update("id", props({"blue": 100}), props({"blue": 90, "green": 10}))
    assert fake.endpoint["properties"]["traffic"] == {"blue": 100}


def test_accepted_but_not_applied_is_an_error(arm, mocker):
    fake = arm(["blue", "green"], traffic={"blue": 100})
    original = fake.request

    def ignore_traffic(method, url, **kwargs):
        if method == "PUT":
            return response(200, json.loads(kwargs["data"]))  # accepted, but Azure's state does not change
        return original(method, url, **kwargs)

    mocker.patch("requests.Session").return_value.request.side_effect = ignore_traffic
    with pytest.raises(ArmError, match=r"reports traffic \{'blue': 100\} .* instead of \{'blue': 90, 'green': 10\}"):
        TrafficProvider().update("id", props({"blue": 100}), props({"blue": 90, "green": 10}))


def test_check_refuses_bad_traffic_before_any_call(arm):
    fake = arm(["blue", "green"], traffic={"blue": 100})
    result = TrafficProvider().check({}, props({"blue": 80, "green": 10}, {"green": 60}))
    assert [(f.property, f.reason) for f in result.failures] == [
        ("traffic", "live traffic must sum to 100 (or 0 when nothing is live), got 90 (blue=80, green=10)"),
        ("mirrorTraffic.green", "mirror traffic percent must be a whole number from 0 to 50, got 60"),
    ]
    assert fake.calls == []


def test_diff():
    provider, base = TrafficProvider(), props({"blue": 100})
    assert not provider.diff("id", base, props({"blue": 100})).changes
    assert provider.diff("id", base, props({"blue": 90, "green": 10})).changes
    assert provider.diff("id", base, {**base, "endpoint_modified_at": "2026-01-02T00:00:00Z"}).changes
    moved = provider.diff("id", base, {**base, "endpoint_id": ENDPOINT_ID + "2"})
    assert moved.changes and moved.replaces == ["endpoint_id"]


def test_read_reports_drift(arm):
    fake = arm(["blue", "green"], traffic={"blue": 50, "green": 50})
    result = TrafficProvider().read("id", props({"blue": 90, "green": 10}))
    assert result.outs["traffic"] == {"blue": 50, "green": 50}
    fake.exists = False
    assert TrafficProvider().read("id", props({"blue": 90, "green": 10})).id is None


def test_provider_survives_the_dill_round_trip(arm):
    """What Pulumi does to ship a dynamic provider: dill-serialize in the program, load in the host."""
    shipped = dill.loads(base64.b64decode(serialize_provider(TrafficProvider(poll_interval_s=0.5))))
    assert isinstance(shipped, TrafficProvider) and shipped.poll_interval_s == 0.5
    fake = arm(["blue"], traffic={})
    assert shipped.create(props({"blue": 100}, deployments=["blue"])).outs["traffic"] == {"blue": 100}
    assert fake.endpoint["properties"]["traffic"] == {"blue": 100}


def test_zero_shares_are_stripped_and_names_lowercased_as_az_ml_does(arm):
    fake = arm(["blue", "green"], traffic={"blue": 100})
    TrafficProvider().update("id", props({"blue": 100}), props({"Blue": 90, "green": 10, "red": 0}))
    assert fake.calls[1][2]["properties"]["traffic"] == {"blue": 90, "green": 10}


def test_a_refresh_shows_no_diff_for_zero_shares_or_case(arm):
    """Azure keeps lowercase names and drops 0 % shares; the config may spell them otherwise."""
    arm(["blue", "green"], traffic={"blue": 100})
    config = props({"Blue": 100, "green": 0})
    refreshed = TrafficProvider().read("id", config).outs
    assert not TrafficProvider().diff("id", refreshed, config).changes


def test_drift_shows_as_a_diff_after_refresh(arm):
    arm(["blue", "green"], traffic={"blue": 50, "green": 50})
    config = props({"blue": 90, "green": 10})
    refreshed = TrafficProvider().read("id", config).outs
    assert TrafficProvider().diff("id", refreshed, config).changes


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_answers_are_retried_honouring_retry_after(arm, status):
    fake = arm(["blue"], traffic={})
    fake.throttle = [response(status, {"error": {"code": "Busy", "message": "try again"}}, {"Retry-After": "0"})]
    TrafficProvider().create(props({"blue": 100}, deployments=["blue"]))
    assert [m for m, _ in fake.paths()][:2] == ["GET", "GET"]  # the first GET, answered status, then again
    assert fake.endpoint["properties"]["traffic"] == {"blue": 100}


def test_a_body_without_location_is_refused_by_the_fake_arm(arm):
    """The fake judges bodies with Azure's REST models, so a missing location fails a test."""
    fake = arm(["blue"], traffic={})
    body = {k: v for k, v in fake.endpoint.items() if k != "location"}
    answer = fake.request("PUT", f"{ARM_ENDPOINT}{ENDPOINT_ID}", headers={"Authorization": "x"}, data=json.dumps(body))
    assert answer.status_code == 400 and "body.location: required" in answer.json()["error"]["message"]


def test_sovereign_cloud_uses_its_own_arm_host_and_token_scope(arm):
    host = "https://management.usgovcloudapi.net"
    fake = arm(["blue"], traffic={}, host=host)
    TrafficProvider().create({**props({"blue": 100}, deployments=["blue"]), "cloud": "AzureUSGovernment"})
    assert fake.endpoint["properties"]["traffic"] == {"blue": 100}
    assert fake.credential.scopes == (f"{host}/.default",)
    assert ArmClient(cloud="AzureChinaCloud").endpoint == "https://management.chinacloudapi.cn"


def test_traffic_calls_use_the_api_version_of_azure_native_and_azure_ai_ml(arm):
    """Finding 12: the traffic client spoke 2024-04-01 while the endpoint resource (azure-native 3.x),
    azure-ai-ml's REST client and the body model it builds are 2025-12-01 (REST spec
    Microsoft.MachineLearningServices stable/2025-12-01). One api-version for every endpoint call."""
    import inspect

    from azure.ai.ml._restclient.arm_ml_service._configuration import MachineLearningServicesMgmtClientConfiguration
    from pulumi_azure_native.machinelearningservices import OnlineEndpoint

    fake = arm(["blue", "green"], {"blue": 100})
    TrafficProvider(poll_interval_s=0).create(props({"blue": 90, "green": 10}))
    ai_ml = MachineLearningServicesMgmtClientConfiguration(credential=FakeCredential(), subscription_id="sub").api_version
    assert "Uses Azure REST API version 2025-12-01" in inspect.getsource(OnlineEndpoint)  # azure-native 3.x
    assert fake.api_versions == {ai_ml} == {"2025-12-01"}


def test_the_traffic_resources_own_write_does_not_trigger_it_again(arm):
    """Finding 7: the trigger was the endpoint's lastModifiedAt, which the traffic PUT itself moves, so
    every `up --refresh` saw a change and re-applied traffic (an endpoint LRO each run). The value its
    own PUT left is remembered; only a write by someone else triggers it."""
    fake = arm(["blue", "green"], {"blue": 100})
    provider = TrafficProvider(poll_interval_s=0)
    config = props({"blue": 90, "green": 10})
    outs = provider.create(config).outs
    after_own_write = fake.endpoint["systemData"]["lastModifiedAt"]
    assert outs["written_at"] == after_own_write and after_own_write != config["endpoint_modified_at"]
    refreshed = provider.read("id", outs).outs
    # `up --refresh`: azure-native's endpoint resource now reports Azure's lastModifiedAt - our own write
    assert not provider.diff("id", refreshed, {**config, "endpoint_modified_at": after_own_write}).changes
    assert not provider.diff("id", refreshed, config).changes  # `up` without refresh
    fake.touch()  # the endpoint written by someone else (azure-native, a hand edit): traffic may be reset
    written_elsewhere = fake.endpoint["systemData"]["lastModifiedAt"]
    assert provider.diff("id", refreshed, {**config, "endpoint_modified_at": written_elsewhere}).changes
