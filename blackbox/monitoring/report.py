"""The drift report: one self-contained HTML file comparing a period of live inputs with the training data.

:func:`drift_report` puts the live records through :func:`blackbox.monitoring.drift.compare`
against the profile the artifact carries and writes a page with the model's
identity and the period, a table of features (most drifted first, coloured by
status), one plot per feature (training vs live shares per bin or category,
unseen categories and missing rates; "no missing values" where neither side
has any), and, when the records carry feedback labels, accuracy and ROC AUC over
time against the holdout figures recorded at training: per calendar day (UTC)
when the labelled records fall on several days, else per hour, else per minute,
as the heading says. The file needs no network: CSS is inline and each plot is an SVG
(drawn by matplotlib, ``pip install 'blackbox[report]'``) embedded as a data
URI, so one plot's ids never meet another's. Every string that comes from the
data or the manifest is escaped: category names are user input.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..atomic import atomic_write
from ..errors import UsageError
from ..manifest import Manifest
from ..model import Model
from ..schema import Schema
from . import drift

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BUCKETS = (("day", "D", "%Y-%m-%d"), ("hour", "h", "%Y-%m-%d %H:00"), ("minute", "min", "%Y-%m-%d %H:%M"))
"""Time buckets of the accuracy over time, coarsest first: the first that splits the labelled records is used."""
COLOURS = {"training": "#4c72b0", "live": "#dd8452", "stable": "#2e7d32", "moderate": "#e6a100", "major": "#c62828"}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px}h3{font-size:15px;margin:0 0 6px}
.meta{color:#555}.meta code{background:#eceef1;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0001}
th,td{padding:6px 10px;border-bottom:1px solid #e3e5e8;text-align:left}th{background:#eef0f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px}
.stable{background:#2e7d32}.moderate{background:#e6a100}.major{background:#c62828}.none{background:#8a8f98}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:16px}
.card{background:#fff;padding:12px 14px;box-shadow:0 1px 2px #0001;border-radius:4px}
.card img{width:100%;height:auto}.note{color:#666;font-size:13px}
"""


def drift_report(
    model_or_manifest: Model | Manifest,
    live: pd.DataFrame,
    out: str | os.PathLike[str],
    *,
    period: tuple[str | None, str | None] | None = None,
    features: Mapping[str, Mapping[str, Any]] | None = None,
    all_versions: bool = False,
) -> Path:
    """Write the HTML drift report of ``live`` (the artifact's input columns, optionally ``ts``,
    ``prediction``, ``probabilities`` and ``label``) to ``out``; return its path.

    ``features``: :func:`compare_live` of the same records, when the caller has it already.
    ``all_versions``: say that ``live`` holds every version's records of the model's name
    (the accuracy is this artifact's alone either way).
    Raises UsageError when the artifact has no training profile, the frame is empty,
    or matplotlib is missing; SchemaError when the live columns do not fit the schema.
    """
    manifest = _manifest(model_or_manifest)
    features = compare_live(manifest, live) if features is None else features
    performance = performance_over_time(manifest, live)
    page = _page(manifest, features, performance, rows=len(live), period=period, all_versions=all_versions)
    path = Path(out)
    atomic_write(path, page.encode("utf-8"))
    return path


