"""A rollout owns its endpoint (mlcanary/local_runtime/lease.py, mlcanary/rollout/steering.py): the hold
across processes, takeovers, outside changes and the read-back before "promoted". Fast checks with the
simulated world of test_rollout_runner; the real-process checks are in test_rollout_steering_live.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mlcanary.local_runtime import lease
from mlcanary.rollout.judges import make_judge
from mlcanary.rollout.plan import load_plan
from mlcanary.rollout.record import Recorder
from mlcanary.rollout.runner import Runner
from mlcanary.rollout.steering import OUTSIDE_CHANGE, HeldSteering, Steering, differences
from test_rollout_runner import STAGE_3, World, decisions

ENDPOINT = "fraud-scorer"  # the endpoint of the sample stages


class ReadBackWorld(World):
    """The simulated endpoint, read back as the local applier does; `outside` changes it behind the
    rollout's back at a given time."""

    kind = "simulated"

    def __init__(self, outside_at: float | None = None, outside_traffic=None, **kwargs):
        super().__init__(**kwargs)
        self.outside_at, self.outside_traffic = outside_at, outside_traffic
        self.deployments = {"blue": {"instanceCount": 2}, "green": {"instanceCount": 1}}

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.outside_at is not None and self.now >= self.outside_at:
            self.traffic, self.outside_at = dict(self.outside_traffic), None

    def read_back(self, endpoint: str):
        return {"traffic": dict(self.traffic), "mirror": dict(self.mirror), "deployments": dict(self.deployments)}


def run(world, steering=None, **flags):
    plan = load_plan(STAGE_3, {"to": "green", "interval": "2s", "minRequests": 5, "alpha": 0.001, **flags})
    recorder = Recorder(None, clock=world.clock)
    o = plan.options
    runner = Runner(plan, world, world, make_judge(o.judge, o.alpha, o.rules, o.failure_limit), recorder,
                    clock=world.clock, sleep=world.sleep,
                    steering=steering(plan, world) if steering else Steering(world, world.sleep))
    return runner.run(), recorder.events


# --- outside changes ---------------------------------------------------------------------------------------

def test_a_traffic_change_from_outside_halts_the_rollout_without_overwriting_it():
    world = ReadBackWorld(outside_at=1.0, outside_traffic={"blue": 0, "green": 100})
    outcome, events = run(world, steps=[10, 50, 100])
    assert outcome.exit_code == OUTSIDE_CHANGE == 4 and outcome.decision == "outside-change"
    assert "during step 10 %: live traffic blue 90, green 10 -> green 100" in outcome.message
    assert world.applied == ["stage-3-green-dark.yaml", "10 %"]  # nothing applied after the change
    assert world.traffic == {"blue": 0, "green": 100}
    recorded = [e for e in events if e["event"] == "decision"][-1]
    assert recorded["decision"] == "outside-change" and recorded["changes"]


def test_a_deployment_scaled_from_outside_is_an_outside_change():
    world = ReadBackWorld()
    serve = world.sleep

    def sleep(seconds):
        serve(seconds)
        if world.now > 1:
            world.deployments = {**world.deployments, "green": {"instanceCount": 3}}

    world.sleep = sleep
    outcome, _ = run(world, steps=[10, 100])
    assert outcome.exit_code == 4 and "deployment green: instances 1 -> 3" in outcome.message


def test_promoted_only_after_reading_back_the_last_step():
    """The last step's apply 'succeeds' but what runs is not 100 %: the rollout does not say promoted."""
    world = ReadBackWorld()
    apply = world.apply

    def apply_but_lose_the_last(step):
        apply(step)
        if step.label == "100 %":
            world.traffic = {"blue": 100, "green": 0}  # someone put blue back at once

    world.apply = apply_but_lose_the_last
    outcome, events = run(world, steps=[50, 100])
    assert outcome.exit_code == 4 and outcome.decision != "promoted"
    assert ("finished", "100 %") not in decisions(events)


def test_an_unreadable_runtime_at_the_end_is_halted_not_promoted():
    world = ReadBackWorld()
    world.read_back = lambda endpoint: (_ for _ in ()).throw(OSError("connection refused"))
    steering = Steering(world, sleep=lambda _s: None)
    plan = load_plan(STAGE_3, {"to": "green", "steps": [100]})
    stop = steering.verify_final(plan.steps[-1])
    assert stop.exit_code == 3 and "does not claim it promoted" in stop.message


