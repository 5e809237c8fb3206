"""Two hashes, two names: ``file_sha256`` (the whole artifact file, what ``sha256sum`` and the store
record say) and ``payload_sha256`` (the pickled payload the manifest binds, what a loaded model and
the server say). No output calls either of them a bare ``sha256`` without saying which it is; the
HTTP ``model`` objects keep ``sha256`` as an alias of ``payload_sha256`` for existing clients.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from blackbox.cli import main
from serving import create_app
from training.__main__ import format_summary

PASSENGER = {"pclass": 3, "sex": "male", "age": 22, "sibsp": 1, "parch": 0, "fare": 7.25, "embarked": "S",
             "name": "Braund, Mr. Owen Harris"}
BARE = re.compile(r"(?<![\w_])sha256(?![\w_:])", re.IGNORECASE)  # not file_sha256 / payload_sha256 / a "sha256:HEX" fingerprint


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_inspect_push_and_list_name_each_hash(served_artifact, served_model, serving_keys, tmp_path, capsys):
    keys = ["--trusted-keys", str(serving_keys[1])]
    assert main(["inspect", str(served_artifact), *keys]) == 0
    text = capsys.readouterr().out
    assert f"payload_sha256 {served_model.sha256}" in text and f"file_sha256 {file_sha256(served_artifact)}" in text
    assert not BARE.search(text), text

    store = tmp_path / "store"
    assert main(["push", str(served_artifact), str(store), *keys, "--signing-key", str(serving_keys[0])]) == 0
    text = capsys.readouterr().out
    assert f"file_sha256 {file_sha256(served_artifact)}" in text and not BARE.search(text), text
    assert main(["list", str(store), *keys]) == 0
    text = capsys.readouterr().out
    assert "FILE_SHA256" in text and file_sha256(served_artifact)[:12] in text and not BARE.search(text), text
    assert main(["list", str(store), *keys, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["file_sha256"] == listed["sha256"] == file_sha256(served_artifact)  # the store record's field, named


def test_training_summary_names_each_hash():
    text = format_summary({"best_params": {"C": 1}, "holdout": {"accuracy": 0.8}, "cv": {"scoring": "roc_auc", "mean": 0.9,
                           "std": 0.01}, "artifact": "a.bbx", "size": 10, "file_sha256": "f" * 64, "payload_sha256": "p" * 64})
    assert re.search(f"file_sha256: +{'f' * 64}", text) and re.search(f"payload_sha256: +{'p' * 64}", text)
    assert not BARE.search(text.replace("sha256sum", "")), text


def test_every_http_model_object_says_payload_sha256(base_config, served_model):
    client = create_app(base_config).test_client()
    named = {"name": "titanic", "version": "1.0.0", "payload_sha256": served_model.sha256, "sha256": served_model.sha256}
    assert client.post("/predict", json=PASSENGER).get_json()["model"] == named
    assert client.get("/drift").get_json()["model"] == named
    (listed,) = client.get("/models").get_json()["models"]
    assert listed["payload_sha256"] == listed["sha256"] == served_model.sha256
    assert client.get("/models/titanic/ready").get_json()["payload_sha256"] == served_model.sha256
    inputs = [{"name": name, "shape": [1], "datatype": "BYTES" if isinstance(value, str) else "FP64", "data": [value]}
              for name, value in PASSENGER.items()]
    answer = client.post("/v2/models/titanic/infer", json={"inputs": inputs}).get_json()
    assert answer["parameters"]["payload_sha256"] == answer["parameters"]["sha256"] == served_model.sha256
    metadata = client.get("/v2/models/titanic").get_json()
    assert metadata["parameters"]["payload_sha256"] == served_model.sha256


def test_the_prediction_log_column_is_documented_as_the_payloads():
    from blackbox.monitoring import predlog

    assert "model_sha256" in predlog.__doc__ and "payload" in predlog.__doc__.split("model_sha256")[1][:200]
