"""Names the runtime and its clients share."""

PIN_HEADER = "azureml-model-deployment"  # Azure's: routes to a deployment; answers name the one that scored
CONTROL_TOKEN_HEADER = "X-Mlcanary-Control-Token"  # the control plane's credential, from runtime.json
