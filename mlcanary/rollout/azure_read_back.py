"""What runs on Azure, read from ARM, to compare with what a rollout step set (steering.py): a traffic
change made with `az ml online-endpoint update --traffic` or the portal is caught at the next read.

The REST shapes (Microsoft.MachineLearningServices 2024-04-01, azure-rest-api-specs
`mfe.json`): GET `.../onlineEndpoints/{name}` has `properties.traffic` and `properties.mirrorTraffic`
(deployment name -> percent); GET `.../onlineEndpoints/{name}/deployments` lists the deployments in
`value`, each with `name` and `sku.capacity` (its instance count). Names are compared case-insensitively
(Azure's are), zero shares are left out (`az ml` strips them before the PUT). ARM reads are rate
limited per subscription, so this reads at most once every EVERY_S seconds and repeats the last answer
in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

EVERY_S = 15.0


def endpoint_resource_id(subscription: str, resource_group: str, workspace: str, endpoint: str) -> str:
    return (f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{workspace}/onlineEndpoints/{endpoint}")


def _shares(value: Any) -> dict[str, int]:
    return {str(name).lower(): int(share) for name, share in (value or {}).items() if share}


class AzureReadBack:
    def __init__(self, arm: Any, endpoint_id: str, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.arm, self.endpoint_id, self.every_s, self.clock = arm, endpoint_id, every_s, clock
        self._last: tuple[float, dict[str, Any] | None] | None = None

    def invalidate(self) -> None:
        """A step was applied: the next read goes to ARM."""
        self._last = None

    def read_back(self, _endpoint: str) -> dict[str, Any] | None:
        now = self.clock()
        if self._last is not None and now - self._last[0] < self.every_s:
            return self._last[1]
        endpoint = self.arm.get(self.endpoint_id)
        if endpoint is None:
            running = None
        else:
            properties = endpoint.get("properties") or {}
            listed = self.arm.get(f"{self.endpoint_id}/deployments") or {}
            running = {
                "traffic": _shares(properties.get("traffic")),
                "mirror": _shares(properties.get("mirrorTraffic")),
                "deployments": {str(d["name"]).lower(): {"instanceCount": (d.get("sku") or {}).get("capacity")}
                                for d in listed.get("value") or [] if d.get("name")},
            }
        self._last = (now, running)
        return running
