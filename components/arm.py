"""A small Azure Resource Manager REST client: GET and PUT one resource, waiting out long operations.

Only what the traffic resource needs. Credentials come from azure-identity's
DefaultAzureCredential (az login, environment variables, managed identity, workload identity),
the same chain the azure-native provider can use. Tokens are never logged or put in messages.
"""

from __future__ import annotations

import time
from typing import Any

import requests

ARM_ENDPOINT = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
ML_API_VERSION = "2024-04-01"
TERMINAL_STATES = {"succeeded", "failed", "canceled", "cancelled"}


class ArmError(RuntimeError):
    """Azure refused or failed a request; the message says which request and Azure's own reason."""


class ArmClient:
    def __init__(
        self,
        *,
        api_version: str = ML_API_VERSION,
        poll_interval_s: float = 5.0,
        timeout_s: float = 1800.0,
        credential: Any = None,
    ):
        from azure.identity import DefaultAzureCredential

        self.api_version = api_version
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self._credential = credential or DefaultAzureCredential()
        self._session = requests.Session()

    def get(self, resource_id: str) -> dict[str, Any] | None:
        """The resource's body, or None if Azure says it does not exist."""
        response = self._request("GET", self._url(resource_id))
        if response.status_code == 404:
            return None
        self._raise_for_status(response, "GET", resource_id)
        return response.json()

    def put(self, resource_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the body and wait until Azure reports the operation finished; returns the resource."""
        response = self._request("PUT", self._url(resource_id), json=body)
        self._raise_for_status(response, "PUT", resource_id)
        self._wait(response, resource_id)
        final = self.get(resource_id)
        if final is None:
            raise ArmError(f"PUT {resource_id} succeeded but the resource is gone")
        return final

    def _wait(self, response: requests.Response, resource_id: str) -> None:
        status_url = response.headers.get("Azure-AsyncOperation") or response.headers.get("Location")
        if not status_url:
            return
        deadline = time.monotonic() + self.timeout_s
        while True:
            poll = self._request("GET", status_url)
            self._raise_for_status(poll, "poll of PUT", resource_id)
            if poll.status_code != 202:
                status = (poll.json() or {}).get("status", "Succeeded") if poll.content else "Succeeded"
                if status.lower() in TERMINAL_STATES:
                    if status.lower() != "succeeded":
                        raise ArmError(f"PUT {resource_id} ended {status}: {_error_text(poll)}")
                    return
            if time.monotonic() > deadline:
                raise ArmError(f"PUT {resource_id} still running after {self.timeout_s:.0f} s")
            time.sleep(float(poll.headers.get("Retry-After", self.poll_interval_s)))

    def _url(self, resource_id: str) -> str:
        return f"{ARM_ENDPOINT}{resource_id}?api-version={self.api_version}"

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        token = self._credential.get_token(ARM_SCOPE).token
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            return self._session.request(method, url, headers=headers, timeout=60, **kwargs)
        except requests.RequestException as err:
            raise ArmError(f"{method} {url.split('?')[0]} could not reach Azure: {err}") from None

    @staticmethod
    def _raise_for_status(response: requests.Response, what: str, resource_id: str) -> None:
        if response.status_code >= 400:
            raise ArmError(
                f"Azure rejected {what} {resource_id} (HTTP {response.status_code}): {_error_text(response)}"
            )


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or "no details"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code', 'Error')}: {error.get('message', '')}".strip()
    return str(body)[:500]
