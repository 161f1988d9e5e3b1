"""`mlcanary rollout --stack` against a fake `pulumi` binary driven by the real Automation API.

The fake (tests/fake_pulumi_cli.py) keeps the rules of the real CLI, read from its sources: `config
set-all --path` splits keys on every dot and coerces "42"/"true" (pulumi `sdk/go/common/resource/
config/object.go` `coerce`, `resource/properties_path.go` `parsePropertyPath`, `config/map.go`
`Map.Set`); `config set-all --json` stores objects whole (`pkg/cmd/pulumi/config/config.go`,
`newConfigSetAllCmd`); an update holds the stack's lock and a second one fails with the message the
Automation API turns into `ConcurrentUpdateError` (`sdk/python/lib/pulumi/automation/errors.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from mlcanary.components.spec import load_stack_config
from mlcanary.components.stage_file import namespaced
from mlcanary.rollout.appliers import ApplyError, PulumiApplier, stage_config_json
from mlcanary.rollout.plan import load_plan
from conftest import PROJECT_DIR

FAKE = Path(__file__).with_name("fake_pulumi_cli.py")
HOSTILE_TAGS = {"app.kubernetes.io/name": "fraud", "build": "42", "enabled": "true", "zip": "0123",
                "a[0]": "x", 'quote"d': "y", "cost.centre.id": "007"}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A Pulumi project in tmp_path with stack `prod`, and the fake `pulumi` first on PATH."""
    root = tmp_path / "project"
    (root / "stacks" / "deployments").mkdir(parents=True)
    shutil.copy(PROJECT_DIR / "Pulumi.yaml", root / "Pulumi.yaml")
    shutil.copy(PROJECT_DIR / "stacks" / "deployments" / "green.yml", root / "stacks" / "deployments" / "green.yml")
    (root / "stacks" / "Pulumi.prod.yaml").write_text("config:\n  azure-native:location: westus2\n")
    config = yaml.safe_load((PROJECT_DIR / "stacks" / "stage-3-green-dark.yaml").read_text())["config"]
    endpoint = config["mlcanary:endpoint"]
    endpoint["tags"] = dict(HOSTILE_TAGS)
    endpoint["deployments"]["blue"]["environmentVariables"] = {"WORKERS": "4", "DEBUG": "false", "RATIO": "0.5"}
    endpoint["deployments"]["blue"]["tags"] = {"team.name": "risk", "tier": "1"}
    (root / "stage.yaml").write_text(yaml.safe_dump({"config": config}, sort_keys=False))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulumi").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    (bin_dir / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("FAKE_PULUMI_UP_SECONDS", raising=False)
    return root


def select(project: Path, **kwargs) -> PulumiApplier:
    return PulumiApplier.for_stack("prod", project, project / "policies", None) if not kwargs else \
        PulumiApplier(_stack(project), project / "policies", None, **kwargs)


def _stack(project: Path):
    from pulumi import automation as auto

    return auto.select_stack(stack_name="prod", work_dir=str(project))


def log(tmp_path: Path) -> list[dict]:
    path = tmp_path / "state" / "prod" / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def as_the_program_reads_it(stack) -> dict:
    """The stack's `mlcanary:*` config as components/program.py `stack_config` gets it (objects as JSON text)."""
    values = {}
    for key, item in stack.get_all_config().items():
        if key.startswith("mlcanary:"):
            try:
                values[key] = json.loads(item.value)
            except ValueError:
                values[key] = item.value
    return values


def test_the_stage_written_into_the_stack_loads_back_equal_with_hostile_keys_and_values(project):
    """Finding 1: `set-all --path` turned tags `build: "42"` into 42 and split `app.kubernetes.io/name`
    into nested maps, so the next `pulumi up` refused the stack config. The whole stage now goes
    through `set-all --json` and comes back equal, value for value."""
    plan = load_plan(project / "stage.yaml", {"to": "green", "steps": [10, 100], "mirror": 10, "mirrorFor": "1m",
                                              "deleteOld": True})
    applier = select(project)
    for step in [plan.start, *plan.steps, plan.rollback]:
        applier.apply(step)
        read_back = as_the_program_reads_it(applier.stack)
        assert read_back == {k: v for k, v in step.config.items() if k.startswith("mlcanary:")}
        spec = load_stack_config(namespaced(read_back, "mlcanary"), project)
        assert spec == step.spec
        assert spec.endpoint.tags == HOSTILE_TAGS
    # the stack's own file says the same (what a later `pulumi up` by hand reads)
    on_disk = yaml.safe_load((project / "stacks" / "Pulumi.prod.yaml").read_text())["config"]
    assert on_disk["mlcanary:endpoint"]["tags"]["build"] == "42"
    assert on_disk["azure-native:location"] == "westus2"  # keys outside the stage are left alone
    ups = [entry for entry in log(project.parent) if entry["command"] == "up"]
    assert [u["message"] for u in ups][-1] == "mlcanary rollout: rollback" and all(u["refresh"] for u in ups)


