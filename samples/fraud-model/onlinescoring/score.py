"""Scoring script of the sample fraud model, in Azure ML's contract: init() once, run(raw_data) per request.

The model is a small logistic regression stored as JSON, so the sample needs no ML libraries.
Azure mounts a registered model folder at $AZUREML_MODEL_DIR/<folder name>; so does the local target.
SAMPLE_FAIL_RATE (a fraction) makes that share of requests fail, to rehearse a rollback
(stacks/local/rollout-bad-green.yaml).
"""

import json
import logging
import math
import os
import random

model = None


def init():
    global model
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.json")
    with open(path, encoding="utf-8") as file:
        model = json.load(file)
    logging.info("loaded %s version %s", model["name"], model["version"])


def run(raw_data):
    if random.random() < float(os.environ.get("SAMPLE_FAIL_RATE") or 0):
        raise RuntimeError("failing on purpose (SAMPLE_FAIL_RATE)")
    rows = json.loads(raw_data)["data"]
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == len(model["weights"]) for r in rows):
        raise ValueError(f"data must be a list of rows of {len(model['weights'])} numbers")
    scores = [
        1 / (1 + math.exp(-(model["bias"] + sum(w * x for w, x in zip(model["weights"], row)))))
        for row in rows
    ]
    return {"model": model["name"], "version": model["version"], "scores": [round(s, 4) for s in scores]}
