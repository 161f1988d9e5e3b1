"""Finding 14: the traffic, registration and metrics calls authenticate with the ARM_* settings
azure-native reads, in its order (pulumi-azure-native `provider/pkg/provider/auth_azidentity.go`,
`newSingleMethodAuthCredential` and `readAuthConfig`), so a pipeline set up for azure-native works
for them too."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from azure import identity

from mlcanary.components.arm import ArmError, _oidc_assertion, azure_credential

SP = {"ARM_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47", "ARM_CLIENT_ID": "00000000-0000-0000-0000-000000000001"}


@pytest.mark.parametrize("env, kind", [
    ({}, identity.AzureCliCredential),
    ({**SP, "ARM_CLIENT_SECRET": "s3cret"}, identity.ClientSecretCredential),
    ({**SP, "ARM_USE_OIDC": "true", "ARM_OIDC_TOKEN": "eyJ"}, identity.ClientAssertionCredential),
    ({**SP, "ARM_USE_MSI": "true"}, identity.ManagedIdentityCredential),
    ({"ARM_USE_MSI": "true"}, identity.ManagedIdentityCredential),
    ({"ARM_USE_DEFAULT_AZURE_CREDENTIAL": "true", "ARM_CLIENT_SECRET": "ignored"}, identity.DefaultAzureCredential),
    ({**SP, "ARM_CLIENT_SECRET": "s3cret", "ARM_USE_MSI": "true"}, identity.ClientSecretCredential),  # secret first
], ids=["azure_cli", "client_secret", "oidc_token", "msi_user_assigned", "msi_system", "default_chain", "order"])
def test_the_credential_follows_azure_natives_settings_and_order(env, kind):
    assert type(azure_credential(env)) is kind


@pytest.mark.parametrize("env, named", [
    ({"ARM_CLIENT_SECRET": "s3cret", "ARM_CLIENT_ID": SP["ARM_CLIENT_ID"]}, "ARM_CLIENT_SECRET needs ARM_TENANT_ID"),
    ({"ARM_USE_OIDC": "true", "ARM_TENANT_ID": SP["ARM_TENANT_ID"]}, "ARM_USE_OIDC needs ARM_CLIENT_ID"),
    ({**SP, "ARM_USE_OIDC": "true"}, "ARM_USE_OIDC needs ARM_OIDC_TOKEN, ARM_OIDC_TOKEN_FILE_PATH, or ACTIONS_ID_TOKEN"),
    ({"ARM_CLIENT_CERTIFICATE_PATH": "/x.pfx"}, "ARM_CLIENT_CERTIFICATE_PATH needs ARM_TENANT_ID and ARM_CLIENT_ID"),
], ids=["secret_without_tenant", "oidc_without_client", "oidc_without_token", "certificate_without_ids"])
def test_a_chosen_but_incomplete_method_is_an_error_not_another_identity(env, named):
    with pytest.raises(ArmError, match=named) as err:
        azure_credential(env)
    assert "s3cret" not in str(err.value)


def test_the_oidc_token_file_is_read_when_a_token_is_asked(tmp_path):
    token = tmp_path / "token"
    token.write_text("eyJfile\n")
    assertion = _oidc_assertion(lambda name: {"ARM_OIDC_TOKEN_FILE_PATH": str(token)}.get(name, ""))
    token.write_text("eyJrotated\n")  # a federated token file is rotated by the platform
    assert assertion() == "eyJrotated"


def test_github_actions_oidc_asks_for_the_token_exchange_audience():
    """GitHub's token endpoint, asked as azure-native asks it: Bearer ACTIONS_ID_TOKEN_REQUEST_TOKEN,
    audience api://AzureADTokenExchange (unless ARM_OIDC_AUDIENCE)."""
    seen = {}

    class GitHub(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen["path"], seen["auth"] = self.path, self.headers["Authorization"]
            body = json.dumps({"value": "eyJgithub"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = HTTPServer(("127.0.0.1", 0), GitHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"ACTIONS_ID_TOKEN_REQUEST_URL": f"http://127.0.0.1:{server.server_port}/token?api-version=2.0",
               "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "gh-bearer"}
        assert _oidc_assertion(lambda name: env.get(name, ""))() == "eyJgithub"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert seen["auth"] == "Bearer gh-bearer"
    assert seen["path"] == "/token?api-version=2.0&audience=api%3A%2F%2FAzureADTokenExchange"
