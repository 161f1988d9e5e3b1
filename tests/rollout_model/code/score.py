"""A scoring script for the rollout tests: a deployment fails or slows down by environment variable.

FAIL_RATE      fraction of requests whose run() raises (the endpoint answers 424)
EXTRA_SLEEP_S  seconds every run() sleeps first
"""

import json
import os
import random
import time

weights = None


def init():
    global weights
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "weights.json"), encoding="utf-8") as file:
        weights = json.load(file)


def run(raw_data):
    time.sleep(float(os.environ.get("EXTRA_SLEEP_S") or 0))
    if random.random() < float(os.environ.get("FAIL_RATE") or 0):
        raise ValueError("failing on purpose")
    return {"weights": weights, "echo": json.loads(raw_data)}
