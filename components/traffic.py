"""The endpoint's live and mirror traffic as a resource of its own (the ordering problem).

Traffic may only name deployments that exist, and deployments are children of the endpoint, so
the azure-native endpoint is created without traffic, the deployments next, and this resource -
which depends on every deployment - sets the traffic last. Because removed resources are deleted
by Pulumi only after all creates and updates, a stage that drops a deployment first updates this
resource (the dropped deployment leaves the map, i.e. goes to 0) and only then deletes it, which
is the order Azure demands. Destroying the stack deletes this resource before the deployments:
traffic goes to nothing first.

The provider talks to ARM with GET-modify-PUT on the endpoint, as `az ml online-endpoint update
--traffic` does, and confirms the result with a final GET before reporting success.
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

INPUT_KEYS = ("endpoint_id", "endpoint_name", "traffic", "mirror_traffic", "deployments", "endpoint_revision")
# Read-only properties Azure returns on GET that have no place in a PUT body.
_READ_ONLY = ("provisioningState", "scoringUri", "swaggerUri")


def _percentages(value: Any) -> dict[str, int]:
    """Traffic map with wire floats made ints, as Azure takes them."""
    return {name: int(percent) for name, percent in (value or {}).items()}


class TrafficProvider(ResourceProvider):
    """Dynamic provider; it is pickled with dill, so it holds no clients: each method makes its own."""

    def __init__(self, poll_interval_s: float = 5.0):
        super().__init__()
        self.poll_interval_s = poll_interval_s

    def _client(self):
        from mlcanary.components.arm import ArmClient

        return ArmClient(poll_interval_s=self.poll_interval_s)

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        problems = rules.traffic_problems(
            news.get("traffic") or {}, news.get("mirror_traffic") or {}, news.get("deployments") or []
        )
        return CheckResult(news, [CheckFailure(p.field, p.message) for p in problems])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in INPUT_KEYS if _comparable(olds.get(key)) != _comparable(news.get(key))]
        return DiffResult(
            changes=bool(changed),
            replaces=["endpoint_id"] if "endpoint_id" in changed else [],
            stables=[],
            delete_before_replace=True,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        applied = self._apply(props["endpoint_id"], props.get("traffic"), props.get("mirror_traffic"))
        return CreateResult(id_=f"{props['endpoint_id']}/traffic", outs={**props, **applied})

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        applied = self._apply(news["endpoint_id"], news.get("traffic"), news.get("mirror_traffic"))
        return UpdateResult(outs={**news, **applied})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Nothing live, nothing mirrored; an endpoint already gone needs nothing."""
        client = self._client()
        if client.get(props["endpoint_id"]) is None:
            return
        self._apply(props["endpoint_id"], {}, {}, client)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: what Azure has now, so drift (someone moved traffic by hand) shows in a diff."""
        endpoint = self._client().get(props["endpoint_id"])
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

    def _apply(self, endpoint_id: str, traffic: Any, mirror: Any, client=None) -> dict[str, Any]:
        from mlcanary.components.arm import ArmError

        client = client or self._client()
        want_live, want_mirror = _percentages(traffic), _percentages(mirror)
        endpoint = client.get(endpoint_id)
        if endpoint is None:
            raise ArmError(f"cannot set traffic: endpoint {endpoint_id} does not exist")
        properties = {
            k: v for k, v in endpoint.get("properties", {}).items() if k not in _READ_ONLY
        }
        properties["traffic"] = want_live
        properties["mirrorTraffic"] = want_mirror
        body = {k: v for k, v in endpoint.items() if k not in ("systemData", "properties")}
        body["properties"] = properties
        result = client.put(endpoint_id, body).get("properties", {})
        got_live = _nonzero(_percentages(result.get("traffic")))
        got_mirror = _nonzero(_percentages(result.get("mirrorTraffic")))
        if got_live != _nonzero(want_live) or got_mirror != _nonzero(want_mirror):
            raise ArmError(
                f"Azure accepted the traffic update of {endpoint_id} but reports traffic {got_live} "
                f"and mirror {got_mirror} instead of {_nonzero(want_live)} and {_nonzero(want_mirror)}"
            )
        return {"traffic": want_live, "mirror_traffic": want_mirror}


def _nonzero(percentages: dict[str, int]) -> dict[str, int]:
    """Azure may leave or drop 0 % entries; only the non-zero shares mean anything."""
    return {k: v for k, v in percentages.items() if v}


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return sorted(_comparable(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
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
        endpoint_revision: str,
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
                "endpoint_revision": endpoint_revision,
            },
            opts,
        )