def test_differences_name_each_change_a_user_would_look_for():
    plan = load_plan(STAGE_3, {"to": "green", "steps": [10, 100]})
    step = plan.steps[0]  # blue 90, green 10
    same = {"traffic": {"blue": 90, "green": 10}, "mirror": {}, "deployments": {"blue": {}, "green": {}}}
    assert differences(step, same) == []
    assert differences(step, None) == [f"endpoint {ENDPOINT} is gone"]
    assert differences(step, {**same, "mirror": {"green": 10}}) == ["mirror traffic none -> green 10"]
    assert differences(step, {**same, "deployments": {"blue": {}}}) == ["deployment green was removed"]
    assert differences(step, {**same, "deployments": {**same["deployments"], "red": {}}}) == ["deployment red was added"]
    changed_spec = {**same, "deployments": {"blue": {"spec": {"model": "a"}}, "green": {}}}
    assert differences(step, changed_spec, {"blue": {"model": "b"}}) == [
        "deployment blue: its model, code or settings changed"]


# --- the hold across processes -----------------------------------------------------------------------------

def _held(steering_dir):
    def make(plan, world):
        return HeldSteering(steering_dir, plan, world, record=None, warn=lambda _m: None)
    return make


def test_a_second_rollout_of_a_held_endpoint_is_refused_naming_the_first(tmp_path):
    directory = tmp_path / "rollouts"
    lease.acquire(directory, ENDPOINT, {"id": "first", "step": "50 %", "record": "/r/first.jsonl"})
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        doc = lease.read(directory, ENDPOINT)
        doc["holder"] = {**doc["holder"], "pid": holder.pid, "processStart": lease.process_start(holder.pid)}
        lease.write_atomically(lease.document_file(directory, ENDPOINT), json.dumps(doc))
        lease.forget(directory, ENDPOINT)
        world = ReadBackWorld()
        outcome, _ = run(world, steering=_held(directory), steps=[10, 100])
        assert outcome.exit_code == 1 and outcome.decision == "refused"
        assert f"pid {holder.pid}" in outcome.message and "step 50 %" in outcome.message
        assert "/r/first.jsonl" in outcome.message and "--force" in outcome.message
        assert world.applied == []  # nothing changed
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holder_is_taken_over_with_a_message(tmp_path):
    directory = tmp_path / "rollouts"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lease.acquire(directory, ENDPOINT, {"id": "dead-one", "step": "10 %"})
    lease.forget(directory, ENDPOINT)
    doc = lease.read(directory, ENDPOINT)
    doc["holder"]["pid"] = gone.pid
    lease.write_atomically(lease.document_file(directory, ENDPOINT), json.dumps(doc))
    notices = []
    lease.admit(directory, ENDPOINT, "a local up", notice=notices.append)
    assert "dead-one" in notices[0] and "died" in notices[0] and "taken over by a local up" in notices[0]
    history = lease.read_history(directory, ENDPOINT)
    assert history[-1]["id"] == "dead-one" and history[-1]["outcome"] == "died"


def test_force_takes_a_live_hold_over_and_the_takeover_is_recorded(tmp_path):
    directory = tmp_path / "rollouts"
    lease.acquire(directory, ENDPOINT, {"id": "running-one"})
    lease.forget(directory, ENDPOINT)  # as if another process held it: this one is alive
    with pytest.raises(lease.EndpointHeld, match="pass --force"):
        lease.admit(directory, ENDPOINT, "a local up")
    notices = []
    lease.admit(directory, ENDPOINT, "a local up", force=True, notice=notices.append)
    assert "--force: took endpoint" in notices[0]
    ended = lease.read(directory, ENDPOINT)
    assert ended["outcome"] == "taken-over" and ended["takenOverBy"]["writer"] == "a local up"
    assert lease.read_history(directory, ENDPOINT)[-1]["takenOverBy"]["writer"] == "a local up"


def test_a_rollout_whose_hold_was_taken_over_stops_without_changing_anything(tmp_path):
    directory = tmp_path / "rollouts"
    world = ReadBackWorld()
    serve = world.sleep

    def sleep(seconds):
        serve(seconds)
        if world.now > 1 and not taken:  # another process: `local up --force`
            taken.append(True)
            lease.forget(directory, ENDPOINT)
            lease.admit(directory, ENDPOINT, "pid 1 applying stage-6.yaml", force=True)
            lease._mine[(directory, ENDPOINT)] = doc_id[0]

    world.sleep = sleep
    doc_id, taken = [], []

    def make(plan, w):
        steering = HeldSteering(directory, plan, w, record=None, warn=lambda _m: None)
        doc_id.append(steering.id)
        return steering

    outcome, _ = run(world, steering=make, steps=[10, 50, 100])
    assert outcome.exit_code == 4 and outcome.decision == "taken-over"
    assert "taken over by pid 1 applying stage-6.yaml" in outcome.message
    assert world.applied == ["stage-3-green-dark.yaml", "10 %"]