def compare_live(model_or_manifest: Model | Manifest, live: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """:func:`blackbox.monitoring.drift.compare` of a live frame, typed by the artifact's schema first."""
    manifest = _manifest(model_or_manifest)
    profile = manifest.profile
    if not profile:
        raise UsageError(
            f"{manifest.name} {manifest.version} carries no training profile (it was saved without "
            "train_data), so there is nothing to compare live inputs with; save it again with train_data=."
        )
    if live.empty:
        raise UsageError("There are no live records to compare with the training data: widen the period.")
    schema = Schema.from_dict(manifest.schema)
    frame, _ = schema.to_frame(live[[c for c in live.columns if c in set(schema.columns)]])
    return drift.compare(profile, frame)


def performance_over_time(model_or_manifest: Model | Manifest, live: pd.DataFrame) -> list[dict[str, Any]]:
    """Accuracy and ROC AUC of the labelled records this artifact predicted, per time bucket; [] without labels.

    Buckets are calendar days (UTC) when the labelled records fall on several, else
    hours, else minutes (:data:`BUCKETS`); each entry names its ``bucket`` (its start,
    e.g. ``2026-03-01 06:00``) and ``unit``. Without ``ts``: one bucket of every record.
    """
    if "label" not in live.columns or "prediction" not in live.columns:
        return []
    manifest = _manifest(model_or_manifest)
    labelled = live[live["label"].notna()]
    if "model_sha256" in labelled.columns:  # another version's answers say nothing about this one
        labelled = labelled[labelled["model_sha256"] == manifest.payload.sha256]
    if labelled.empty:
        return []
    classes = manifest.classes or []
    if "ts" not in labelled.columns:
        return [{**_scores(labelled, classes, "all records"), "unit": "all"}]
    for unit, frequency, layout in BUCKETS:  # noqa: B007  the bucket it stops at is used below
        starts = labelled["ts"].dt.floor(frequency)
        if starts.nunique() > 1:
            break
    return [{**_scores(group, classes, f"{start:{layout}}"), "unit": unit} for start, group in labelled.groupby(starts)]


def _scores(group: pd.DataFrame, classes: Sequence[Any], bucket: str) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    truth = np.asarray([_class_name(v) for v in group["label"]])
    accuracy = float(np.mean(np.asarray([_class_name(v) for v in group["prediction"]]) == truth))
    auc = None
    names = [_class_name(c) for c in classes]
    if "probabilities" in group.columns and len(names) >= 2 and set(truth) <= set(names) and len(set(truth)) == len(names):
        proba = np.asarray(group["probabilities"].tolist(), dtype=float)
        if len(names) == 2:
            auc = float(roc_auc_score(truth == names[1], proba[:, 1]))
        else:
            auc = float(roc_auc_score([names.index(t) for t in truth], proba, multi_class="ovr", labels=range(len(names))))
    return {"bucket": bucket, "records": len(group), "accuracy": accuracy, "roc_auc": auc}


def _class_name(value: Any) -> str:
    """A label as text, so 1, 1.0 and "1" (a label column that went through a float) name the same class."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value)


def _manifest(model_or_manifest: Model | Manifest) -> Manifest:
    return model_or_manifest.manifest if isinstance(model_or_manifest, Model) else model_or_manifest


# -- the page ---------------------------------------------------------------
def _page(
    manifest: Manifest, features: Mapping[str, Mapping[str, Any]], performance: list[dict[str, Any]],
    *, rows: int, period: tuple[str | None, str | None] | None, all_versions: bool = False,
) -> str:
    e = html.escape
    name, version = manifest.name, manifest.version
    start, end = period or (None, None)
    holdout = _holdout(manifest)
    order = sorted(features, key=lambda f: (features[f].get("psi") is None, -(features[f].get("psi") or 0.0)))
    overall = drift.worst(features)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Drift report: {e(name)} {e(version)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>Drift report: {e(name)} {e(version)} {_badge(overall)}</h1>",
        f"<p class=meta>Payload sha256 <code>{e(manifest.payload.sha256)}</code>, "
        f"created {e(str(manifest.created_at))}, trained on {e(str(manifest.data.rows if manifest.data else None))} rows.<br>"
        f"Period {e(start or 'start of the log')} to {e(end or 'now')}: {rows} live records "
        f"{f'of every version named {e(name)}' if all_versions else 'this artifact answered'}. Generated {now}. "
        f"PSI below {drift.MODERATE:g} is stable, {drift.MODERATE:g} to {drift.MAJOR:g} moderate, above {drift.MAJOR:g} major.</p>",
        "<h2>Features, most drifted first</h2><table><tr><th>feature</th><th>kind</th><th>status</th><th>PSI</th>"
        "<th>unseen share</th><th>missing (training)</th><th>missing (live)</th></tr>",
    ]
    for feature in order:
        entry = features[feature]
        parts.append(
            f"<tr><td><a href='#f-{e(feature, quote=True)}'>{e(feature)}</a></td><td>{e(entry['kind'])}</td>"
            f"<td>{_badge(entry['status'])}</td><td class=num>{_number(entry.get('psi'), 3)}</td>"
            f"<td class=num>{_percent(entry.get('unseen_share'))}</td><td class=num>{_percent(entry['training_missing_rate'])}</td>"
            f"<td class=num>{_percent(entry['missing_rate'])}</td></tr>"
        )
    parts.append("</table>")
    if performance:
        parts += _performance_section(performance, holdout)
    parts.append("<h2>Training vs live, per feature</h2><div class=grid>")
    for feature in order:
        entry = features[feature]
        parts.append(
            f"<section class=card id='f-{e(feature, quote=True)}' data-feature='{e(feature, quote=True)}'>"
            f"<h3>{e(feature)} {_badge(entry['status'])}</h3>"
            f"<img class=plot alt='{e(f'training vs live shares of {feature}', quote=True)}' "
            f"src='{_svg_uri(_feature_figure((manifest.profile or {})[feature], entry))}'></section>"
        )
    parts.append("</div></main></body></html>")
    return "\n".join(parts)


def _performance_section(performance: list[dict[str, Any]], holdout: Mapping[str, float]) -> list[str]:
    e = html.escape
    labelled = sum(p["records"] for p in performance)
    reference = ", ".join(f"{k} {v:.3f}" for k, v in holdout.items()) or "none recorded in the manifest"
    unit = performance[0]["unit"]
    per = "" if unit == "all" else f" per {unit} (UTC)"
    rows = [
        f"<h2 id=performance>Live accuracy and ROC AUC{per}</h2><p class=note>{labelled} records this artifact predicted "
        "have feedback. "
        f"Holdout figures from training: {e(reference)}.</p>",
        f"<div class=card><img class=plot alt='live accuracy and ROC AUC over time' src='{_svg_uri(_performance_figure(performance, holdout))}'></div>",
        f"<table><tr><th>{'period' if unit == 'all' else unit}</th><th>records</th><th>accuracy</th><th>ROC AUC</th></tr>",
    ]
    rows += [
        f"<tr><td>{e(p['bucket'])}</td><td class=num>{p['records']}</td><td class=num>{_number(p['accuracy'], 3)}</td>"
        f"<td class=num>{_number(p['roc_auc'], 3)}</td></tr>"
        for p in performance
    ]
    return [*rows, "</table>"]


def _holdout(manifest: Manifest) -> dict[str, float]:
    """The artifact's holdout accuracy and ROC AUC, where training recorded them."""
    holdout = manifest.metric_group("holdout")
    return {k: float(holdout[k]) for k in ("accuracy", "roc_auc") if isinstance(holdout.get(k), (int, float))}


def _badge(status: str | None) -> str:
    return f"<span class='badge {status or 'none'}'>{html.escape(status or 'n/a')}</span>"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# -- the plots ----------------------------------------------------------------
def _feature_figure(profile: Mapping[str, Any], entry: Mapping[str, Any]) -> Figure:
    """Shares per bin (numbers) or category (plus unseen), training beside live; missing rates on the right.

    Where neither training nor live data has a missing value, the missing-rate chart
    is left out and the title says "no missing values" instead of two empty bars.
    """
    figure = _figure((7.2, 3.0))
    values = [entry["training_missing_rate"], entry["missing_rate"] or 0.0]
    if any(values):
        grid = figure.add_gridspec(1, 2, width_ratios=(5, 1), wspace=0.35)
        shares, missing = figure.add_subplot(grid[0]), figure.add_subplot(grid[1])
        bars = missing.bar([0, 1], values, color=[COLOURS["training"], COLOURS["live"]])
        missing.bar_label(bars, [_percent(v) for v in values], fontsize=7)
        missing.set_xticks([0, 1], ["training", "live"], fontsize=8)
        missing.set_ylim(0, max(0.05, *values) * 1.25)
        missing.set_title("missing", fontsize=9)
        axes: tuple[Any, ...] = (shares, missing)
        note = ""
    else:
        shares = figure.add_subplot()
        axes, note = (shares,), ", no missing values"
    if entry["kind"] == "numeric":
        labels, training, live = entry["bins"], profile["shares"], entry["live_shares"]
    elif entry["kind"] == "categorical":
        labels = list(entry["live_shares"])
        training = [profile["shares"].get(c, 0.0) for c in labels]
        live = list(entry["live_shares"].values())
    else:
        labels, training, live = [], [], []
    if labels:
        x = np.arange(len(labels))
        shares.bar(x - 0.2, training, 0.4, label="training", color=COLOURS["training"])
        shares.bar(x + 0.2, live, 0.4, label="live", color=COLOURS["live"])
        shares.set_xticks(x, [_clip(str(label)) for label in labels], rotation=30 if len(labels) > 5 else 0,
                          ha="right" if len(labels) > 5 else "center", fontsize=8)
        shares.set_ylabel("share of present values")
        shares.legend(fontsize=8, frameon=False, ncols=2, loc="lower right", bbox_to_anchor=(1, 1), borderaxespad=0)
        psi = entry.get("psi")
        shares.set_title(("no live values" if psi is None else f"PSI {psi:.3f}") + note, fontsize=9, loc="left")
    else:
        shares.text(0.5, 0.5, "free text: only the missing rate is compared" + note, ha="center", va="center", fontsize=9)
        shares.set_axis_off()
    for axis in axes:
        axis.spines[["top", "right"]].set_visible(False)
        axis.tick_params(labelsize=8)
    return figure


def _performance_figure(performance: list[dict[str, Any]], holdout: Mapping[str, float]) -> Figure:
    figure = _figure((10.5, 3.2))
    axis = figure.add_subplot()
    x = np.arange(len(performance))
    for key, colour in (("accuracy", COLOURS["training"]), ("roc_auc", COLOURS["live"])):
        values = [np.nan if p[key] is None else p[key] for p in performance]
        axis.plot(x, values, marker="o", color=colour, label=f"live {key}")
        if key in holdout:
            axis.axhline(holdout[key], color=colour, linestyle="--", linewidth=1, label=f"holdout {key}")
    axis.set_xticks(x, [_clip(p["bucket"], 24) for p in performance], rotation=20, ha="right", fontsize=8)
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=8, frameon=False, ncols=4, loc="lower left")
    axis.spines[["top", "right"]].set_visible(False)
    return figure


def _figure(size: tuple[float, float]) -> Figure:
    """A figure drawn without pyplot (no global state, safe in any thread); text stays text, never mathtext."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("The drift report draws its plots with matplotlib, which is not installed here: "
                         "pip install 'blackbox[report]'.") from None
    matplotlib.rcParams.update({"svg.fonttype": "none", "text.parse_math": False, "svg.hashsalt": "blackbox"})
    return Figure(figsize=size, layout="constrained")


def _svg_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg")
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _clip(text: str, size: int = 18) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"
