"""The Pulumi program (`pulumi up`): see components/program.py."""

from pathlib import Path

from mlcanary.components.program import main

main(Path(__file__).resolve().parent)