def test_the_fake_cli_applies_pulumis_path_rules(project):
    """The fake is not lenient: what `set_all_config(..., path=True)` sends comes back coerced and split,
    as the real CLI does it - the reason the applier does not use it."""
    from pulumi.automation import ConfigValue

    stack = _stack(project)
    stack.set_all_config({"mlcanary:endpoint.tags.app.kubernetes.io/name": ConfigValue("fraud"),
                          "mlcanary:endpoint.tags.build": ConfigValue("42"),
                          "mlcanary:endpoint.tags.zip": ConfigValue("0123")}, path=True)
    tags = as_the_program_reads_it(stack)["mlcanary:endpoint"]["tags"]
    assert tags == {"app": {"kubernetes": {"io/name": "fraud"}}, "build": 42, "zip": "0123"}
    with pytest.raises(Exception, match="cannot be used with"):
        stack.workspace._run_pulumi_cmd_sync(["config", "set-all", "--stack", "prod", "--path", "--json", "{}"])


def test_stage_config_json_is_the_pulumi_config_json_shape():
    shown = json.loads(stage_config_json({"mlcanary:target": "azure", "mlcanary:endpoint": {"name": "e", "n": 1},
                                          "azure-native:location": "westus2"}))
    assert shown == {"mlcanary:target": {"value": "azure", "secret": False},
                     "mlcanary:endpoint": {"value": '{"name": "e", "n": 1}', "objectValue": {"name": "e", "n": 1},
                                           "secret": False}}


# --- concurrent updates and interrupts ------------------------------------------------------------

@pytest.fixture
def plan(project):
    return load_plan(project / "stage.yaml", {"to": "green", "steps": [10, 100]})


def other_update(project: Path, seconds: float) -> subprocess.Popen:
    """A second actor's `pulumi up` on the same stack, holding its lock for `seconds`."""
    env = {**os.environ, "FAKE_PULUMI_UP_SECONDS": str(seconds)}
    process = subprocess.Popen([shutil.which("pulumi"), "up", "--stack", "prod", "--message", "by hand"],
                               cwd=project, env=env, stdout=subprocess.DEVNULL)
    lock = Path(os.environ["FAKE_PULUMI_STATE"]) / "prod" / "lock" / "pid"
    deadline = time.monotonic() + 30
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_a_step_waits_for_another_update_of_the_stack_and_then_applies(project, plan):
    """Finding 6: a locked stack was an ordinary failure (rollback at once). Now the step waits."""
    applier = select(project, lock_wait_s=60, retry_s=0.1)
    other = other_update(project, 1.5)
    try:
        applier.apply(plan.start)
    finally:
        stop(other)
    ups = [entry["message"] for entry in log(project.parent) if entry["command"] == "up"]
    assert ups == ["by hand", "mlcanary rollout: stage.yaml"]
    assert not any(entry["command"] == "cancel" for entry in log(project.parent))


def test_someone_elses_update_is_never_cancelled(project, plan):
    applier = select(project, lock_wait_s=0.3, retry_s=0.1)
    other = other_update(project, 30)
    try:
        with pytest.raises(ApplyError, match="another update of the stack is still running after 0.3 s"):
            applier.apply(plan.start)
        assert other.poll() is None  # still running: not ours to cancel
    finally:
        stop(other)
    assert not any(entry["command"] == "cancel" for entry in log(project.parent))


