"""What a hostile or careless client can send, and what the server answers: bounded memory, 4xx, small answers.

Each test names the review finding it covers (memory in the drift window, 500s for
client mistakes, answers far larger than their request, readiness while a model call
is overdue, out-of-range typed values on /v2).
"""

from __future__ import annotations

import pytest

from serving import create_app
from serving.state import EXTENSION


@pytest.fixture(scope="module")
def config(served_artifact, serving_keys) -> dict:
    return {"ARTIFACT": str(served_artifact), "LOAD_OPTIONS": {"trusted_keys": [str(serving_keys[1])]}, "DRIFT_INTERVAL": 0}


def retained(app) -> int:
    """Characters the drift window holds: every key and every string value of its records."""
    window = app.extensions[EXTENSION].monitor._window
    return sum(len(str(k)) + (len(v) if isinstance(v, str) else 8) for record in window for k, v in record.items())


def test_the_drift_window_keeps_only_schema_fields_with_long_strings_truncated(config, passengers, served_model):
    app = create_app({**config, "DRIFT_WINDOW": 50})
    client = app.test_client()
    record = passengers[0]
    text_field = next(f.name for f in served_model.schema.fields if f.kind in ("string", "category"))
    for _ in range(5):
        huge = {**record, "junk": "A" * 1_000_000, text_field: "B" * 1000}  # the schema refuses strings over 1024 characters
        response = client.post("/predict", json=huge)
        assert response.status_code == 200, (text_field, response.get_json())
    window = app.extensions[EXTENSION].monitor._window
    assert window, "the records were not observed"
    assert all(set(r) <= set(served_model.schema.columns) for r in window)
    assert retained(app) < 5 * (len(served_model.schema.columns) * 20 + 400)  # schema fields only, 1000 chars cut to the log's 256 + digest