def test_two_processes_taking_the_hold_at_once_cannot_both_win(tmp_path):
    """flock around read-modify-write: of 6 processes started together, exactly one holds the endpoint."""
    directory = tmp_path / "rollouts"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from mlcanary.local_runtime import lease
        start = float(sys.argv[1])
        time.sleep(max(0, start - time.time()))
        try:
            lease.acquire(Path({str(directory)!r}), {ENDPOINT!r}, {{"id": "p" + sys.argv[2]}})
            print("won", flush=True)
            time.sleep(3)
        except lease.EndpointHeld:
            print("refused", flush=True)
    """)
    import time
    start = time.time() + 3
    processes = [subprocess.Popen([sys.executable, "-c", script, str(start), str(i)], stdout=subprocess.PIPE, text=True)
                 for i in range(6)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in processes]
    assert sorted(outputs) == ["refused"] * 5 + ["won"]
    assert lease.read(directory, ENDPOINT)["id"] == f"p{outputs.index('won')}"


def test_the_hold_file_is_private_and_replaced_whole(tmp_path):
    directory = tmp_path / "rollouts"
    lease.acquire(directory, ENDPOINT, {"id": "x"})
    assert os.stat(lease.document_file(directory, ENDPOINT)).st_mode & 0o777 == 0o600
    assert os.stat(directory).st_mode & 0o777 == 0o700
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []
    lease.forget(directory, ENDPOINT)


def test_a_hold_file_that_is_not_one_is_an_error_naming_it(tmp_path):
    directory = tmp_path / "rollouts"
    directory.mkdir(mode=0o700)
    lease.document_file(directory, ENDPOINT).write_text("[1, 2")
    with pytest.raises(lease.LeaseFileError, match=f"{ENDPOINT}.json: not a JSON document"):
        lease.admit(directory, ENDPOINT, "a local up")
    lease.document_file(directory, ENDPOINT).write_text("[1, 2]")
    with pytest.raises(lease.LeaseFileError, match="not a rollout's hold"):
        lease.read(directory, ENDPOINT)


# --- every other writer asks the same hold ---------------------------------------------------------------

@pytest.fixture
def held_by_another_process(tmp_path):
    """A hold on the endpoint in tmp_path's runtime state, by a live process other than this one."""
    directory = lease.lease_dir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lease.acquire(directory, ENDPOINT, {"id": "other-1", "step": "10 %", "record": "/r/other.jsonl"})
    lease.forget(directory, ENDPOINT)
    doc = lease.read(directory, ENDPOINT)
    doc["holder"] = {**doc["holder"], "pid": holder.pid, "processStart": lease.process_start(holder.pid)}
    lease.write_atomically(lease.document_file(directory, ENDPOINT), json.dumps(doc))
    yield holder
    holder.kill()
    holder.wait()


def test_the_pulumi_local_target_resources_are_refused_on_a_held_endpoint(tmp_path, held_by_another_process):
    from mlcanary.components.local_target import (LocalDeploymentProvider, LocalEndpointProvider,
                                                  LocalTrafficProvider)
    from mlcanary.local_runtime.pulumi_access import RuntimeAccess

    runtime = RuntimeAccess()  # what __main__.py gives the providers
    with pytest.raises(lease.EndpointHeld, match=f"held by rollout other-1 \\(pid {held_by_another_process.pid}"):
        LocalTrafficProvider(runtime).update("x", {}, {"endpoint_name": ENDPOINT, "stateDir": str(tmp_path),
                                                        "traffic": {"green": 100}, "mirror_traffic": {}})
    deployment = {"endpointName": ENDPOINT, "deploymentName": "blue", "stateDir": str(tmp_path),
                  "spec": {"instanceCount": 2}}
    with pytest.raises(lease.EndpointHeld):
        LocalDeploymentProvider(runtime).delete("x", deployment)
    with pytest.raises(lease.EndpointHeld):
        LocalDeploymentProvider(runtime).update("x", {}, deployment)
    with pytest.raises(lease.EndpointHeld):
        LocalEndpointProvider(runtime).update("x", {}, {"endpointName": ENDPOINT, "authMode": "key",
                                                        "stateDir": str(tmp_path)})
    assert not (tmp_path / "runtime.json").exists()  # refused before the runtime was even started


