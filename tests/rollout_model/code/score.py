"""A scoring script for the rollout tests: a deployment fails or slows down by environment variable.

FAIL_RATE      fraction of requests whose run() raises (the endpoint answers 424)
EXTRA_SLEEP_S  seconds every run() sleeps first
LEAK_KB_PER_REQUEST  kilobytes every run() keeps for good (a leaking model)
"""

import json
import os
import random
import time

weights = None
leaked = []


def init():
    global weights
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "weights.json"), encoding="utf-8") as file:
        weights = json.load(file)


def run(raw_data):
    leaked.append(b"\1" * (int(os.environ.get("LEAK_KB_PER_REQUEST") or 0) * 1024))  # touched, so resident
    time.sleep(float(os.environ.get("EXTRA_SLEEP_S") or 0))
    if random.random() < float(os.environ.get("FAIL_RATE") or 0):
        raise ValueError("failing on purpose")
    return {"weights": weights, "echo": json.loads(raw_data)}
