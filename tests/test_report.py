"""The HTML drift report and ``blackbox drift``: content, escaping, the log end to end, and a real browser's view.

The live frames have the shape :func:`blackbox.monitoring.read_log` returns; the
end-to-end test writes its rows through the prediction log itself.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from PIL import Image  # matplotlib's own dependency

import blackbox
from blackbox.cli import main
from blackbox.manifest import Manifest
from blackbox.monitoring import predlog
from blackbox.monitoring.report import drift_report, performance_over_time

HOSTILE = "<script>alert('x')</script>&\"'"
PLOT = re.compile(r"<img class=plot alt='[^']*' src='data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)'>")


@pytest.fixture(scope="module")
def model(served_model) -> blackbox.Model:
    return served_model


@pytest.fixture(scope="module")
def log_frame(model, titanic) -> pd.DataFrame:
    """Two days of logged predictions of the holdout (the second day 20 years older), a third of them labelled."""
    X_test, y_test = titanic[1], titanic[3]
    required = [field.name for field in model.schema.fields if not field.nullable]
    inputs = X_test.dropna(subset=required)
    labels = y_test.loc[inputs.index].to_numpy()
    inputs = pd.concat([inputs, inputs.assign(age=inputs["age"] + 20)], ignore_index=True)
    predictions, probabilities = model.predict_and_proba_frame(model.prepare(inputs)[0])
    n = len(inputs)
    meta = pd.DataFrame({
        "request_id": [f"r{i}" for i in range(n)], "row": 0,
        "ts": pd.Series(pd.date_range("2026-03-01", periods=n, freq="2min", tz="UTC") + pd.Timedelta(hours=12)).where(
            np.arange(n) < n // 2, pd.Timestamp("2026-03-02T12:00Z")).astype("datetime64[ns, UTC]"),
        "model_name": model.name, "model_version": model.version, "model_sha256": model.sha256, "client_id": None,
        "latency_ms": 2.0, "prediction": predictions, "probabilities": probabilities,
    })
    frame = pd.concat([meta, inputs], axis=1)
    frame["label"] = pd.Series(np.concatenate([labels, labels]), dtype=object).where(np.arange(n) % 3 == 0)
    frame["label_ts"] = frame["ts"]
    return frame


def plots(page: str) -> list[str]:
    """The SVG documents of the page's plots, each checked to be well-formed XML."""
    svgs = [base64.b64decode(data).decode() for data in PLOT.findall(page)]
    for svg in svgs:
        ET.fromstring(svg)
    return svgs


def test_the_report_has_a_plot_per_feature_and_the_accuracy_over_time(model, log_frame, tmp_path):
    path = drift_report(model, log_frame, tmp_path / "report.html", period=("2026-03-01", None))
    page = path.read_text()
    features = model.manifest.profile
    sections = re.findall(r"<section class=card id='f-([^']+)' data-feature", page)
    assert sorted(sections) == sorted(features)
    assert len(plots(page)) == len(features) + 1  # one per feature, and accuracy / AUC over time
    assert "Live accuracy and ROC AUC" in page and "2026-03-01" in page and "2026-03-02" in page
    assert f"{len(log_frame)} live records" in page
    table = page.split("<h2>Features, most drifted first</h2>")[1].split("</table>")[0]
    assert table.index(">age<") < table.index(">fare<")  # sorted by PSI: the shifted age comes first
    assert "<span class='badge major'>major</span>" in table
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing to fetch


def test_accuracy_per_day_matches_the_labels(model, log_frame):
    performance = performance_over_time(model, log_frame)
    assert [p["bucket"] for p in performance] == ["2026-03-01", "2026-03-02"]
    labelled = log_frame[log_frame["label"].notna()]
    first = labelled[labelled["ts"] < pd.Timestamp("2026-03-02", tz="UTC")]
    assert performance[0]["records"] == len(first)
    assert performance[0]["accuracy"] == pytest.approx(np.mean(first["prediction"].to_numpy() == first["label"].to_numpy()))
    assert 0.5 < performance[0]["roc_auc"] <= 1
    other = log_frame.assign(model_sha256="0" * 64)  # answers of another model version are not this one's accuracy
    assert performance_over_time(model, other) == []


