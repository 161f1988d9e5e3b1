"""The endpoint's live and mirror traffic as a resource of its own (the ordering problem).

Traffic may only name deployments that exist, and deployments are children of the endpoint, so
the azure-native endpoint is created without traffic, the deployments next, and this resource -
which depends on every deployment - sets the traffic last. Because removed resources are deleted
by Pulumi only after all creates and updates, a stage that drops a deployment first updates this
resource (the dropped deployment leaves the map, i.e. goes to 0) and only then deletes it, which
is the order Azure demands. Destroying the stack deletes this resource before the deployments:
traffic goes to nothing first.

The provider talks to ARM with GET-modify-PUT on the endpoint, as `az ml online-endpoint update
--traffic` does (zero shares stripped and names lowercased by azure-ai-ml's own function, read-only
properties dropped by Azure's REST model of the endpoint), and confirms the result with the final
GET of ARM's long-running-operation protocol before reporting success. Deployment names are
case-insensitive in Azure and a 0 % share is no share, so comparisons ignore both.

Traffic is re-applied whenever the endpoint was written by anything but this resource (a PUT
without traffic may reset Azure's map): the trigger is the endpoint's `systemData.lastModifiedAt`,
and this resource remembers the value its own PUT left (`written_at`), so `up --refresh`, which
reads that value back into the endpoint resource, finds nothing to do. A refresh also reads Azure's
map, so traffic moved by anything else shows as a diff.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from mlcanary.components import rules

INPUT_KEYS = (
    "endpoint_id", "endpoint_name", "traffic", "mirror_traffic", "deployments", "endpoint_modified_at", "cloud",
)
TRAFFIC_KEYS = ("traffic", "mirror_traffic")


def _percentages(value: Any) -> dict[str, int]:
    """Traffic map with wire floats made ints, as Azure takes them."""
    return {name: int(percent) for name, percent in (value or {}).items()}


def _as_sent(value: Any) -> dict[str, int]:
    """A traffic map as `az ml` sends it and Azure keeps it: no zero shares, lowercase names."""
    from azure.ai.ml.operations._online_endpoint_operations import _strip_zeroes_from_traffic

    return _strip_zeroes_from_traffic(_percentages(value))


def put_body(endpoint: dict[str, Any], live: dict[str, int], mirror: dict[str, int]) -> dict[str, Any]:
    """The endpoint as Azure returned it, with the new traffic and without read-only properties."""
    from azure.ai.ml._restclient.arm_ml_service.models import OnlineEndpoint

    body = OnlineEndpoint(endpoint).as_dict(exclude_readonly=True)
    body["properties"] = {**body.get("properties", {}), "traffic": live, "mirrorTraffic": mirror}
    return body


class TrafficProvider(ResourceProvider):
    """Dynamic provider; it is pickled with dill, so it holds no clients: each method makes its own."""

    def __init__(self, poll_interval_s: float = 5.0):
        super().__init__()
        self.poll_interval_s = poll_interval_s

    def _client(self, props: dict[str, Any]):
        from mlcanary.components.arm import ArmClient

        return ArmClient(cloud=props.get("cloud"), poll_interval_s=self.poll_interval_s)

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        problems = rules.traffic_problems(
            news.get("traffic") or {}, news.get("mirror_traffic") or {}, news.get("deployments") or []
        )
        return CheckResult(news, [CheckFailure(p.field, p.message) for p in problems])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in INPUT_KEYS if key != "endpoint_modified_at"
                   and _comparable(key, olds.get(key)) != _comparable(key, news.get(key))]
        # The endpoint was written since this resource last looked, by someone else: re-apply.
        if news.get("endpoint_modified_at") not in (olds.get("endpoint_modified_at"), olds.get("written_at")):
            changed.append("endpoint_modified_at")
        return DiffResult(
            changes=bool(changed),
            replaces=["endpoint_id"] if "endpoint_id" in changed else [],
            stables=[],
            delete_before_replace=True,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        applied = self._apply(props, props.get("traffic"), props.get("mirror_traffic"))
        return CreateResult(id_=f"{props['endpoint_id']}/traffic", outs={**props, **applied})

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        applied = self._apply(news, news.get("traffic"), news.get("mirror_traffic"))
        return UpdateResult(outs={**news, **applied})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Nothing live, nothing mirrored; an endpoint already gone needs nothing."""
        client = self._client(props)
        if client.get(props["endpoint_id"]) is None:
            return
        self._apply(props, {}, {}, client)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: what Azure has now, so drift (someone moved traffic by hand) shows in a diff."""
        endpoint = self._client(props).get(props["endpoint_id"])
        if endpoint is None:
            return ReadResult(None, {})
        properties = endpoint.get("properties", {})
        return ReadResult(
            id_,
            {
                **props,
                "traffic": _percentages(properties.get("traffic")),
                "mirror_traffic": _percentages(properties.get("mirrorTraffic")),
            },
        )

    def _apply(self, props: dict[str, Any], traffic: Any, mirror: Any, client=None) -> dict[str, Any]:
        from mlcanary.components.arm import ArmError

        endpoint_id = props["endpoint_id"]
        client = client or self._client(props)
        want_live, want_mirror = _as_sent(traffic), _as_sent(mirror)
        endpoint = client.get(endpoint_id)
        if endpoint is None:
            raise ArmError(f"cannot set traffic: endpoint {endpoint_id} does not exist")
        written = client.put(endpoint_id, put_body(endpoint, want_live, want_mirror))
        result = written.get("properties", {})
        got_live, got_mirror = _as_sent(result.get("traffic")), _as_sent(result.get("mirrorTraffic"))
        if got_live != want_live or got_mirror != want_mirror:
            raise ArmError(
                f"Azure accepted the traffic update of {endpoint_id} but reports traffic {got_live} "
                f"and mirror {got_mirror} instead of {want_live} and {want_mirror}"
            )
        return {"traffic": _percentages(traffic), "mirror_traffic": _percentages(mirror),
                "written_at": (written.get("systemData") or {}).get("lastModifiedAt")}


def _comparable(key: str, value: Any) -> Any:
    """A value as it matters to Azure: traffic maps as sent, lists as sets, wire floats as ints."""
    if key in TRAFFIC_KEYS:
        return _as_sent(value)
    if isinstance(value, (list, tuple)):
        return sorted(str(v).lower() for v in value)
    return value


class EndpointTraffic(pulumi.dynamic.Resource, module="azureml", name="EndpointTraffic"):
    """Live and mirror traffic of one Azure ML online endpoint, set after its deployments exist."""

    endpoint_id: pulumi.Output[str]
    endpoint_name: pulumi.Output[str]
    traffic: pulumi.Output[dict]
    mirror_traffic: pulumi.Output[dict]
    deployments: pulumi.Output[list]

    def __init__(
        self,
        name: str,
        *,
        endpoint_id: pulumi.Input[str],
        endpoint_name: str,
        traffic: dict[str, int],
        mirror_traffic: dict[str, int],
        deployments: list[str],
        endpoint_modified_at: pulumi.Input[str | None],
        cloud: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(
            TrafficProvider(),
            name,
            {
                "endpoint_id": endpoint_id,
                "endpoint_name": endpoint_name,
                "traffic": traffic,
                "mirror_traffic": mirror_traffic,
                "deployments": deployments,
                "endpoint_modified_at": endpoint_modified_at,
                "cloud": cloud,
            },
            opts,
        )
