"""The ceiling for bench_server.py: the least a Flask app under gunicorn can do for a prediction request.

Parses the JSON body and answers a constant; no model, no validation, no
metrics, no logs. bench_server.py runs it with ``blackbox serve``'s own
worker and thread settings (gunicorn's gthread, 2 workers x serving.cli.DEFAULT_THREADS threads,
keep-alive 5 s), so the difference to blackbox is what blackbox does per
request, not how gunicorn is set up:

    gunicorn -w 2 -k gthread --threads 16 --keep-alive 5 --chdir bench flask_ceiling:app
"""

from __future__ import annotations

import sys

from flask import Flask, jsonify, request

print("ceiling_loaded", file=sys.stderr, flush=True)
app = Flask(__name__)


@app.post("/predict")
def predict():  # noqa: ANN201  (as bare as possible)
    request.get_json()
    return jsonify(predictions=[0])
