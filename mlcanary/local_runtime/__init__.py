"""The local target: Azure ML online endpoints served on this machine.

A long-lived runtime process (server.py) owns endpoints; each deployment runs `instanceCount`
workers of azureml-inference-server-http (the server Azure ML runs in its containers) on private
Unix sockets (workers.py), kept healthy by supervision.py; a router per endpoint implements the data
plane (data_plane.py): key auth, live traffic split, mirroring, the `azureml-model-deployment`
header; control_plane.py accepts changes. Later commands find the runtime through its state
directory (client.py); `local up` applies a stage as one change (apply.py, stage_lock.py).
"""
