"""Artifact costs on the Titanic model: size, save, load with and without verification.

Trains the Titanic search once (full grid unless --small-grid), saves it with
both serializers and measures, side by side in one run (median of --repeat):
save (embed + manifest + round-trip self-test), inspect (manifest only),
verified load (signature, environment, digest, unpickle), the bare unpickle of
the same payload with dill/pickle (no checks), self-test, and the isolated
verify. Prints a table and writes bench/results/artifact.json.

    .venv/bin/python bench/bench_artifact.py [--small-grid] [--repeat 7]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from sklearn.model_selection import train_test_split

import blackbox
from blackbox import signing
from blackbox.artifact import unpack
from blackbox.containment import serializers
from training.data import load_titanic
from training.pipeline import search

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-grid", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    X, y = load_titanic()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=42)
    started = time.perf_counter()
    grid = search(X_train, y_train, seed=42, n_jobs=-1, small=args.small_grid)
    search_seconds = time.perf_counter() - started
    holdout_auc = float(__import__("sklearn.metrics").metrics.roc_auc_score(y_test, grid.predict_proba(X_test)[:, 1]))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        private, public = signing.keygen(tmp, "bench")
        for name in serializers.SERIALIZERS:
            path = Path(tmp) / f"titanic-{name}.bbx"
            save = partial(blackbox.save, grid, path, serializer=name, train_data=X_train, sample=X_test.head(5),
                           signing_key=private, name="titanic")
            save_s = timed(save, max(1, args.repeat // 2))
            payload = unpack(path.read_bytes()).payload
            model = blackbox.load(path, trusted_keys=[public])
            rows.append({
                "serializer": name,
                "size_bytes": path.stat().st_size,
                "payload_sha256": hashlib.sha256(payload).hexdigest(),
                "save_s": save_s,
                "inspect_s": timed(partial(blackbox.inspect, path, trusted_keys=[public]), args.repeat),
                "load_verified_s": timed(partial(blackbox.load, path, trusted_keys=[public]), args.repeat),
                "bare_unpickle_s": timed(partial(serializers.loads, payload, name), args.repeat),
                "self_test_s": timed(model.self_test, args.repeat),
                "isolated_verify_s": timed(partial(blackbox.verify, path, trusted_keys=[public]), 3),
            })

    summary = {
        "grid": "small" if args.small_grid else "full",
        "search_seconds": round(search_seconds, 1),
        "best_params": {k: (type(v).__name__ if hasattr(v, "get_params") else v) for k, v in grid.best_params_.items()},
        "cv_roc_auc": grid.best_score_,
        "cv_std": float(grid.cv_results_["std_test_score"][grid.best_index_]),
        "holdout_roc_auc": holdout_auc,
        "python": sys.version.split()[0],
        "rows": rows,
    }
    print(f"Titanic ({summary['grid']} grid, search {summary['search_seconds']} s): best {summary['best_params']}")
    print(f"CV ROC AUC {summary['cv_roc_auc']:.4f} ± {summary['cv_std']:.4f}, holdout ROC AUC {holdout_auc:.4f}\n")
    header = f"{'serializer':<12}{'size':>11}{'save':>9}{'inspect':>9}{'load':>9}{'unpickle':>10}{'load/unp':>9}{'selftest':>9}{'verify':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['serializer']:<12}{r['size_bytes']:>11,}{r['save_s']*1e3:>7.0f}ms{r['inspect_s']*1e3:>7.1f}ms"
              f"{r['load_verified_s']*1e3:>7.0f}ms{r['bare_unpickle_s']*1e3:>8.0f}ms"
              f"{r['load_verified_s']/r['bare_unpickle_s']:>8.2f}x{r['self_test_s']*1e3:>7.0f}ms{r['isolated_verify_s']:>8.2f}s")
    for r in rows:
        print(f"  {r['serializer']} payload sha256 {r['payload_sha256']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "artifact.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwritten to {RESULTS / 'artifact.json'}")


if __name__ == "__main__":
    main()
