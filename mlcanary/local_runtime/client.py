"""Talking to the local runtime: find it through the state directory, start it when asked."""

from __future__ import annotations

import http.client
import urllib.parse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mlcanary.local_runtime import paths
from mlcanary.local_runtime.protocol import CONTROL_TOKEN_HEADER

START_TIMEOUT_S = 660.0  # the runtime restores its deployments (each within its start limit) before it answers


class RuntimeRefusal(RuntimeError):
    """The runtime refused or failed a request; the message is the runtime's own."""

    def __init__(self, status: int, body: dict[str, Any]):
        self.status = status
        self.body = body
        lines = [body.get("message", f"HTTP {status}")] + [f"  {p}" for p in body.get("problems", [])]
        super().__init__("\n".join(lines))


class NotRunning(RuntimeError):
    pass


class RuntimeClient:
    def __init__(self, root: Path, metrics_address: str | None = None):
        self.root = root
        self.metrics_address = metrics_address  # for a runtime this client starts; else its environment's
        self._port: int | None = None
        self._token = ""

    # --- finding and starting --------------------------------------------------------------

    def base_url(self) -> str | None:
        """The control plane of a live runtime for this state directory, or None."""
        try:
            info = json.loads(paths.runtime_file(self.root).read_text())
            os.kill(info["pid"], 0)
        except (OSError, ValueError, KeyError):
            return None
        self._port, self._token = info["controlPort"], info.get("token", "")
        try:
            if self._request("GET", "/health", timeout=2)[0] < 400:
                return f"http://127.0.0.1:{self._port}"
        except (OSError, http.client.HTTPException, ValueError):
            pass
        return None

    def _request(self, method: str, path: str, body: Any = None, *, timeout: float) -> tuple[int, str, bytes]:
        """(status, content type, body) of one control-plane request, on a connection of its own (the
        standard library's client: commands that merely ask the runtime start without importing requests)."""
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=timeout)
        try:
            headers = {CONTROL_TOKEN_HEADER: self._token}
            data = None
            if body is not None:
                data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
            # Names travel percent-encoded (a name with a control character reaches the control plane,
            # which refuses it by name, instead of failing in the client as an invalid URL).
            connection.request(method, urllib.parse.quote(path, safe="/?=&"), body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            connection.close()

    def info(self) -> dict[str, Any]:
        """runtime.json of the live runtime (pid, ports, metrics address), or {} when none answers."""
        try:
            return json.loads(paths.runtime_file(self.root).read_text()) if self.base_url() else {}
        except (OSError, ValueError):
            return {}

    def pid(self) -> int | None:
        try:
            return json.loads(paths.runtime_file(self.root).read_text())["pid"] if self.base_url() else None
        except (OSError, ValueError, KeyError):
            return None

    def ensure_running(self) -> str:
        url = self.base_url()
        if url:
            return url
        try:
            paths.ensure_private_dir(self.root)
        except paths.UnsafeStateDir as err:
            raise NotRunning(f"the local runtime refused to start: {err}") from None
        paths.runtime_file(self.root).unlink(missing_ok=True)
        extra = ["--metrics-address", self.metrics_address] if self.metrics_address else []
        try:
            stderr = paths.open_private(paths.runtime_stderr(self.root), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except OSError as err:
            raise NotRunning(f"the local runtime cannot start: {err.filename}: {err.strerror}") from None
        with os.fdopen(stderr, "wb") as printed:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlcanary.local_runtime.server", "--state-dir", str(self.root), *extra],
                stdout=printed, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            url = self.base_url()
            if url:
                return url
            if process.poll() is not None:
                raise NotRunning(self._why_it_stopped(process.returncode))
            time.sleep(0.1)
        raise NotRunning(f"the local runtime did not start within {START_TIMEOUT_S:.0f} s; "
                         f"see {paths.runtime_log(self.root)}")

    def _why_it_stopped(self, code: int) -> str:
        try:
            printed = paths.runtime_stderr(self.root).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            printed = ""
        last = printed.splitlines()[-1] if printed else f"it exited with code {code}"
        return f"the local runtime refused to start: {last} (see {paths.runtime_log(self.root)})"

    def _url(self, start: bool) -> str:
        url = self.ensure_running() if start else self.base_url()
        if url is None:
            raise NotRunning(f"no local runtime is running for {self.root}")
        return url

    def call(self, method: str, path: str, body: Any = None, *, start: bool = True, timeout: float = 600) -> Any:
        self._url(start)
        try:
            status, content_type, data = self._request(method, path, body, timeout=timeout)
        except (OSError, http.client.HTTPException) as err:
            raise NotRunning(
                f"the local runtime stopped answering during {method} {path} ({type(err).__name__}); "
                f"see {paths.runtime_log(self.root)}") from None
        text = data.decode("utf-8", errors="replace")
        if status >= 400:
            try:
                payload = json.loads(text)
            except ValueError:
                payload = {"message": text}
            raise RuntimeRefusal(status, payload if isinstance(payload, dict) else {"message": text})
        return json.loads(text) if "json" in content_type else text

    # --- operations --------------------------------------------------------------------------

    def status(self, start: bool = False) -> dict[str, Any]:
        return self.call("GET", "/status", start=start)

    def put_endpoint(self, name: str, auth_mode: str) -> dict[str, Any]:
        return self.call("PUT", f"/endpoints/{name}", {"authMode": auth_mode})

    def delete_endpoint(self, name: str) -> None:
        self.call("DELETE", f"/endpoints/{name}", start=False)

    def keys(self, name: str) -> dict[str, str]:
        return self.call("GET", f"/endpoints/{name}/keys", start=False)

    def put_deployment(self, endpoint: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Answers once every instance is healthy: allow the start limit its probe settings give, and more."""
        from mlcanary.local_runtime.workers import StartLimit

        return self.call("PUT", f"/endpoints/{endpoint}/deployments/{name}", spec,
                         timeout=max(600, StartLimit.of(spec).seconds + 120))

    def cancel_change(self, endpoint: str, name: str) -> bool:
        """Stop a deployment change in progress (True if one was); answers once it has cleaned up. On a
        connection of its own, since the request that asked for the change still waits on the other."""
        self._url(start=False)
        status, _, data = self._request("POST", f"/endpoints/{endpoint}/deployments/{name}/cancel", timeout=120)
        return status < 400 and json.loads(data).get("cancelled", False)

    def delete_deployment(self, endpoint: str, name: str) -> None:
        self.call("DELETE", f"/endpoints/{endpoint}/deployments/{name}")

    def set_traffic(self, endpoint: str, traffic: dict[str, int], mirror: dict[str, int]) -> dict[str, Any]:
        return self.call("PUT", f"/endpoints/{endpoint}/traffic", {"traffic": traffic, "mirrorTraffic": mirror})

    def logs(self, endpoint: str, deployment: str, lines: int) -> str:
        return self.call("GET", f"/endpoints/{endpoint}/deployments/{deployment}/logs?lines={lines}", start=False)

    def set_comparison(self, endpoint: str, compare_path: str | None, output_tolerance: str | None) -> dict[str, Any]:
        """Compare the answers of mirrored requests on `endpoint` (local_runtime/pairing.py)."""
        return self.call("PUT", f"/endpoints/{endpoint}/comparison",
                         {"comparePath": compare_path, "outputTolerance": output_tolerance}, start=False)

    def stop_comparison(self, endpoint: str) -> None:
        self.call("PUT", f"/endpoints/{endpoint}/comparison", {"off": True}, start=False)

    def answers(self, endpoint: str, since: int = 0) -> dict[str, Any]:
        return self.call("GET", f"/endpoints/{endpoint}/answers?since={since}", start=False)

    def metrics(self) -> str:
        return self.call("GET", "/metrics", start=False)

    def shutdown(self, timeout_s: float = 60) -> None:
        pid = self.pid()
        if pid is None:
            return
        self.call("POST", "/shutdown", start=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _exited(pid):
                return
            time.sleep(0.05)
        raise NotRunning(f"the runtime (pid {pid}) did not stop within {timeout_s:.0f} s")


def _exited(pid: int) -> bool:
    """True once `pid` is gone. A runtime this process started must be reaped, or it stays a zombie."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return True
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    return False
