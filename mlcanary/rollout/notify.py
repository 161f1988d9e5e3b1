"""Webhooks of a rollout, as Flagger's: `--notify URL` gets a JSON event per decision, and
`--confirm-promotion URL` must answer 2xx before each promotion (else the step is held).

Every call is bounded (CONNECT_TIMEOUT_S to connect, READ_TIMEOUT_S for the answer). A failing
notification never stops a rollout: it is reported and recorded. A webhook URL often carries a
secret (a token in its path or query): messages show only its scheme and host.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from mlcanary.components.rollout_spec import webhook_url_problem as url_problem  # noqa: F401 - one rule, shared

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0


def shown(url: str) -> str:
    """The URL as it may be printed: scheme and host (and port), no user, path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}" if parts.scheme else "<not a URL>"


def _post(url: str, event: dict[str, Any], post: Callable[..., Any]) -> tuple[int | None, str | None]:
    """(status, None) or (None, why it failed)."""
    try:
        answer = post(url, data=json.dumps(event, default=str), headers={"Content-Type": "application/json"},
                      timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), allow_redirects=False)
    except requests.Timeout:
        return None, f"did not answer within {CONNECT_TIMEOUT_S:g} s to connect / {READ_TIMEOUT_S:g} s to answer"
    except requests.RequestException as err:
        return None, f"could not be reached ({type(err).__name__})"
    return answer.status_code, None


class Notifier:
    def __init__(self, urls: list[str], post: Callable[..., Any] = requests.post):
        self.urls, self.post = list(urls), post

    def send(self, event: dict[str, Any]) -> list[str]:
        """Post `event` to every URL; what failed, one line each (empty when all answered 2xx)."""
        failures = []
        for url in self.urls:
            status, error = _post(url, event, self.post)
            if error is None and status is not None and not 200 <= status < 300:
                error = f"answered {status}"
            if error is not None:
                failures.append(f"{shown(url)} {error} (event {event.get('event')} {event.get('decision') or ''})".strip())
        return failures


class Confirmer:
    def __init__(self, url: str, post: Callable[..., Any] = requests.post):
        self.url, self.post = url, post

    def ask(self, event: dict[str, Any]) -> str | None:
        """None when the gate answers 2xx; else why the promotion is held."""
        status, error = _post(self.url, event, self.post)
        if error is None and status is not None and 200 <= status < 300:
            return None
        return f"the promotion gate {shown(self.url)} " + (error or f"answered {status}")
