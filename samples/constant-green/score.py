"""A green that is healthy, fast and wrong: it answers like the fraud model, with the constant score 0.5.

The same failure as the green (`model-2`) of Microsoft's safe-rollout tutorial, which returns [0.5, 0.5]
for every request: status 200, as fast as blue, nothing for an error or latency judge to see.
`mlcanary rollout --compare-path scores` rolls it back in the mirror phase (docs/answers.md).
"""

import json


def init():
    pass


def run(raw_data):
    rows = json.loads(raw_data)["data"]
    return {"model": "fraud-model", "version": 2, "scores": [0.5 for _ in rows]}
