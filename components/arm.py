"""Azure Resource Manager calls for the traffic resource, on azure-core's ARM pipeline.

GET and PUT one resource, the way Azure's own SDKs do: azure-mgmt-core's `ARMPipelineClient` with
azure-core's retry policy (408, 429, 500, 502, 503, 504 and, for an endpoint busy with another
operation, 409; `Retry-After` honoured), ARM's challenge authentication and resource-provider
registration, and `ARMPolling` for the long-running PUT. The ARM host and token scope come from
the cloud (`AzureCloud`, `AzureUSGovernment`, `AzureChinaCloud`: azure-ai-ml's cloud table).
Credentials come from azure-identity's DefaultAzureCredential (az login, environment variables,
managed identity, workload identity). Tokens are never logged or put in messages.
"""

from __future__ import annotations

import json
from typing import Any

ML_API_VERSION = "2024-04-01"
DEFAULT_CLOUD = "AzureCloud"
# Azure answers 409 Conflict while another operation runs on the endpoint; it is worth a retry.
EXTRA_RETRY_STATUS_CODES = [409]


class ArmError(RuntimeError):
    """Azure refused or failed a request; the message says which request and Azure's own reason."""


def resource_manager(cloud: str | None) -> str:
    """The ARM endpoint of a cloud, e.g. https://management.azure.com (no trailing slash)."""
    from azure.ai.ml._azure_environments import EndpointURLS, _get_cloud

    try:
        return _get_cloud(cloud or DEFAULT_CLOUD)[EndpointURLS.RESOURCE_MANAGER_ENDPOINT].rstrip("/")
    except Exception as err:  # azure-ai-ml raises a bare Exception for an unknown cloud
        raise ArmError(f"unknown Azure cloud {cloud!r}: {err}") from None


class ArmClient:
    def __init__(
        self,
        *,
        cloud: str | None = None,
        api_version: str = ML_API_VERSION,
        poll_interval_s: float = 5.0,
        timeout_s: float = 1800.0,
        credential: Any = None,
        transport: Any = None,
    ):
        from azure.core.pipeline import policies
        from azure.identity import DefaultAzureCredential
        from azure.mgmt.core import ARMPipelineClient
        from azure.mgmt.core.policies import (
            ARMAutoResourceProviderRegistrationPolicy,
            ARMChallengeAuthenticationPolicy,
            ARMHttpLoggingPolicy,
        )

        self.endpoint = resource_manager(cloud)
        self.api_version = api_version
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        credential = credential or DefaultAzureCredential()
        pipeline_policies = [
            policies.HeadersPolicy(),
            policies.RequestIdPolicy(),
            policies.UserAgentPolicy(sdk_moniker="mlcanary"),
            ARMAutoResourceProviderRegistrationPolicy(),
            policies.RetryPolicy(retry_on_status_codes=EXTRA_RETRY_STATUS_CODES),
            ARMChallengeAuthenticationPolicy(credential, f"{self.endpoint}/.default"),
            policies.ContentDecodePolicy(),
            ARMHttpLoggingPolicy(),
        ]
        self._client = ARMPipelineClient(base_url=self.endpoint, policies=pipeline_policies, transport=transport)

    def get(self, resource_id: str) -> dict[str, Any] | None:
        """The resource's body, or None if Azure says it does not exist."""
        response = self._send("GET", resource_id)
        if response.status_code == 404:
            return None
        self._raise_for_status(response, "GET", resource_id)
        return response.json()

    def put(self, resource_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the body and wait (ARM's long-running-operation protocol) until Azure reports the
        operation finished; returns the resource as Azure has it afterwards."""
        from azure.core.exceptions import AzureError
        from azure.core.polling import LROPoller
        from azure.mgmt.core.polling.arm_polling import ARMPolling

        pipeline_response = self._send("PUT", resource_id, body, pipeline=True)
        self._raise_for_status(pipeline_response.http_response, "PUT", resource_id)
        # After the operation, ARM's protocol reads the resource afresh; a PUT that completed at once
        # is read here. Either way what is reported is Azure's state, not the echo of the PUT.
        poller = LROPoller(self._client, pipeline_response, _fresh_read, ARMPolling(self.poll_interval_s))
        try:
            final = poller.result(timeout=self.timeout_s)
        except AzureError as err:
            raise ArmError(f"PUT {resource_id} ended {poller.status()}: {_azure_error_text(err)}") from None
        if not poller.done():
            raise ArmError(f"PUT {resource_id} still running after {self.timeout_s:.0f} s")
        if final is None:
            final = self.get(resource_id)
        if final is None:
            raise ArmError(f"PUT {resource_id} succeeded but the resource is gone")
        return final

    def _send(self, method: str, resource_id: str, body: dict[str, Any] | None = None, *, pipeline: bool = False):
        from azure.core.exceptions import AzureError
        from azure.core.rest import HttpRequest

        request = HttpRequest(
            method, f"{self.endpoint}{resource_id}", params={"api-version": self.api_version},
            headers={"Content-Type": "application/json"} if body is not None else None,
            content=json.dumps(body) if body is not None else None,
        )
        try:
            if pipeline:
                return self._client._pipeline.run(request, stream=False)
            return self._client.send_request(request)
        except AzureError as err:
            raise ArmError(f"{method} {resource_id} could not reach Azure: {_azure_error_text(err)}") from None

    @staticmethod
    def _raise_for_status(response: Any, what: str, resource_id: str) -> None:
        if response.status_code >= 400:
            raise ArmError(
                f"Azure rejected {what} {resource_id} (HTTP {response.status_code}): {_error_text(response)}"
            )


def _fresh_read(final: Any) -> dict[str, Any] | None:
    """The resource from the poller's final GET; None when the final answer is the PUT's own."""
    if final.http_request.method == "GET" and final.http_response.content:
        return final.http_response.json()
    return None


def _error_text(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text()[:500] or "no details"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code', 'Error')}: {error.get('message', '')}".strip()
    return str(body)[:500]


def _azure_error_text(err: Exception) -> str:
    response = getattr(err, "response", None)
    if response is not None:
        try:
            return _error_text(response)
        except Exception:  # noqa: BLE001 - the message is best effort; the status line stays
            pass
    return str(getattr(err, "message", None) or err).splitlines()[0][:500]
