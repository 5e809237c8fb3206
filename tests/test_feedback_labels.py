"""``POST /feedback`` checks each label against the classes of the model that made the prediction.

A label the model does not have (``"maybe"`` for classes ``[0, 1]``) is a 422
naming the entry and field, never stored; a label that names a class in another
JSON spelling (``1.0`` or ``"1"`` for the class ``1``) is stored as the class
itself, so the exported label column keeps the classes' type. With several
models, the logged prediction says which model's classes apply, else the
addressed one (``/models/NAME/feedback``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import blackbox
from blackbox.cli import main
from blackbox.monitoring import read_log
from serving import create_app

from _helpers import LOG_AUTH, LOG_KEY, LOG_KEY_ID, PASSENGER, details, feedback, make_app, outcome, predict, wait_for

pytestmark = pytest.mark.usefixtures("close_recorders")


def test_a_label_the_model_does_not_have_is_refused_and_spellings_of_a_class_are_stored_as_it(base_config, tmp_path):
    db = tmp_path / "log.db"
    app = make_app(base_config, str(db))
    client = app.test_client()
    ids = [predict(client, PASSENGER)["request_id"] for _ in range(6)]
    wait_for(lambda: outcome(app, "written") == 6)

    response = feedback(client, [{"request_id": ids[0], "label": "maybe"}, {"request_id": ids[1], "label": 1},
                                 {"request_id": ids[2], "label": True}, {"request_id": ids[3], "label": 2}])
    assert response.status_code == 422, response.data
    assert response.get_json()["error"]["code"] == "invalid_feedback"
    assert details(response) == [(0, "label", "unknown_class"), (2, "label", "unknown_class"), (3, "label", "unknown_class")]
    problem = response.get_json()["error"]["details"][0]
    assert "[0, 1]" in problem["expected"] and "titanic" in problem["expected"] and problem["received"] == '"maybe"'
    assert read_log(str(db), with_feedback=True)["label"].isna().all()  # nothing of a refused body is stored

    stored = feedback(client, [{"request_id": ids[0], "label": 1}, {"request_id": ids[1], "label": 1.0},
                               {"request_id": ids[2], "label": "1"}, {"request_id": ids[3], "label": " 0 "},
                               {"request_id": ids[4], "label": 0}])
    assert stored.status_code == 200, stored.data
    assert feedback(client, {"request_id": ids[0], "label": "maybe"}).status_code == 422  # cannot replace the real label
    assert feedback(client, {"request_id": "not-logged-yet", "label": "maybe"}).status_code == 422  # the only model's classes

    labels = read_log(str(db), with_feedback=True)["label"].tolist()
    assert labels == [1, 1, 1, 0, 0, None] and all(type(label) is int for label in labels[:5])
    out = tmp_path / "train.csv"
    assert main(["export-log", str(db), "-o", str(out), "--labelled-only"]) == 0
    assert pd.read_csv(out)["label"].dtype == np.int64  # numbers, not text


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> dict[str, str]:
    """A classifier with string classes and a regressor, over the same two inputs."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(size=200), "n": rng.integers(0, 5, size=200)})
    folder = tmp_path_factory.mktemp("feedback-models")
    classifier = make_pipeline(StandardScaler(), LogisticRegression()).fit(train, np.where(train["x"] > 0, "yes", "no"))
    regressor = make_pipeline(StandardScaler(), LinearRegression()).fit(train, 2 * train["x"] + train["n"])
    return {
        "yesno": str(blackbox.save(classifier, folder / "yesno.bbx", train_data=train, name="yesno", version="1.0.0")),
        "price": str(blackbox.save(regressor, folder / "price.bbx", train_data=train, name="price", version="1.0.0")),
    }


def test_with_several_models_the_logged_model_or_the_addressed_one_decides(two_models, tmp_path):
    db = tmp_path / "log.db"
    app = create_app({"ARTIFACT": list(two_models.values()), "PREDICTION_LOG": str(db), "API_KEYS": {LOG_KEY_ID: LOG_KEY}})
    client = app.test_client()
    record = {"x": 0.5, "n": 2}
    yes = client.post("/models/yesno/predict", json=record, headers=LOG_AUTH).get_json()["request_id"]
    price = client.post("/models/price/predict", json=record, headers=LOG_AUTH).get_json()["request_id"]
    wait_for(lambda: outcome(app, "written") == 2)

    wrong = feedback(client, [{"request_id": yes, "label": 3.5}, {"request_id": price, "label": "yes"},
                              {"request_id": price, "label": True}])
    assert wrong.status_code == 422, wrong.data
    assert details(wrong) == [(0, "label", "unknown_class"), (1, "label", "invalid"), (2, "label", "invalid")]
    assert "yesno" in wrong.get_json()["error"]["details"][0]["expected"]
    assert "price" in wrong.get_json()["error"]["details"][1]["expected"]

    assert feedback(client, [{"request_id": yes, "label": "yes"}, {"request_id": price, "label": "3.5"}]).status_code == 200
    labels = read_log(str(db), with_feedback=True).set_index("request_id")["label"]
    assert labels[yes] == "yes" and labels[price] == 3.5 and type(labels[price]) is float

    unlogged = feedback(client, {"request_id": "not-logged-yet", "label": "yes"})
    assert unlogged.status_code == 422 and details(unlogged) == [(0, "label", "unknown_model")]
    assert "/models/NAME/feedback" in unlogged.get_json()["error"]["details"][0]["expected"]
    addressed = client.post("/models/yesno/feedback", json=[{"request_id": "not-logged-yet", "label": "yes"},
                                                             {"request_id": "not-logged-either", "label": "maybe"}], headers=LOG_AUTH)
    assert addressed.status_code == 422 and details(addressed) == [(1, "label", "unknown_class")]
    ok = client.post("/models/yesno/feedback", json={"request_id": "not-logged-yet", "label": "no"}, headers=LOG_AUTH)
    assert ok.status_code == 200 and ok.get_json()["feedback"][0]["known"] is False
    assert client.post("/models/nope/feedback", json={"request_id": "r", "label": "no"}, headers=LOG_AUTH).status_code == 404
    assert client.post("/models/yesno/feedback", json={"request_id": "r", "label": "no"}).status_code == 401
    assert json.loads(client.get("/openapi.json", headers=LOG_AUTH).data)  # the document still builds
