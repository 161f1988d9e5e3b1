"""Azure Resource Manager calls for the traffic resource, on azure-core's ARM pipeline.

GET and PUT one resource, the way Azure's own SDKs do: azure-mgmt-core's `ARMPipelineClient` with
azure-core's retry policy (408, 429, 500, 502, 503, 504 and, for an endpoint busy with another
operation, 409; `Retry-After` honoured), ARM's challenge authentication and resource-provider
registration, and `ARMPolling` for the long-running PUT. The ARM host and token scope come from
the cloud (`AzureCloud`, `AzureUSGovernment`, `AzureChinaCloud`: azure-ai-ml's cloud table).
Credentials come from the same ARM_* settings azure-native reads (`azure_credential`), so a
pipeline set up for azure-native works here too. Tokens are never logged or put in messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

# The Microsoft.MachineLearningServices api-version of azure-native 3.x, azure-ai-ml 1.35 and its REST models.
ML_API_VERSION = "2025-12-01"
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


def azure_credential(env: Mapping[str, str] | None = None) -> Any:
    """The credential azure-native would use, from the same ARM_* settings and in its order
    (pulumi-azure-native `provider/pkg/provider/auth_azidentity.go`, `newSingleMethodAuthCredential`):
    ARM_USE_DEFAULT_AZURE_CREDENTIAL=true -> DefaultAzureCredential; ARM_CLIENT_CERTIFICATE_PATH ->
    client certificate; ARM_CLIENT_SECRET -> client secret; ARM_USE_OIDC=true -> client assertion from
    ARM_OIDC_TOKEN, ARM_OIDC_TOKEN_FILE_PATH or GitHub's ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN;
    ARM_USE_MSI=true -> managed identity (ARM_CLIENT_ID picks a user-assigned one); else the Azure CLI.
    ARM_TENANT_ID and ARM_CLIENT_ID go with them. A method that is chosen but incomplete is an error,
    as in azure-native, never a silent fall-through to another identity."""
    from azure import identity

    env = os.environ if env is None else env
    get = lambda name: (env.get(name) or "").strip()  # noqa: E731
    tenant, client = get("ARM_TENANT_ID"), get("ARM_CLIENT_ID")

    def need(method: str, **values: str) -> None:
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise ArmError(f"{method} needs {' and '.join(missing)} (as azure-native does)")

    if get("ARM_USE_DEFAULT_AZURE_CREDENTIAL") == "true":
        return identity.DefaultAzureCredential(**({"tenant_id": tenant} if tenant else {}))
    if get("ARM_CLIENT_CERTIFICATE_PATH"):
        need("ARM_CLIENT_CERTIFICATE_PATH", ARM_TENANT_ID=tenant, ARM_CLIENT_ID=client)
        return identity.CertificateCredential(tenant, client, get("ARM_CLIENT_CERTIFICATE_PATH"),
                                              password=get("ARM_CLIENT_CERTIFICATE_PASSWORD") or None)
    if get("ARM_CLIENT_SECRET"):
        need("ARM_CLIENT_SECRET", ARM_TENANT_ID=tenant, ARM_CLIENT_ID=client)
        return identity.ClientSecretCredential(tenant, client, get("ARM_CLIENT_SECRET"))
    if get("ARM_USE_OIDC") == "true":
        need("ARM_USE_OIDC", ARM_TENANT_ID=tenant, ARM_CLIENT_ID=client)
        return identity.ClientAssertionCredential(tenant, client, _oidc_assertion(get))
    if get("ARM_USE_MSI") == "true":
        return identity.ManagedIdentityCredential(**({"client_id": client} if client else {}))
    return identity.AzureCliCredential(**({"tenant_id": tenant} if tenant else {}))


def _oidc_assertion(get) -> Any:
    """The OIDC token azure-native would present: given, read from a file, or asked of GitHub Actions."""
    if get("ARM_OIDC_TOKEN"):
        token = get("ARM_OIDC_TOKEN")
        return lambda: token
    if get("ARM_OIDC_TOKEN_FILE_PATH"):
        path = get("ARM_OIDC_TOKEN_FILE_PATH")
        return lambda: open(path, encoding="utf-8").read().strip()
    url, bearer = get("ACTIONS_ID_TOKEN_REQUEST_URL"), get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
    if not (url and bearer):
        raise ArmError("ARM_USE_OIDC needs ARM_OIDC_TOKEN, ARM_OIDC_TOKEN_FILE_PATH, or ACTIONS_ID_TOKEN_REQUEST_URL "
                       "and ACTIONS_ID_TOKEN_REQUEST_TOKEN (as azure-native does)")
    audience = get("ARM_OIDC_AUDIENCE") or "api://AzureADTokenExchange"

    def from_github() -> str:
        import urllib.parse
        import urllib.request

        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("audience", audience)])
        request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(query=query)),
                                         headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - GitHub's own token URL
            return json.loads(response.read())["value"]

    return from_github


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
        credential = credential or azure_credential()
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

    def get(self, resource_id: str, *, api_version: str | None = None,
            params: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The resource's body, or None if Azure says it does not exist."""
        response = self._send("GET", resource_id, api_version=api_version, params=params)
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

    def _send(self, method: str, resource_id: str, body: dict[str, Any] | None = None, *, pipeline: bool = False,
              api_version: str | None = None, params: dict[str, str] | None = None):
        from azure.core.exceptions import AzureError
        from azure.core.rest import HttpRequest

        request = HttpRequest(
            method, f"{self.endpoint}{resource_id}", params={**(params or {}), "api-version": api_version or self.api_version},
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