def test_accuracy_within_one_day_is_per_hour_with_readable_labels(model, log_frame, tmp_path):
    day = log_frame[log_frame["ts"] < pd.Timestamp("2026-03-02", tz="UTC")]
    performance = performance_over_time(model, day)
    labelled = day[day["label"].notna()]
    hours = labelled["ts"].dt.floor("h")
    assert [p["bucket"] for p in performance] == [f"{hour:%Y-%m-%d %H}:00" for hour in sorted(set(hours))]
    assert len(performance) > 1 and {p["unit"] for p in performance} == {"hour"}
    assert [p["records"] for p in performance] == hours.value_counts().sort_index().tolist()
    page = drift_report(model, day, tmp_path / "day.html").read_text()
    assert "Live accuracy and ROC AUC per hour (UTC)" in page and " to " not in page.split("id=performance")[1].split("</table>")[0]

    minutes = day.assign(ts=pd.Timestamp("2026-03-01T06:14Z") + pd.to_timedelta(np.arange(len(day)) % 5, unit="min"))
    assert [p["bucket"] for p in performance_over_time(model, minutes)] == [f"2026-03-01 06:{m}" for m in range(14, 19)]
    assert "per day (UTC)" in drift_report(model, log_frame, tmp_path / "days.html").read_text()


def section_plot(page: str, feature: str) -> str:
    """The SVG of one feature's card."""
    card = page.split(f"<section class=card id='f-{feature}'")[1].split("</section>")[0]
    return base64.b64decode(PLOT.search(card).group(1)).decode()


def test_a_feature_without_missing_values_says_so_instead_of_empty_axes(model, log_frame, tmp_path):
    page = drift_report(model, log_frame, tmp_path / "report.html").read_text()
    assert log_frame["pclass"].notna().all() and model.manifest.profile["pclass"]["missing_rate"] == 0
    pclass = section_plot(page, "pclass")
    assert "no missing values" in pclass and "0.0%" not in pclass
    assert "&gt;= 3" in pclass and "&lt; 1" not in pclass  # integer bins, named by their values
    age = section_plot(page, "age")
    assert "no missing values" not in age and "missing" in age


def write_log(db, model, frame: pd.DataFrame, **identity: str) -> None:
    """The frame's rows written through the prediction log, as the server writes them; labels with them."""
    log = predlog.PredictionLog(str(db))
    fields = model.schema.columns
    name = {"name": model.name, "version": model.version, "sha256": model.sha256, **identity}
    for (ts, _), group in frame.groupby(["ts", "request_id"]):
        log.append(predlog.prediction_rows(
            request_id=group["request_id"].iloc[0], ts=ts.to_pydatetime(), model=name, client_id=None, latency_ms=2.0,
            fields=fields, records=json.loads(group[fields].to_json(orient="records")),
            predictions=group["prediction"].tolist(), probabilities=group["probabilities"].tolist(),
        ))
    labelled = frame[frame["label"].notna()]
    log.add_labels([(r, 0, int(label)) for r, label in zip(labelled["request_id"], labelled["label"])])
    log.dispose()


