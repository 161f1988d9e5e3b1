"""The Pulumi program (`pulumi up`): see components/program.py."""

from pathlib import Path

from mlcanary.components.program import main
from mlcanary.local_runtime.pulumi_access import RuntimeAccess

main(Path(__file__).resolve().parent, RuntimeAccess())
