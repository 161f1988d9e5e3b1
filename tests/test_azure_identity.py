"""Finding 10: the endpoint's managed identity, as azure-ai-ml sends it from an endpoint file's
`identity` (system_assigned, user_assigned with ARM ids, none); every malformed one refused by name.
The body itself is compared with azure-ai-ml's in tests/test_azure_conformance.py (endpoints corpus)."""

from __future__ import annotations

import copy

import pytest

from mlcanary.components.spec import SpecError, load_stack_config
from mlcanary.components.stage_file import namespaced
from conftest import PROJECT_DIR, render_config

UAI = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/ml-prod-rg/providers/"
       "Microsoft.ManagedIdentity/userAssignedIdentities/fraud-scorer-identity")
ENDPOINT = "azure-native:machinelearningservices:OnlineEndpoint"


def with_identity(canary_config: dict, identity) -> dict:
    config = copy.deepcopy(canary_config)
    config["mlcanary:endpoint"]["identity"] = identity
    return config


@pytest.mark.parametrize("identity, sent", [
    ({"type": "user_assigned", "userAssignedIdentities": [UAI]}, {"type": "UserAssigned", "userAssignedIdentities": [UAI]}),
    ({"type": "system_assigned"}, {"type": "SystemAssigned"}),
    ({"type": "none"}, {"type": "None"}),
], ids=["user_assigned", "system_assigned", "none"])
def test_the_endpoint_carries_the_identity_the_stage_names(canary_config, identity, sent):
    (endpoint,) = render_config(with_identity(canary_config, identity)).of_type(ENDPOINT)
    assert endpoint.inputs["identity"] == sent


def test_without_identity_the_endpoint_is_system_assigned_as_az_ml_sends_it(canary_config):
    (endpoint,) = render_config(canary_config).of_type(ENDPOINT)
    assert endpoint.inputs["identity"] == {"type": "SystemAssigned"}


@pytest.mark.parametrize("identity, message", [
    ({"type": "user_assigned"}, "identity.userAssignedIdentities: required with type user_assigned"),
    ({"type": "system_assigned", "userAssignedIdentities": [UAI]},
     "identity.userAssignedIdentities: goes with type user_assigned only (type is system_assigned)"),
    ({"type": "user_assigned", "userAssignedIdentities": ["user_identity_ARM_id_place_holder"]},
     "'user_identity_ARM_id_place_holder' is not the ARM id of a user-assigned identity"),
    ({"type": "SystemAssigned"}, "identity.type"),
    ({"type": "user_assigned", "userAssignedIdentities": [UAI], "clientId": "x"}, "identity"),
], ids=["user_assigned_without_ids", "ids_with_system_assigned", "placeholder_id", "rest_spelling", "unknown_key"])
def test_a_malformed_identity_is_refused_naming_the_field(canary_config, identity, message):
    with pytest.raises(SpecError) as raised:
        load_stack_config(namespaced(with_identity(canary_config, identity), "mlcanary"), PROJECT_DIR)
    assert message in str(raised.value)
    assert "mlcanary:endpoint.identity" in str(raised.value)
