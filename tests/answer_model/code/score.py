"""A scoring script for the answer-judge tests: a model that answers right, or healthy and fast but wrong.

ANSWER    right (default): {"model": ..., "scores": [one logistic score per row]}
          constant: every score 0.5 (the green of Microsoft's safe-rollout tutorial)
          dict: the scores as an object {"0": ..., "1": ...} where a list was (a shape change)
OFF_RATE  share of answers whose scores are off: multiplied by 1 + OFF_BY (default 0.5)
SCALE     every score multiplied by this (1.005: within a 1 % tolerance)
SLEEP_S   seconds every answer takes first
"""

import json
import math
import os
import random
import time

model = None


def init():
    global model
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "weights.json"), encoding="utf-8") as file:
        model = json.load(file)


def run(raw_data):
    time.sleep(float(os.environ.get("SLEEP_S") or 0))
    rows = json.loads(raw_data)["data"]
    scores = [1 / (1 + math.exp(-(model["bias"] + sum(w * x for w, x in zip(model["weights"], row))))) for row in rows]
    answer = os.environ.get("ANSWER") or "right"
    if answer == "constant":
        scores = [0.5 for _ in scores]
    scale = float(os.environ.get("SCALE") or 1)
    if random.random() < float(os.environ.get("OFF_RATE") or 0):
        scale *= 1 + float(os.environ.get("OFF_BY") or 0.5)
    scores = [round(s * scale, 6) for s in scores]
    if answer == "dict":
        return {"model": "answer-test", "scores": {str(i): s for i, s in enumerate(scores)}}
    return {"model": "answer-test", "scores": scores}
