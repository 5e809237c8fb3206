"""Open Inference Protocol v2: every REST route, the column-tensor mapping, its errors, and a real tritonclient.

Predictions are always compared with the served artifact loaded in-process.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from serving import create_app

from _helpers import CI_KEY

DATATYPES = {"integer": "INT64", "number": "FP64", "boolean": "BOOL", "string": "BYTES", "category": "BYTES"}


@pytest.fixture(scope="module")
def client(base_config):
    return create_app(base_config).test_client()


def tensors(model, records: list[dict], *, nested: bool = False) -> list[dict]:
    """One tensor per schema column, datatype from the schema, null for a missing value."""
    out = []
    for field in model.schema.fields:
        data = [record.get(field.name) for record in records]
        out.append({"name": field.name, "shape": [len(records), 1] if nested else [len(records)],
                    "datatype": DATATYPES[field.kind], "data": [[v] for v in data] if nested else data})
    return out


def infer(client, body, path="/v2/models/titanic/infer", **kwargs):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kwargs)


def v2_error(response, status: int) -> dict:
    assert response.status_code == status, response.data
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    return body


def test_server_metadata_live_and_ready(client):
    meta = client.get("/v2").get_json()
    assert meta["name"] == "blackbox" and meta["version"] and meta["extensions"] == []
    assert client.get("/v2/health/live").get_json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.get_json() == {"ready": True}
    assert client.get("/v2/models/titanic/ready").get_json() == {"name": "titanic", "ready": True}
    assert client.get("/v2/models/titanic/versions/1.0.0/ready").status_code == 200


def test_model_metadata_is_generated_from_the_schema(client, served_model):
    for path in ("/v2/models/titanic", "/v2/models/titanic/versions/1.0.0"):
        meta = client.get(path).get_json()
        assert meta["name"] == "titanic" and meta["versions"] == ["1.0.0"] and meta["platform"] == "blackbox"
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
            (f.name, DATATYPES[f.kind], [-1]) for f in served_model.schema.fields]
        assert meta["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]},
                                   {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}]
        assert json.loads(meta["parameters"]["classes"]) == [0, 1]


@pytest.mark.parametrize("nested", [False, True], ids=["[N]", "[N,1]"])
def test_infer_a_batch_matches_the_model_in_process(client, served_model, passengers, nested):
    body = {"id": "req-42", "parameters": {"content_type": "pd"}, "inputs": tensors(served_model, passengers, nested=nested)}
    response = infer(client, body)
    assert response.status_code == 200, response.data
    answer = response.get_json()
    assert answer["model_name"] == "titanic" and answer["model_version"] == "1.0.0" and answer["id"] == "req-42"
    assert answer["parameters"]["sha256"] == served_model.sha256
    outputs = {o["name"]: o for o in answer["outputs"]}
    n = len(passengers)
    assert outputs["predict"]["shape"] == [n] and outputs["predict"]["datatype"] == "INT64"
    assert outputs["predict"]["data"] == served_model.predict_batch(passengers)
    assert outputs["predict_proba"]["shape"] == [n, 2] and outputs["predict_proba"]["datatype"] == "FP64"
    expected = served_model.predict_proba(passengers)
    assert np.array(outputs["predict_proba"]["data"]).reshape(n, 2).tolist() == expected


def test_requested_outputs_and_versioned_infer(client, served_model, passengers):
    body = {"inputs": tensors(served_model, passengers[:3]), "outputs": [{"name": "predict"}]}
    answer = infer(client, body, "/v2/models/titanic/versions/1.0.0/infer").get_json()
    assert [o["name"] for o in answer["outputs"]] == ["predict"]
    assert answer["id"] == answer["parameters"]["request_id"]  # no id sent: ours
    assert "outputs" in v2_error(infer(client, {**body, "outputs": [{"name": "transform"}]}), 400)["error"]


def test_nan_in_a_float_tensor_is_a_missing_value(client, served_model, passengers):
    records = [dict(p, age=None) for p in passengers[:4]]
    inputs = tensors(served_model, records)
    for tensor in inputs:
        if tensor["name"] == "age":
            tensor["data"] = [math.nan] * 4
    data = json.dumps({"inputs": inputs})  # json.dumps writes NaN, as numpy clients do
    assert "NaN" in data
    response = client.post("/v2/models/titanic/infer", data=data, content_type="application/json")
    assert response.status_code == 200, response.data
    assert response.get_json()["outputs"][0]["data"] == served_model.predict_batch(records)


def test_unknown_model_and_wrong_version_are_404(client, served_model, passengers):
    body = {"inputs": tensors(served_model, passengers[:2])}
    assert "nope" in v2_error(infer(client, body, "/v2/models/nope/infer"), 404)["error"]
    assert "9.9.9" in v2_error(infer(client, body, "/v2/models/titanic/versions/9.9.9/infer"), 404)["error"]
    v2_error(client.get("/v2/models/titanic/versions/9.9.9"), 404)
    v2_error(client.get("/v2/models/nope"), 404)


def test_schema_problems_are_400_with_the_same_field_level_errors(client, served_model, passengers):
    records = [dict(p) for p in passengers[:3]]
    inputs = tensors(served_model, records)
    for tensor in inputs:
        if tensor["name"] == "sex":
            tensor["data"][1] = "robot"  # an unseen category is a warning, not an error
        if tensor["name"] == "age":
            tensor["datatype"], tensor["data"] = "BYTES", ["old", "22", "young"]
    body = v2_error(infer(client, {"inputs": inputs}), 400)
    native = client.post("/predict", json=[dict(r, age=a) for r, a in zip(records, ["old", "22", "young"])]).get_json()
    assert body["details"] == native["error"]["details"]  # the schema's own problems, row = element index
    assert {(d["row"], d["field"]) for d in body["details"]} >= {(0, "age"), (2, "age")}
    assert "record 0, field 'age'" in body["error"]


@pytest.mark.parametrize("change, words", [
    (lambda inputs: inputs[0].update(data=inputs[0]["data"][:-1]), "elements"),
    (lambda inputs: inputs[1].update(shape=[3], data=inputs[1]["data"][:3]), "first tensor"),
    (lambda inputs: inputs[0].update(shape=[4, 2]), "[N, 1]"),
    (lambda inputs: inputs[0].update(datatype="UINT99"), "datatype"),
    (lambda inputs: inputs[0].update(datatype="BYTES"), "BYTES element"),
    (lambda inputs: inputs.append(dict(inputs[0])), "duplicate"),
    (lambda inputs: inputs[0].update(data="1,2,3,4"), "list"),
    (lambda inputs: inputs[0].update(datatype="INT8", data=[300, *inputs[0]["data"][1:]]), "INT8 element"),
    (lambda inputs: inputs[0].update(datatype="FP16", data=[1e10, *inputs[0]["data"][1:]]), "FP16 element"),
    (lambda inputs: inputs[0].update(datatype="UINT8", data=[-1, *inputs[0]["data"][1:]]), "UINT8 element"),
], ids=["length", "rows", "2-D", "datatype", "element-type", "duplicate", "data", "int8-range", "fp16-range", "uint-sign"])
def test_tensor_problems_are_400_naming_the_tensor(client, served_model, passengers, change, words):
    inputs = tensors(served_model, passengers[:4])
    change(inputs)
    body = v2_error(infer(client, {"inputs": inputs}), 400)
    assert words in body["error"], body["error"]
    assert body["details"][0]["field"] in {tensor["name"] for tensor in inputs}


@pytest.mark.parametrize("body", [[], {}, {"inputs": []}, {"inputs": [1]}, "x", {"inputs": [{}], "parameters": 3},
                                  {"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]}],
                                   "parameters": {"content_type": "np"}}])
def test_malformed_requests_are_400(client, body):
    v2_error(infer(client, body), 400)


def test_binary_extension_and_bad_json_are_400_saying_so(client):
    body = v2_error(client.post("/v2/models/titanic/infer", data=b"{}", headers={"Inference-Header-Content-Length": "2"}), 400)
    assert "binary_data=False" in body["error"]
    v2_error(client.post("/v2/models/titanic/infer", data=b"{not json"), 400)


def test_not_ready_is_503(client, monkeypatch):
    holder = client.application.extensions["blackbox"].holder
    monkeypatch.setattr(holder, "model", None)
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.get_json() == {"ready": False}
    assert client.get("/v2/models/titanic/ready").status_code == 503
    v2_error(infer(client, {"inputs": []}), 503)


def test_v2_needs_the_same_keys_as_predict(base_config, served_model, passengers):
    client = create_app({**base_config, "API_KEYS": f"reader:{'r' * 20} read\nscorer:{CI_KEY}"}).test_client()
    body = {"inputs": tensors(served_model, passengers[:2])}
    assert client.get("/v2/health/live").status_code == 200 and client.get("/v2/health/ready").status_code == 200
    v2_error(infer(client, body), 401)
    assert "predict" in v2_error(infer(client, body, headers={"Authorization": "Bearer " + "r" * 20}), 403)["error"]
    assert infer(client, body, headers={"Authorization": f"Bearer {CI_KEY}"}).status_code == 200
    assert client.get("/v2/models/titanic", headers={"Authorization": "Bearer " + "r" * 20}).status_code == 200


@pytest.mark.slow
def test_tritonclient_against_blackbox_serve(served_artifact, serving_keys, served_model, passengers, tmp_path):
    """A real KServe/Triton client: health, metadata, and a batch of column tensors over HTTP to gunicorn."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from _helpers import Server

    server = Server([str(served_artifact), "--workers", "1", "--threads", "4", "--trusted-keys", str(serving_keys[1])],
                    tmp_path / "server.log")
    try:
        server.wait_ready()
        triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30)
        assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("titanic")
        meta = triton.get_model_metadata("titanic")
        assert meta["versions"] == ["1.0.0"] and [i["name"] for i in meta["inputs"]] == served_model.schema.columns
        records = [p for p in passengers if p["embarked"] is not None][:25]  # BYTES cannot carry a missing value
        assert any(p["age"] is None for p in records)  # ... an FP64 NaN can
        inputs = []
        for field in served_model.schema.fields:
            datatype = DATATYPES[field.kind]
            values = [r[field.name] for r in records]
            if datatype == "BYTES":
                array = np.array(values, dtype=np.object_)
            else:
                array = np.array([np.nan if v is None else v for v in values],
                                 dtype=np.float64 if datatype == "FP64" else np.int64)
            tensor = httpclient.InferInput(field.name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=False)
            inputs.append(tensor)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in ("predict", "predict_proba")]
        result = triton.infer("titanic", inputs, outputs=outputs, request_id="triton-1", model_version="1.0.0")
        assert result.get_response()["id"] == "triton-1"
        assert result.as_numpy("predict").tolist() == served_model.predict_batch(records)
        assert result.as_numpy("predict_proba").shape == (len(records), 2)
        assert result.as_numpy("predict_proba").tolist() == served_model.predict_proba(records)
        with pytest.raises(InferenceServerException, match="9.9.9"):
            triton.infer("titanic", inputs, outputs=outputs, model_version="9.9.9")
        triton.close()
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
