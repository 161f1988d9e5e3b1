"""The local runtime as the local-target Pulumi resources reach it (components/local_target.py).

components/ builds on nothing above it, so those resources are given this object (by __main__.py,
the Pulumi program, and by `mlcanary check`) instead of importing the runtime. Pulumi ships it to
its provider host inside the providers; dill pickles it by reference to this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mlcanary.local_runtime import paths

if TYPE_CHECKING:
    from mlcanary.local_runtime.client import RuntimeClient


class RuntimeAccess:
    """components.local_target.LocalRuntime, implemented by the runtime's own client (imported when used:
    `mlcanary check` renders local stages with this adapter and never calls it)."""

    def default_state_dir(self) -> str:
        return str(paths.state_dir())

    def client(self, state_dir: str) -> RuntimeClient:
        from mlcanary.local_runtime.client import RuntimeClient

        return RuntimeClient(paths.state_dir(state_dir))

    def refuse_if_held(self, state_dir: str, endpoint: str, writer: str) -> None:
        """lease.EndpointHeld while a running rollout holds `endpoint`; a dead holder's hold is taken over."""
        from mlcanary.local_runtime.lease import refuse_if_held

        refuse_if_held(paths.state_dir(state_dir), [endpoint], writer)

    def already_gone(self, delete: Callable[[], object]) -> bool:
        """Run a delete; True if the thing was already gone (404, or no runtime), which is fine for a delete."""
        from mlcanary.local_runtime.client import NotRunning, RuntimeRefusal

        try:
            delete()
        except RuntimeRefusal as err:
            if err.status != 404:
                raise
            return True
        except NotRunning:
            return True
        return False
