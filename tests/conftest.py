"""Shared helpers: the project's own program and stage files, rendered offline under mocks."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from mlcanary.components.render import Render, render_program
from mlcanary.local_runtime import owner

# Every test runtime serves /metrics on a free port: tests run in parallel, and a runtime of the user's
# own may hold the default address. Tests of the fixed address choose theirs.
os.environ["MLCANARY_METRICS_ADDRESS"] = "127.0.0.1:0"

PROJECT_DIR = Path(__file__).resolve().parents[1]
PROGRAM = PROJECT_DIR / "__main__.py"
STAGE_FILES = sorted((PROJECT_DIR / "stacks").glob("stage-*.yaml"))


def outside_the_project(stage_text: str) -> str:
    """A sample stage's text for a copy outside the project (in tmp_path): relative paths resolve from
    the stage file's folder there (docs/config.md#paths), so its ./samples paths become absolute."""
    return stage_text.replace("./samples", str(PROJECT_DIR / "samples"))


def stage_config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["config"]


def render_config(config: dict) -> Render:
    return render_program(PROGRAM, config)


@pytest.fixture
def canary_config() -> dict:
    """A fresh copy of stage 5 (blue 90 / green 10), the stage most rules bite on."""
    path = next(p for p in STAGE_FILES if p.name.startswith("stage-5"))
    return copy.deepcopy(stage_config(path))


def pytest_configure(config):
    """Every runtime the suite starts, in this process or by a command it runs, stops when the suite's
    process exits, even killed by SIGKILL (mlcanary/local_runtime/owner.py); its workers die with it
    (their parent-death signal). xdist workers keep the PID they inherit: the controller's."""
    if not hasattr(config, "workerinput"):
        os.environ[owner.ENV_VAR] = str(os.getpid())
    # An azure-target rollout keeps its hold in the user's state folder ($XDG_STATE_HOME/mlcanary), and
    # every digest of a local folder is remembered in the user's cache ($XDG_CACHE_HOME/mlcanary,
    # components/content_digest.py): the suite's go to folders of its own, never into the home directory
    # (tests/test_suite_leaves_nothing.py). The commands the tests run inherit them.
    for variable, marker in (("XDG_STATE_HOME", "MLCANARY_TEST_STATE_HOME"), ("XDG_CACHE_HOME", "MLCANARY_TEST_CACHE_HOME")):
        if marker not in os.environ:  # not inside another run of the suite
            _made.append(tempfile.mkdtemp(prefix=f"mlcanary-{variable.lower()}-"))
            os.environ[variable] = os.environ[marker] = _made[-1]
    if hasattr(config, "workerinput"):
        # Holds are keyed by stack (`prod` in many tests): two xdist workers sharing one folder took
        # each other's holds. Each worker has a state folder of its own inside the run's.
        worker = Path(os.environ["MLCANARY_TEST_STATE_HOME"], config.workerinput["workerid"])
        worker.mkdir(exist_ok=True)
        os.environ["XDG_STATE_HOME"] = str(worker)


_made: list[str] = []  # the state folder this run made (and removes)


def pytest_unconfigure(config):
    for folder in _made:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Long soak runs (marked slow) run only when asked for (`./tasks test -m slow`); CI runs the short ones."""
    if config.option.markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
