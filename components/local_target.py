"""The local target as Pulumi resources: endpoint, deployments and traffic in the local runtime.

Same shape and order as on Azure (endpoint, then deployments, then traffic depending on every
deployment), so `pulumi up -s local` runs the stages on a machine with the Pulumi CLI and no Azure.
The providers talk to the runtime's control plane (starting the runtime when needed) through the
LocalRuntime they are given; they hold no client, since Pulumi ships them to its provider host with dill.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult


class LocalRuntime(Protocol):
    """What these resources need of the local runtime. The runtime provides it
    (mlcanary.local_runtime.pulumi_access.RuntimeAccess): components/ imports nothing above it."""

    def default_state_dir(self) -> str:
        """The state directory of a program that names none."""

    def client(self, state_dir: str) -> Any:
        """The runtime's control plane for `state_dir` (started when needed): put_endpoint, keys,
        status, delete_endpoint, put_deployment, delete_deployment, set_traffic."""

    def already_gone(self, delete: Callable[[], object]) -> bool:
        """Run a delete; True if there was nothing to delete (which is fine for a delete)."""


def _diff(olds: dict, news: dict, inputs: tuple[str, ...], replace_on: tuple[str, ...]) -> DiffResult:
    """Compare inputs only: outputs (scoring URI, keys, state) are absent from new inputs by nature."""
    changed = [k for k in inputs if olds.get(k) != news.get(k)]
    return DiffResult(changes=bool(changed), replaces=[k for k in changed if k in replace_on], delete_before_replace=True)


class _RuntimeProvider(ResourceProvider):
    def __init__(self, runtime: LocalRuntime):
        super().__init__()
        self.runtime = runtime

    def _client(self, props: dict[str, Any]):
        return self.runtime.client(props["stateDir"])


class LocalEndpointProvider(_RuntimeProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["endpointName"], outs=self._put(props))

    def update(self, _id: str, _olds: dict, news: dict) -> UpdateResult:
        return UpdateResult(outs=self._put(news))

    def diff(self, _id: str, olds: dict, news: dict) -> DiffResult:
        return _diff(olds, news, ("endpointName", "authMode", "stateDir"), ("endpointName", "stateDir"))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        self.runtime.already_gone(lambda: self._client(props).delete_endpoint(props["endpointName"]))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        endpoints = self._client(props).status(start=True)["endpoints"]
        return ReadResult(id_, props) if id_ in endpoints else ReadResult(None, {})

    def _put(self, props: dict[str, Any]) -> dict[str, Any]:
        client = self._client(props)
        status = client.put_endpoint(props["endpointName"], props["authMode"])
        keys = client.keys(props["endpointName"])
        return {**props, "scoringUri": status["scoringUri"],
                "primaryKey": keys["primaryKey"], "secondaryKey": keys["secondaryKey"]}


class LocalDeploymentProvider(_RuntimeProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['endpointName']}/{props['deploymentName']}", outs=self._put(props))

    def update(self, _id: str, _olds: dict, news: dict) -> UpdateResult:
        return UpdateResult(outs=self._put(news))

    def diff(self, _id: str, olds: dict, news: dict) -> DiffResult:
        return _diff(olds, news, ("endpointName", "deploymentName", "spec", "stateDir"),
                     ("endpointName", "deploymentName", "stateDir"))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        self.runtime.already_gone(lambda: self._client(props).delete_deployment(props["endpointName"], props["deploymentName"]))

    def _put(self, props: dict[str, Any]) -> dict[str, Any]:
        spec = {**props["spec"], "instanceCount": int(props["spec"]["instanceCount"])}
        for key in ("requestTimeoutMs", "maxConcurrentRequestsPerInstance", "maxQueueWaitMs"):
            if key in spec:
                spec[key] = int(spec[key])
        if spec.get("readinessProbe"):  # numbers arrive as floats on the wire
            spec["readinessProbe"] = {k: int(v) for k, v in spec["readinessProbe"].items()}
        status = self._client(props).put_deployment(props["endpointName"], props["deploymentName"], spec)
        return {**props, "state": status["state"]}


class LocalTrafficProvider(_RuntimeProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        self._set(props, props.get("traffic"), props.get("mirror_traffic"))
        return CreateResult(id_=f"{props['endpoint_name']}/traffic", outs=props)

    def update(self, _id: str, _olds: dict, news: dict) -> UpdateResult:
        self._set(news, news.get("traffic"), news.get("mirror_traffic"))
        return UpdateResult(outs=news)

    def diff(self, _id: str, olds: dict, news: dict) -> DiffResult:
        return _diff(olds, news, ("endpoint_name", "traffic", "mirror_traffic", "deployments", "stateDir"),
                     ("endpoint_name", "stateDir"))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        self.runtime.already_gone(lambda: self._set(props, {}, {}))

    def _set(self, props: dict[str, Any], traffic: Any, mirror: Any) -> None:
        as_ints = lambda shares: {k: int(v) for k, v in (shares or {}).items()}  # noqa: E731 - wire floats
        self._client(props).set_traffic(props["endpoint_name"], as_ints(traffic), as_ints(mirror))


class LocalOnlineEndpoint(pulumi.dynamic.Resource, module="local", name="LocalOnlineEndpoint"):
    scoringUri: pulumi.Output[str]  # noqa: N815 - output names as the provider returns them
    primaryKey: pulumi.Output[str]  # noqa: N815
    secondaryKey: pulumi.Output[str]  # noqa: N815

    def __init__(self, name: str, *, runtime: LocalRuntime, endpoint_name: str, auth_mode: str, state_dir: str,
                 opts=None):
        super().__init__(
            LocalEndpointProvider(runtime), name,
            {"endpointName": endpoint_name, "authMode": auth_mode, "stateDir": state_dir,
             "scoringUri": None, "primaryKey": None, "secondaryKey": None},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["primaryKey", "secondaryKey"])),
        )


class LocalOnlineDeployment(pulumi.dynamic.Resource, module="local", name="LocalOnlineDeployment"):
    def __init__(self, name: str, *, runtime: LocalRuntime, endpoint_name: str, deployment_name: str, spec: dict,
                 state_dir: str, opts=None):
        super().__init__(
            LocalDeploymentProvider(runtime), name,
            {"endpointName": endpoint_name, "deploymentName": deployment_name, "spec": spec,
             "instanceCount": spec["instanceCount"], "stateDir": state_dir, "state": None},
            opts,
        )


class LocalEndpointTraffic(pulumi.dynamic.Resource, module="local", name="LocalEndpointTraffic"):
    traffic: pulumi.Output[dict]
    mirror_traffic: pulumi.Output[dict]

    def __init__(self, name: str, *, runtime: LocalRuntime, endpoint_name: str, traffic: dict,
                 mirror_traffic: dict, deployments: list[str], state_dir: str, opts=None):
        super().__init__(
            LocalTrafficProvider(runtime), name,
            {"endpoint_name": endpoint_name, "traffic": traffic, "mirror_traffic": mirror_traffic,
             "deployments": deployments, "stateDir": state_dir},
            opts,
        )

