"""The local target: Azure ML online endpoints served on this machine.

A long-lived runtime process (server.py) owns endpoints; each deployment runs `instanceCount`
workers of azureml-inference-server-http (the server Azure ML runs in its containers), and a router
per endpoint implements the data plane: key auth, live traffic split, mirroring, the
`azureml-model-deployment` header. Later commands find the runtime through its state directory.
"""