def test_rehearse_in_a_state_dir_is_refused_on_a_held_endpoint(tmp_path, held_by_another_process):
    from conftest import PROJECT_DIR

    result = subprocess.run([sys.executable, "-m", "mlcanary.cli", "rehearse", "--state-dir", str(tmp_path),
                             str(PROJECT_DIR / "stacks" / "local" / "stage-1-create-blue.yaml")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert f"error: endpoint {ENDPOINT} is held by rollout other-1 (pid {held_by_another_process.pid}" in result.stderr
    assert "/r/other.jsonl" in result.stderr
    assert not (tmp_path / "runtime.json").exists()  # nothing was started


def test_a_killed_holder_not_yet_reaped_is_dead(tmp_path):
    """kill -9 leaves a zombie until its parent waits: its pid still answers kill(pid, 0)."""
    directory = tmp_path / "rollouts"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lease.acquire(directory, ENDPOINT, {"id": "zombie"})
        lease.forget(directory, ENDPOINT)
        doc = lease.read(directory, ENDPOINT)
        doc["holder"] = {**doc["holder"], "pid": child.pid, "processStart": lease.process_start(child.pid)}
        assert lease.holder_alive(doc)
        child.kill()
        import time
        deadline = time.monotonic() + 10
        while lease._process_state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lease.holder_alive(doc)
    finally:
        child.kill()
        child.wait()


# --- Azure: what runs is read from ARM -----------------------------------------------------------------------

class FakeArm:
    """ARM GETs as the REST spec shapes them (Microsoft.MachineLearningServices 2024-04-01, mfe.json):
    the endpoint's properties.traffic / mirrorTraffic, and the deployments list's value[].sku.capacity.
    Azure spells a deployment name as it pleases (names are case-insensitive) and omits zero shares."""

    def __init__(self, traffic, capacities):
        self.traffic, self.capacities, self.gets = traffic, capacities, 0

    def get(self, resource_id):
        self.gets += 1
        if resource_id.endswith("/deployments"):
            return {"value": [{"name": name, "sku": {"name": "Default", "capacity": c}}
                              for name, c in self.capacities.items()]}
        return {"name": ENDPOINT, "properties": {"traffic": dict(self.traffic), "mirrorTraffic": {}}}


def test_an_azure_traffic_change_made_outside_is_caught_from_arm():
    from mlcanary.rollout.azure_read_back import AzureReadBack, endpoint_resource_id

    plan = load_plan(STAGE_3, {"to": "green", "steps": [10, 100]})
    step = plan.steps[0]
    arm = FakeArm({"Blue": 90, "green": 10}, {"blue": 2, "GREEN": 1})
    clock = [0.0]
    reader = AzureReadBack(arm, endpoint_resource_id("sub", "rg", "ws", ENDPOINT), clock=lambda: clock[0])
    assert differences(step, reader.read_back(ENDPOINT)) == []
    arm.traffic = {"blue": 0, "green": 100}  # `az ml online-endpoint update --traffic "green=100"`
    clock[0] = 5.0
    assert differences(step, reader.read_back(ENDPOINT)) == []  # at most one ARM read per 15 s
    assert arm.gets == 2
    clock[0] = 16.0
    assert differences(step, reader.read_back(ENDPOINT)) == ["live traffic blue 90, green 10 -> green 100"]
    reader.invalidate()
    assert reader.read_back(ENDPOINT)["deployments"] == {"blue": {"instanceCount": 2}, "green": {"instanceCount": 1}}


def test_local_up_is_refused_before_the_gate_runs(tmp_path, held_by_another_process):
    """`local up` looks at the hold first: refused at once (no gate, no runtime started), unless --force."""
    from conftest import PROJECT_DIR

    stage = PROJECT_DIR / "stacks" / "local" / "stage-3-green-dark.yaml"
    result = subprocess.run([sys.executable, "-m", "mlcanary.cli", "local", "up", str(stage), "--state-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and f"error: endpoint {ENDPOINT} is held by rollout other-1" in result.stderr
    assert "mandatory" not in result.stdout + result.stderr and not (tmp_path / "runtime.json").exists()
    with pytest.raises(lease.EndpointHeld):
        lease.refuse_at_once(tmp_path, ENDPOINT, force=False)
    lease.refuse_at_once(tmp_path, ENDPOINT, force=True)  # --force: the apply takes the hold over
    assert lease.read(lease.lease_dir(tmp_path), ENDPOINT)["outcome"] is None  # a look changes nothing
