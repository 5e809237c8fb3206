"""The baseline for bench_server.py: the bare Flask app most teams would write first.

Loads the artifact's pipeline once per worker and answers ``POST /predict``
with ``pipeline.predict(pd.DataFrame(records))``: no schema, no validation, no
probabilities, no metrics, no logs. Run as bench_server.py does:

    BASELINE_ARTIFACT=model.bbx BASELINE_TRUSTED_KEY=key.pub \\
        gunicorn -w 2 -k sync --chdir bench flask_baseline:app
"""

from __future__ import annotations

import os
import sys

import pandas as pd
from flask import Flask, jsonify, request

import blackbox

pipeline = blackbox.load(os.environ["BASELINE_ARTIFACT"], trusted_keys=[os.environ["BASELINE_TRUSTED_KEY"]]).estimator
print("baseline_loaded", file=sys.stderr, flush=True)
app = Flask(__name__)


@app.post("/predict")
def predict():  # noqa: ANN201  (the baseline stays as bare as possible)
    body = request.get_json()
    records = body if isinstance(body, list) else [body]
    return jsonify(predictions=pipeline.predict(pd.DataFrame(records)).tolist())
