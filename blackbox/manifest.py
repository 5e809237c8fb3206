"""What an artifact says about itself: provenance, data, scores, schema, sample.

Everything here is plain JSON, built at save time and readable without
unpickling (``blackbox.inspect``). Values that JSON cannot hold (numpy scalars,
NaN scores of failed fits, estimators inside grid-search parameters) are
converted by :func:`jsonable`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import platform
import subprocess
import sys
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def python_info() -> dict[str, str]:
    return {"version": platform.python_version(), "implementation": platform.python_implementation()}


def jsonable(value: Any) -> Any:
    """Convert ``value`` into strict JSON types (non-finite floats become None)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and (
        value.dtype.kind in "biuU" or (value.dtype.kind == "f" and np.isfinite(value).all())
    ):
        return value.tolist()  # numpy's own conversion: the same Python values, without a loop here
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Index)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return repr(value)


def data_summary(frame: pd.DataFrame, source: str | None) -> dict[str, Any]:
    """Row count, source and a sha256 fingerprint of the training inputs (values, names and dtypes)."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return {
        "source": source,
        "rows": int(len(frame)),
        "columns": [str(c) for c in frame.columns],
        "fingerprint": f"sha256:{digest.hexdigest()}",
    }


def search_metrics(search: Any) -> dict[str, Any]:
    """Best parameters, best CV score and mean ± std of every candidate of a fitted search."""
    results = search.cv_results_
    best = search.best_index_
    return jsonable(
        {
            "scoring": search.scoring if isinstance(search.scoring, str) else repr(search.scoring),
            "cv": repr(search.cv),
            "best_params": search.best_params_,
            "best_score": search.best_score_,
            "best_score_std": results["std_test_score"][best],
            "candidates": [
                {"params": p, "mean": m, "std": s, "rank": r}
                for p, m, s, r in zip(
                    results["params"],
                    results["mean_test_score"],
                    results["std_test_score"],
                    results["rank_test_score"],
                )
            ],
        }
    )


def source_snapshot(modules: Collection[str]) -> dict[str, dict[str, str]]:
    """The source text (and its sha256) of every loaded module under the by-value packages."""
    snapshot = {}
    for name, module in sorted(sys.modules.items()):
        if name.partition(".")[0] not in modules:
            continue
        filename = getattr(module, "__file__", None)
        if not filename or not filename.endswith(".py"):
            continue
        text = Path(filename).read_text(encoding="utf-8")
        snapshot[name] = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "text": text}
    return snapshot


def git_info(modules: Collection[str]) -> dict[str, Any]:
    """Commit, branch and dirty flag of the repository holding the by-value code (or the cwd)."""
    directory = Path.cwd()
    for name in sorted(modules):
        filename = getattr(sys.modules.get(name), "__file__", None)
        if filename:
            directory = Path(filename).resolve().parent
            break

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "commit": commit,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD") if commit else None,
        "dirty": bool(status) if status is not None else None,
    }
