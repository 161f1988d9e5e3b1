"""Why a running deployment is updated, in a user's words: 'model changed', 'instances 1 -> 2'.

Pure: the runtime's status of the deployment against the payload an apply would give it
(`components/local_payload.py`). A changed pinned digest (snapshots.py) reads as the folder it pins.
"""

from __future__ import annotations

from typing import Any

from mlcanary.components.local_payload import PINNED


def why_updated(existing: dict[str, Any], payload: dict[str, Any]) -> str:
    """`existing`: the deployment's status (`state`, `spec`); `payload`: what the stage asks for."""
    if existing["state"] != "ready":
        return f"was {existing['state']}"
    old = existing["spec"]
    reasons = [f"{key} changed" for key, digest in PINNED.items()
               if old.get(digest) != payload.get(digest) or old.get(key) != payload.get(key)]
    if old.get("instanceCount") != payload.get("instanceCount"):
        reasons.append(f"instances {old.get('instanceCount')} -> {payload.get('instanceCount')}")
    compared = {*PINNED, *PINNED.values(), "instanceCount"}
    others = sorted(k for k in (old.keys() | payload.keys()) - compared if old.get(k) != payload.get(k))
    if others:
        reasons.append(f"{', '.join(others)} changed")
    return ", ".join(reasons)
