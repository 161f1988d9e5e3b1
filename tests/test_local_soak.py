"""Soak: the router under concurrent load across idle gaps, worker kills, stage changes and a full
disk (bench/soak.py drives the load and the events). CI runs the short version; the long one is
marked slow (`./tasks test -m slow`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlcanary.local_runtime import paths
from mlcanary.local_runtime.client import RuntimeClient, RuntimeRefusal
from mlcanary.local_runtime.store import FAULT_DISK_FULL_ENV
from mlcanary.local_runtime.workers import KEEPALIVE_ENV
from test_local_robustness import environment, fill, mount_small_disk
from test_local_runtime import stop_runtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import soak  # noqa: E402


@pytest.fixture
def runtime(tmp_path):
    """A runtime on a small tmpfs where this machine lets us mount one, else on a normal folder with a
    disk-full fault it can switch on; workers' keep-alive 1 s. Yields (client, make_disk_full)."""
    root = tmp_path / "small"
    flag = tmp_path / "disk-is-full"
    mounted = mount_small_disk(root, "16m")  # the soak's worker logs alone take ~1 MB; the test fills the rest
    client = RuntimeClient(root)
    with environment(**{KEEPALIVE_ENV: "1", FAULT_DISK_FULL_ENV: str(flag)}):
        client.ensure_running()

    def make_disk_full() -> Path:
        if mounted:
            return fill(root)
        flag.touch()
        return flag

    yield client, make_disk_full
    stop_runtime(client)
    if mounted:
        subprocess.run(["umount", "-l", str(root)], check=False)


def full_disk_under_load(client: RuntimeClient, make_disk_full) -> soak.Result:
    """A full disk refuses changes (naming the cause) while requests keep being answered."""
    client.put_endpoint(soak.ENDPOINT, "key")
    client.put_deployment(soak.ENDPOINT, "blue", soak.deployment("v1"))
    client.set_traffic(soak.ENDPOINT, {"blue": 100}, {})
    uri = client.status()["endpoints"][soak.ENDPOINT]["scoringUri"]
    result = soak.Result()
    load = soak.Load(uri, client.keys(soak.ENDPOINT)["primaryKey"], 2, result)
    load.thread.start()
    load.running.set()
    try:
        time.sleep(0.5)
        filler = make_disk_full()
        with pytest.raises(RuntimeRefusal, match=r"no space left on device: "):
            client.put_deployment(soak.ENDPOINT, "green", soak.deployment("v2"))
        with pytest.raises(RuntimeRefusal, match=r"no space left on device: .*state\.json"):
            client.set_traffic(soak.ENDPOINT, {"blue": 0}, {})
        time.sleep(0.5)
        filler.unlink()
        client.put_deployment(soak.ENDPOINT, "green", soak.deployment("v2"))
        time.sleep(0.5)
    finally:
        load.running.clear()
        load.stopped.set()
        load.thread.join(60)
    endpoint = client.status()["endpoints"][soak.ENDPOINT]
    assert endpoint["traffic"] == {"blue": 100} and sorted(endpoint["deployments"]) == ["blue", "green"]
    assert "green" in paths.state_file(client.root).read_text()
    client.delete_endpoint(soak.ENDPOINT)
    return result


def check(result: soak.Result) -> None:
    assert result.requests > 200
    assert result.failed == 0, result.report()
    assert set(soak.EVENTS) <= set(result.events) and any(e.startswith("idle") for e in result.events)


def test_short_soak_loses_no_request(runtime):
    client, make_disk_full = runtime
    result = soak.soak(client, seconds=12, clients=3, burst_s=2.0, idle_s=1.8)
    check(result)
    disk = full_disk_under_load(client, make_disk_full)
    assert disk.requests > 20 and disk.failed == 0, disk.report()


@pytest.mark.slow
def test_long_soak_loses_no_request_and_no_memory(runtime):
    client, make_disk_full = runtime
    result = soak.soak(client, seconds=180, clients=4, burst_s=4.0, idle_s=2.5)
    check(result)
    assert result.rss_end_mib < result.rss_start_mib * 1.5 + 20, result.report()
    disk = full_disk_under_load(client, make_disk_full)
    assert disk.failed == 0, disk.report()
