"""The endpoints of a state directory as they are now, for the gate, --preview and rehearsal checks.

From the runtime's status when it runs; otherwise from its state file, which is exactly what the
runtime restores on its next start (so a stopped runtime is judged by what it will bring back).
Reading never starts a runtime.
"""

from __future__ import annotations

from typing import Any

from mlcanary.local_runtime import paths, store
from mlcanary.local_runtime.client import RuntimeClient


class StateUnreadable(RuntimeError):
    pass


def current_endpoints(client: RuntimeClient) -> dict[str, dict[str, Any]]:
    """Endpoint name -> its status view (`traffic`, `mirrorTraffic`, `deployments` with `state` and `spec`)."""
    if client.base_url() is not None:
        return client.status()["endpoints"]
    state_file = paths.state_file(client.root)
    try:
        recorded = store.load(state_file)["endpoints"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StateUnreadable(f"{state_file}: cannot read the runtime's state: {err}") from None
    return {
        name: {
            "traffic": record.get("traffic", {}),
            "mirrorTraffic": record.get("mirrorTraffic", {}),
            # a start restores these deployments as they were recorded
            "deployments": {n: {"state": "ready", "spec": spec} for n, spec in record.get("deployments", {}).items()},
        }
        for name, record in recorded.items()
    }
