"""Where the runtime serves `/metrics` for a Prometheus scraper: a fixed loopback address.

Fixed so that a static scrape config keeps working across restarts of the runtime; when another
program (or another user's runtime) holds it, the runtime serves on a free port instead and says
where, so a second runtime on a shared machine still starts; loopback only
(the metrics hold no secret, but nothing of the local target listens beyond this machine); no control
token needed. `MLCANARY_METRICS_ADDRESS` (or `mlcanary local start --metrics-address`) changes it;
`off` serves no metrics address (they stay on the control plane, `mlcanary local metrics`).
"""

from __future__ import annotations

import ipaddress
import os

ENV_VAR = "MLCANARY_METRICS_ADDRESS"
DEFAULT = "127.0.0.1:9577"
OFF = "off"


class BadMetricsAddress(ValueError):
    pass


def configured(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_VAR) or DEFAULT


def parse(text: str) -> tuple[str, int] | None:
    """(host, port) of `host:port` on loopback, None for `off`; BadMetricsAddress says what is allowed."""
    allowed = f"expected HOST:PORT on loopback (e.g. {DEFAULT}; port 0 picks a free one) or `{OFF}`"
    value = text.strip()
    if value.lower() == OFF:
        return None
    host, separator, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not separator or not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise BadMetricsAddress(f"{value[:100]!r} is not an address: {allowed}")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise BadMetricsAddress(f"{value[:100]!r} is not a loopback address: {allowed}")
    return host, int(port_text)


def show(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
