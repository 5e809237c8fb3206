"""How far live inputs have moved from the training data, feature by feature.

At save time :func:`profile` summarises each input column of ``train_data``:
numbers by their missing rate and the share of values in each training decile
(bin edges at the training quantiles), integers by whole numbers instead (one
bin per integer when training spans at most :data:`MAX_DISCRETE` + 1 of them,
else deciles rounded to integers; ``integer: true``, edges half-way between
integers, so live values outside the training range count in the end bins,
labelled ``<= 0`` and ``>= 8``), low-cardinality strings by their
category frequencies; free text only by its missing rate. :func:`compare`
puts a batch of live records through the same bins and reports, per feature,
the population stability index (PSI), the share of categories never seen in
training, the missing rate, and a :func:`status` read from the PSI. Common
reading of PSI: < 0.1 stable, 0.1 to 0.25 moderate shift, > 0.25 major shift
(:data:`MODERATE`, :data:`MAJOR`: the server, its gauges and the report all
read these two).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..schema import Schema

QUANTILES = np.linspace(0, 1, 11)[1:-1]  # inner decile edges
MAX_DISCRETE = 20  # an integer feature spanning at most this many steps gets a bin per integer
_EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
MODERATE = 0.1  # PSI from which a shift is worth a look
MAJOR = 0.25  # PSI above which the population has moved: retrain or investigate
STATUSES = ("stable", "moderate", "major")  # mildest first
UNSEEN = "(unseen)"  # the live-shares bucket of categories training never saw


def profile(frame: pd.DataFrame, schema: Schema) -> dict[str, dict[str, Any]]:
    """The training profile of every schema column (JSON-able)."""
    result: dict[str, dict[str, Any]] = {}
    for field in schema.fields:
        column = frame[field.name]
        missing = float(column.isna().mean())
        if field.kind in ("integer", "number"):
            values = column.dropna().to_numpy(dtype=float)
            integer = field.kind == "integer"
            if integer:
                edges = _integer_edges(values)
            else:
                edges = sorted(set(np.quantile(values, QUANTILES).tolist())) if len(values) else []
            result[field.name] = {
                "kind": "numeric",
                "missing_rate": missing,
                **({"integer": True} if integer else {}),
                "edges": edges,
                "shares": _numeric_shares(values, edges).tolist(),
            }
        elif field.categories is not None:
            counts = column.dropna().astype(str).value_counts(normalize=True)
            result[field.name] = {
                "kind": "categorical",
                "missing_rate": missing,
                "shares": {str(k): float(v) for k, v in sorted(counts.items())},
            }
        else:
            result[field.name] = {"kind": "text", "missing_rate": missing}
    return result


def compare(training: Mapping[str, Mapping[str, Any]], live: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per-feature drift of ``live`` (a frame with the schema's columns) against a training profile."""
    report: dict[str, dict[str, Any]] = {}
    for name, prof in training.items():
        column = live[name]
        entry: dict[str, Any] = {
            "kind": prof["kind"],
            "rows": int(len(column)),
            "missing_rate": float(column.isna().mean()) if len(column) else None,
            "training_missing_rate": prof["missing_rate"],
        }
        present = column.dropna()
        if prof["kind"] == "numeric":
            shares = _numeric_shares(present.to_numpy(dtype=float), prof["edges"])
            entry["psi"] = psi(np.asarray(prof["shares"]), shares) if len(present) else None
            entry["live_shares"] = shares.tolist()
            entry["bins"] = bin_labels(prof["edges"], integer=bool(prof.get("integer")))
        elif prof["kind"] == "categorical":
            seen = list(prof["shares"])
            values = present.astype(str)
            counts = values.value_counts(normalize=True)
            unseen = float(counts[~counts.index.isin(seen)].sum()) if len(values) else 0.0
            expected = np.asarray([prof["shares"][c] for c in seen] + [0.0])
            actual = np.asarray([float(counts.get(c, 0.0)) for c in seen] + [unseen])
            entry["psi"] = psi(expected, actual) if len(values) else None
            entry["unseen_share"] = unseen if len(values) else None
            entry["live_shares"] = dict(zip(seen + [UNSEEN], actual.tolist()))
        entry["status"] = status(entry.get("psi"))
        report[name] = entry
    return report


def status(value: float | None) -> str | None:
    """``stable``, ``moderate`` or ``major`` for a PSI; None when there is none (no live values, free text)."""
    if value is None:
        return None
    return "major" if value > MAJOR else "moderate" if value >= MODERATE else "stable"


def worst(report: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The most severe status among a :func:`compare` report's features (None if none has one)."""
    found = [entry["status"] for entry in report.values() if entry.get("status") is not None]
    return max(found, key=STATUSES.index) if found else None


def bin_labels(edges: list[float], *, integer: bool = False) -> list[str]:
    """Readable names of the bins :func:`compare` counts numbers in: ``< e0``, ``e0 to e1``, ..., ``>= en``.

    ``integer``: the edges of an integer profile (half-way between integers), named
    by the integers each bin holds: ``<= 0``, ``1``, ``2 to 4``, ..., ``>= 8``.
    """
    if not edges:
        return ["all"]
    if integer:
        starts = [round(edge + 0.5) for edge in edges]
        inner = [str(low) if high - 1 == low else f"{low} to {high - 1}" for low, high in zip(starts, starts[1:])]
        return [f"<= {starts[0] - 1}", *inner, f">= {starts[-1]}"]
    inner = [f"{low:g} to {high:g}" for low, high in zip(edges, edges[1:])]
    return [f"< {edges[0]:g}", *inner, f">= {edges[-1]:g}"]


def _integer_edges(values: np.ndarray) -> list[float]:
    """Edges half-way below the integers that start a bin: each integer of a small range, else rounded deciles.

    The training minimum never starts a bin, so no bin below it is empty by construction.
    """
    if not len(values):
        return []
    low, high = float(values.min()), float(values.max())
    if high - low <= MAX_DISCRETE:
        starts = np.arange(low + 1, high + 1)
    else:
        starts = np.unique(np.ceil(np.quantile(values, QUANTILES)))
        starts = starts[starts > low]
    edges: list[float] = (starts - 0.5).tolist()
    return edges


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two share vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=float), _EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=float), _EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _numeric_shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Share of values in each bin: below the first edge, between edges, at or above the last."""
    if not len(values):
        return np.zeros(len(edges) + 1)
    bins = np.searchsorted(np.asarray(edges, dtype=float), values, side="right")
    return np.bincount(bins, minlength=len(edges) + 1) / len(values)
