"""Synthetic traffic from this process (`--load RPS --request-file FILE`), for rehearsals and demos.

Requests are sent at a fixed total rate by a few threads; every answer is counted by the deployment
that gave it (the `azureml-model-deployment` header), so the summary can say which client requests
failed and where.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

PIN_HEADER = "azureml-model-deployment"


@dataclass
class LoadReport:
    sent: int = 0
    failed: int = 0
    by_deployment: Counter = field(default_factory=Counter)  # answers per deployment
    failed_by_deployment: Counter = field(default_factory=Counter)  # failures per deployment ("" = none)


class Load:
    def __init__(self, scoring_uri: str, key: str, body: bytes, rps: float, timeout_s: float = 30.0):
        self.uri, self.body, self.rps, self.timeout_s = scoring_uri, body, rps, timeout_s
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        senders = max(2, min(32, math.ceil(self.rps / 10)))
        for index in range(senders):
            thread = threading.Thread(target=self._send, args=(senders, index), daemon=True, name=f"load-{index}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> LoadReport:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)
        return self.report

    def _send(self, senders: int, index: int) -> None:
        session = requests.Session()
        period = senders / self.rps
        next_at = time.monotonic() + index * period / senders
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at = max(next_at + period, time.monotonic() - period)  # fall behind, never burst to catch up
            try:
                answer = session.post(self.uri, data=self.body, headers=self.headers, timeout=self.timeout_s)
                deployment, ok = answer.headers.get(PIN_HEADER, ""), answer.status_code == 200
            except requests.RequestException:
                deployment, ok = "", False
            with self._lock:
                self.report.sent += 1
                self.report.by_deployment[deployment] += 1
                if not ok:
                    self.report.failed += 1
                    self.report.failed_by_deployment[deployment] += 1
