"""A scoring script for the runtime tests; each deployment sets its behaviour by environment variable.

MODEL_NAME     answered in every response, so tests see which deployment scored
FAIL_INIT      init() raises (the worker exits with code 3)
INIT_SLEEP     init() sleeps this many seconds first (a slow start)
ALWAYS_FAIL    run() raises for every request
ALWAYS_SLEEP   run() sleeps this many seconds first
A request body may also ask for {"fail": true} or {"sleep": seconds}.
"""

import json
import os
import time

weights = None


def init():
    global weights
    time.sleep(float(os.environ.get("INIT_SLEEP") or 0))
    if os.environ.get("FAIL_INIT"):
        raise RuntimeError("init failed on purpose")
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "weights.json"), encoding="utf-8") as file:
        weights = json.load(file)


def run(raw_data):
    body = json.loads(raw_data)
    if os.environ.get("ALWAYS_FAIL") or body.get("fail"):
        raise ValueError("scoring failed on purpose")
    time.sleep(float(os.environ.get("ALWAYS_SLEEP") or body.get("sleep", 0)))
    return {"name": os.environ.get("MODEL_NAME"), "weights": weights, "echo": body}
