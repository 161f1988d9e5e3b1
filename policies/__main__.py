"""The mlcanary CrossGuard policy pack: `pulumi preview --policy-pack policies`.

Only this file builds the PolicyPack (which starts a gRPC server and blocks); the policies live in
policies/azure_ml.py so `mlcanary check` and the tests can import them.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from mlcanary.policies.azure_ml import POLICIES

PolicyPack(name="mlcanary", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
