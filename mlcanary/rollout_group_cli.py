"""`mlcanary rollout`: the group of rollout_steer_cli.py (status, pause, resume, promote, abort, history)
with rollout_cli.py's command as its default `run`, so `mlcanary rollout STAGE_FILE ...` works as before.
Assembled here because rollout_cli uses the steering options of rollout_steer_cli."""

from __future__ import annotations

from mlcanary.rollout_cli import rollout as run
from mlcanary.rollout_steer_cli import rollout

rollout.add_command(run, name="run")
