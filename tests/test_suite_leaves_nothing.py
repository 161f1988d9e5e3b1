"""A test run stopped the hard way (a CI time limit, `kill -9`) leaves no runtime and no worker behind, and
a test run leaves nothing in the user's cache (~/.cache/mlcanary).

The runtimes a test starts, in the test's process or through a command it runs, belong to the suite's
process (tests/conftest.py sets $MLCANARY_RUNTIME_OWNER_PID): they stop when it is gone, and their
workers die with them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PROJECT_DIR
from mlcanary.local_runtime import owner
from mlcanary.local_runtime.client import RuntimeClient
from test_local_runtime import stop_runtime

STAGE = PROJECT_DIR / "stacks" / "local" / "stage-1-create-blue.yaml"
INNER_TEST = f'''
import os, subprocess, sys, time
from pathlib import Path

from mlcanary.local_runtime.client import RuntimeClient
from test_local_runtime import spec


def test_starts_two_runtimes_then_waits():
    here = Path(os.environ["HYGIENE_DIR"])
    client = RuntimeClient(here / "in-process")  # a runtime the test process starts itself
    client.put_endpoint("ep-killed", "key")
    client.put_deployment("ep-killed", "blue", spec("blue"))
    subprocess.run([sys.executable, "-m", "mlcanary.cli", "local", "up", {str(STAGE)!r},  # one a command starts
                    "--state-dir", str(here / "by-command")], check=True, capture_output=True)
    (here / "ready").write_text("ready")
    time.sleep(600)
'''


def processes_of(folder: Path) -> list[str]:
    """Processes that name `folder` on their command line or hold a file under it open (Linux /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fds = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if str(folder) in cmdline or any(fd.startswith(f"{folder}/") for fd in fds):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_the_owner_pid_is_read_strictly():
    assert owner.configured({}) is None
    assert owner.configured({owner.ENV_VAR: " 42 "}) == 42
    for bad in ("abc", "0", "-3", "4.5", "４２"):
        with pytest.raises(owner.BadOwner, match=owner.ENV_VAR):
            owner.configured({owner.ENV_VAR: bad})


def test_a_suite_killed_mid_run_leaves_no_runtime_or_worker(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", owner.ENV_VAR))}
    env.update(HYGIENE_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join([str(PROJECT_DIR / "tests"), env.get("PYTHONPATH", "")]))
    # The suite's own set-up, tests/conftest.py, loaded as a plugin; the inner run writes nothing but tmp_path.
    suite = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
         "--basetemp", str(tmp_path / "basetemp"), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "ready").exists():
            assert suite.poll() is None, suite.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the inner test did not start its runtimes in 300 s"
            time.sleep(0.2)
        started = {name: RuntimeClient(tmp_path / name) for name in ("in-process", "by-command")}
        assert all(client.base_url() for client in started.values())
        assert len(processes_of(tmp_path / "in-process")) >= 2  # the runtime and its worker(s)
        suite.kill()  # SIGKILL: no fixture, no finally, no atexit runs
        suite.wait(timeout=30)
        deadline = time.monotonic() + 60
        while (left := processes_of(tmp_path / "in-process") + processes_of(tmp_path / "by-command")) and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, "\n".join(left)
        # The state is kept, as after `mlcanary local stop`: a later start brings the endpoints back.
        assert (tmp_path / "by-command" / "state.json").exists()
    finally:
        if suite.poll() is None:
            suite.send_signal(signal.SIGKILL)
            suite.wait()
        for name in ("in-process", "by-command"):
            stop_runtime(RuntimeClient(tmp_path / name))


CACHE_TEST = f'''
import os, subprocess, sys, time
from pathlib import Path

from mlcanary.components.content_digest import cache_dir


def test_checks_a_local_stage():
    here = Path(os.environ["HYGIENE_DIR"])
    (here / "cache-dir").write_text(str(cache_dir()))
    done = subprocess.run([sys.executable, "-m", "mlcanary.cli", "check", {str(STAGE)!r}], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (here / "cached").write_text("\\n".join(sorted(p.name for p in cache_dir().glob("*.json"))))
'''


def test_a_test_run_leaves_the_users_cache_untouched(tmp_path):
    """`check` of a local stage remembers its folders' digests in $XDG_CACHE_HOME/mlcanary (else
    ~/.cache/mlcanary): in a test run, in a folder of the suite's own, removed when the run ends."""
    (tmp_path / "test_inner.py").write_text(CACHE_TEST)
    home = tmp_path / "home"  # the inner run's home directory: its ~/.cache must stay as it is
    (home / ".cache").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", owner.ENV_VAR, "XDG_", "MLCANARY_TEST_"))}
    env.update(HOME=str(home), HYGIENE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(PROJECT_DIR / "tests"), env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
         "--basetemp", str(tmp_path / "basetemp"), str(tmp_path / "test_inner.py")],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    used = Path((tmp_path / "cache-dir").read_text())
    assert not used.is_relative_to(home), used
    assert (tmp_path / "cached").read_text(), "the check remembered no digest: nothing was tested"
    assert not used.exists(), "the run's cache folder outlived the run"
    assert list((home / ".cache").iterdir()) == []