def test_blackbox_drift_counts_only_this_artifacts_traffic(served_artifact, serving_keys, model, log_frame, tmp_path, capsys):
    db = tmp_path / "log.db"
    write_log(db, model, log_frame)
    other = log_frame.assign(request_id="old-" + log_frame["request_id"], age=log_frame["age"] + 40)
    write_log(db, model, other, version="0.9.0", sha256="0" * 64)  # the same name, another version's traffic
    drift = ["drift", str(served_artifact), str(db), "--trusted-keys", str(serving_keys[1]), "--json"]
    assert main(drift) == 0
    mine = json.loads(capsys.readouterr().out)
    assert mine["records"] == len(log_frame) and mine["model"]["payload_sha256"] == model.sha256
    assert main([*drift, "--all-versions"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert every["records"] == 2 * len(log_frame) and every["features"]["age"]["psi"] > mine["features"]["age"]["psi"]
    assert main([*drift, "--since", "2026-03-02"]) == 0 and json.loads(capsys.readouterr().out)["records"] == len(log_frame) // 2

    only_old = tmp_path / "old.db"
    write_log(only_old, model, other, version="0.9.0", sha256="0" * 64)
    assert main(["drift", str(served_artifact), str(only_old), "--trusted-keys", str(serving_keys[1]), "--json"]) == 9
    err = capsys.readouterr().err
    assert model.sha256[:12] in err and "--all-versions" in err


def test_without_labels_there_is_no_accuracy_section(model, log_frame, tmp_path):
    page = drift_report(model, log_frame.drop(columns=["label", "label_ts"]), tmp_path / "r.html").read_text()
    assert "Live accuracy" not in page and len(plots(page)) == len(model.manifest.profile)


def test_hostile_names_and_categories_are_escaped(model, log_frame, tmp_path):
    manifest = copy.deepcopy(model.manifest.to_json())
    manifest["name"] = HOSTILE
    for field in manifest["schema"]["fields"]:
        if field["name"] == "embarked":
            field["categories"] = [HOSTILE if c == "S" else c for c in field["categories"]]
    shares = manifest["profile"]["embarked"]["shares"]
    shares[HOSTILE] = shares.pop("S")
    live = log_frame.assign(embarked=log_frame["embarked"].replace({"S": HOSTILE}))
    page = drift_report(Manifest.from_json(manifest), live, tmp_path / "hostile.html").read_text()
    assert "<script>" not in page and HOSTILE not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert any("&lt;script&gt;" in svg for svg in plots(page))  # the category's bar, its name escaped in the SVG


def test_a_model_without_profile_or_an_empty_period_is_refused(model, log_frame, tmp_path):
    manifest = dataclasses.replace(model.manifest, profile=None)
    with pytest.raises(blackbox.UsageError, match="train_data"):
        drift_report(manifest, log_frame, tmp_path / "x.html")
    with pytest.raises(blackbox.UsageError, match="no live records"):
        drift_report(model, log_frame.iloc[:0], tmp_path / "x.html")


def test_blackbox_drift_reads_the_prediction_log(served_artifact, serving_keys, model, log_frame, tmp_path, capsys):
    db = tmp_path / "log.db"
    log = predlog.PredictionLog(str(db))
    fields = model.schema.columns
    for (ts, _), group in log_frame.groupby(["ts", "request_id"]):
        log.append(predlog.prediction_rows(
            request_id=group["request_id"].iloc[0], ts=ts.to_pydatetime(),
            model={"name": model.name, "version": model.version, "sha256": model.sha256}, client_id=None, latency_ms=2.0,
            fields=fields, records=json.loads(group[fields].to_json(orient="records")),
            predictions=group["prediction"].tolist(), probabilities=group["probabilities"].tolist(),
        ))
    labelled = log_frame[log_frame["label"].notna()]
    log.add_labels([(r, 0, int(label)) for r, label in zip(labelled["request_id"], labelled["label"])])
    log.dispose()

    out = tmp_path / "report.html"
    drift = ["drift", str(served_artifact), str(db), "--trusted-keys", str(serving_keys[1])]
    assert main(["drift", str(served_artifact), str(db), "-o", str(out), "--json"]) == blackbox.AuthenticityError.exit_code
    assert "not among the trusted keys" in capsys.readouterr().err
    assert main([*drift, "-o", str(out), "--json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert numbers["records"] == len(log_frame) and numbers["features"]["age"]["status"] == "major"
    page = out.read_text()
    assert "Live accuracy and ROC AUC" in page and len(plots(page)) == len(model.manifest.profile) + 1

    assert main([*drift, "--json", "--until", "2026-03-02"]) == 0  # the first day only
    first_day = json.loads(capsys.readouterr().out)
    assert first_day["records"] == len(log_frame) // 2 and first_day["features"]["age"]["status"] == "stable"

    assert main([*drift, "--json", "--since", "2027-01-01"]) == blackbox.SchemaError.exit_code
    assert "no predictions of titanic" in capsys.readouterr().err
    assert main(drift) == 2  # neither -o nor --json


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None and not os.environ.get("CI"),
                    reason="no chromium to render the report (scripts/setup.sh installs it in CI; apt-get install chromium)")
def test_the_report_renders_in_a_headless_browser(model, log_frame, tmp_path):
    assert chromium() is not None, "CI must have chromium: scripts/setup.sh installs it"
    page = drift_report(model, log_frame, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,2400", page.as_uri()], check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    assert len(colours) > 50  # text, tables and plots, not a blank or error page
    assert {(0x4C, 0x72, 0xB0), (0xDD, 0x84, 0x52)} <= colours  # the training and live bars were drawn