def interrupt_when_locked(project: Path) -> threading.Thread:
    """Ctrl-C (SIGINT to this process only) once the fake CLI's update holds the stack's lock."""
    lock = Path(os.environ["FAKE_PULUMI_STATE"]) / "prod" / "lock" / "pid"

    def watch():
        deadline = time.monotonic() + 30
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # no traceback on Ctrl-C
def test_after_ctrl_c_the_return_to_the_last_good_step_starts_once_the_interrupted_update_ended(
        project, plan, monkeypatch):
    """Finding 6: the return to the last good step must not race the update Ctrl-C cut short: the
    interrupt waits for the update's thread to end, so the applier's next `up` finds the stack
    unlocked; a lock still held (by anyone) would be waited for, as above. And no reader thread of the
    Automation API (`pulumi/automation/_cmd.py`, `consumer`) fails on pipes closed under it: that
    printed a traceback on the user's terminal."""
    applier = select(project, lock_wait_s=60, retry_s=0.1)
    applier.apply(plan.start)
    monkeypatch.setenv("FAKE_PULUMI_UP_SECONDS", "2")
    watcher = interrupt_when_locked(project)
    with pytest.raises(KeyboardInterrupt):
        applier.apply(plan.steps[0])
    watcher.join()
    monkeypatch.setenv("FAKE_PULUMI_UP_SECONDS", "0")
    applier.apply(plan.start)  # back to the last good step
    ups = [entry for entry in log(project.parent) if entry["command"] == "up"]
    assert [u["message"] for u in ups] == ["mlcanary rollout: stage.yaml", "mlcanary rollout: 10 %",
                                           "mlcanary rollout: stage.yaml"]
    assert ups[-1]["config"]["mlcanary:endpoint"]["traffic"] == {"blue": 100, "green": 0}
    assert not (Path(os.environ["FAKE_PULUMI_STATE"]) / "prod" / "lock").exists()
    assert not any(entry["command"] == "cancel" for entry in log(project.parent))


def test_traffic_moved_by_someone_else_fails_the_step(project, plan, monkeypatch):
    """`up --refresh` reads what Azure has; the applier compares the stack's reported traffic with the
    step's and does not call a step applied when another actor holds the traffic elsewhere."""
    applier = select(project)
    monkeypatch.setenv("FAKE_PULUMI_LIVE_TRAFFIC", json.dumps({"blue": 50, "green": 50}))
    with pytest.raises(ApplyError, match=r"reports live \{'blue': 50, 'green': 50\} .* not \{'blue': 100\}"):
        applier.apply(plan.start)


def test_a_failed_return_to_the_last_good_step_is_never_reported_as_done():
    """Finding 6: the rollout printed "left at the last good step" even when setting it failed."""
    from mlcanary.rollout.appliers import ApplyError
    from mlcanary.rollout.judges import make_judge
    from mlcanary.rollout.record import Recorder
    from mlcanary.rollout.runner import Runner
    from test_rollout_runner import STAGE_3, World

    world = World()
    serve, apply = world.sleep, world.apply

    def sleep(seconds):
        serve(seconds)
        if world.traffic.get("green") == 50:
            raise KeyboardInterrupt

    def apply_then_fail_the_return(step):
        if world.applied and world.applied[-1] == "50 %":
            raise ApplyError("pulumi up for step '10 %': another update of the stack is still running after 900 s")
        apply(step)

    world.sleep, world.apply = sleep, apply_then_fail_the_return
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "steps": [10, 50, 100]})
    recorder = Recorder(None, clock=world.clock)
    o = plan.options
    outcome = Runner(plan, world, world, make_judge(o.judge, o.alpha, o.rules, o.failure_limit), recorder,
                     clock=world.clock, sleep=world.sleep).run()
    assert outcome.exit_code == 130 and "left at the last good step" not in outcome.message
    assert outcome.message.startswith("could not return to the last good step (10 %: live blue 90, green 10)")
    assert "the endpoint's traffic is unknown" in outcome.message
    assert recorder.events[-1]["returned"] is False


def test_an_interrupt_waits_for_the_update_to_end_in_its_own_thread_then_is_raised():
    """Ctrl-C during `pulumi up`: the update's own thread (the Automation API's, with its pipe readers)
    is never interrupted; the interrupt comes out once the update ended, so nothing closes its pipes
    under its readers and the return to the last good step cannot race it."""
    import signal
    import threading
    import time

    from mlcanary.rollout.appliers import _to_its_end

    ended: list[float] = []

    def update() -> str:
        time.sleep(0.6)
        ended.append(time.monotonic())
        return "outputs"

    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        _to_its_end(update)
    raised = time.monotonic()
    assert ended and ended[0] <= raised  # the update ran to its end before the interrupt came out
    assert _to_its_end(lambda: "outputs") == "outputs"
    with pytest.raises(ValueError, match="the update's own error"):
        _to_its_end(lambda: (_ for _ in ()).throw(ValueError("the update's own error")))
