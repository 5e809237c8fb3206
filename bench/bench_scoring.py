"""Batch scoring throughput and peak memory: `blackbox score` against an in-process chunked loop.

Builds a CSV of Titanic rows resampled with a fixed seed (only rows the model's
schema accepts, so every case scores every row), saves a small signed artifact
with a throwaway key, then runs each case in a fresh process and reads its
wall time and peak RSS from the kernel (wait4), so peaks never mix:

* loop: ``pd.read_csv(chunksize)`` + ``Model.predict_batch`` per chunk (predictions only);
* loop+proba: the same loop also calling ``Model.predict_proba``, i.e. the outputs ``score`` writes;
* score: ``blackbox score`` in one process (reads, validates, predicts, writes the output file);
* score no-proba: the same with ``--no-probabilities``, i.e. the outputs ``loop`` computes;
* score no-fast-path: ``blackbox score --no-fast-path``, the estimator itself on every chunk (what
  scoring did before the fast path, #19), right before ``score``;
* score jobs 2: ``blackbox score --jobs 2``, chunks scored in two local worker processes, right after ``score``
  (its output must equal ``score``'s);
* score dask: ``blackbox score --engine dask`` on a local cluster (peak is the largest process);
* score small: ``blackbox score`` on a quarter of the rows, to show peak memory does not grow with the input.

Every case pays interpreter start-up and the verified model load. The cases
run in turn, --repeat times, each score case right after the loop it matches;
the table keeps each case's fastest run (the peak RSS is the largest seen), and
the target's ratio is the median over runs of each back-to-back pair's ratio,
so that a shared machine's changing load hits both sides of it alike. Prints a
table and writes bench/results/scoring.json.

    .venv/bin/python bench/bench_scoring.py [--rows 1000000] [--chunk-size 50000] [--repeat 3] [--no-dask]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 7


def build(directory: Path, rows: int) -> tuple[Path, Path, dict[int, Path]]:
    """A signed small artifact, its public key, and CSVs of ``rows`` and ``rows // 4`` resampled rows."""
    from sklearn.model_selection import train_test_split

    import blackbox
    from blackbox import signing
    from training.data import load_titanic
    from training.pipeline import search

    X, y = load_titanic()
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, stratify=y, random_state=SEED)
    private, public = signing.keygen(directory, "bench")
    fitted = search(X_train, y_train, seed=SEED, n_jobs=1, cv_folds=3, small=True)
    artifact = blackbox.save(fitted, directory / "titanic.bbx", train_data=X_train, name="titanic", version="bench", signing_key=private)
    required = [f.name for f in blackbox.load(artifact, trusted_keys=[public]).schema.fields if not f.nullable]
    accepted = X.dropna(subset=required)
    inputs = {}
    for n in (rows, rows // 4):
        inputs[n] = directory / f"titanic-{n}.csv"
        accepted.sample(n=n, replace=True, random_state=SEED).to_csv(inputs[n], index=False)
    return artifact, public, inputs


def loop(artifact: str, public: str, source: str, chunk_size: int, proba: bool) -> None:
    """The in-process baseline (run in a child process)."""
    import blackbox

    model = blackbox.load(artifact, trusted_keys=[public])
    for chunk in pd.read_csv(source, chunksize=chunk_size):
        model.predict_batch(chunk)
        if proba:
            model.predict_proba(chunk)


def measure(command: list[str]) -> dict[str, float]:
    """Wall seconds and peak RSS (MB) of one fresh process; the largest of its descendants for Dask."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if status:
        raise SystemExit(f"{' '.join(command)} failed ({status}):\n{child.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def same_answers(fast: Path, reference: Path, label: str = "score and score --no-fast-path") -> None:
    """``fast``'s output must hold the reference's predictions exactly and its probabilities within 1e-9; else exit 1."""
    import numpy as np
    from pyarrow import csv

    from blackbox.model import PROBA_TOLERANCE

    ours, theirs = csv.read_csv(fast), csv.read_csv(reference)
    if ours.column_names != theirs.column_names or ours.num_rows != theirs.num_rows:
        raise SystemExit(f"bench_scoring: FAILED: {label}: {fast.name} and {reference.name} differ in columns or rows")
    proba = [name for name in ours.column_names if name.startswith("proba_")]
    differ = int((ours["prediction"].to_numpy(zero_copy_only=False) != theirs["prediction"].to_numpy(zero_copy_only=False)).sum())
    gap = max((float(np.abs(ours[c].to_numpy() - theirs[c].to_numpy()).max()) for c in proba), default=0.0)
    if differ or gap > PROBA_TOLERANCE:
        raise SystemExit(f"bench_scoring: FAILED: {label} differ: {differ} predictions, "
                         f"largest probability difference {gap:.3g} (tolerance {PROBA_TOLERANCE})")
    print(f"{label}: the same {ours.num_rows:,} predictions, probabilities within {PROBA_TOLERANCE} "
          f"(largest difference {gap:.3g})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-dask", action="store_true", help="Skip the Dask local-cluster case.")
    parser.add_argument("--loop", nargs=4, metavar=("ARTIFACT", "PUBLIC", "CSV", "PROBA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        artifact, public, source, proba = args.loop
        loop(artifact, public, source, args.chunk_size, proba == "proba")
        return

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        artifact, public, inputs = build(directory, args.rows)
        print(f"built the artifact and {args.rows:,}- and {args.rows // 4:,}-row CSVs in {time.perf_counter() - started:.0f} s", flush=True)
        python, here = sys.executable, str(Path(__file__).resolve())

        def output(n: int, *extra: str) -> Path:
            return directory / f"out-{n}{''.join(extra).replace('--', '-')}.csv"

        def score(n: int, *extra: str) -> list[str]:
            out = output(n, *extra)
            return [python, "-m", "blackbox", "score", str(artifact), str(inputs[n]), "-o", str(out), "--overwrite",
                    "--chunk-size", str(args.chunk_size), "--trusted-keys", str(public), *extra]

        loop_command = [python, here, "--chunk-size", str(args.chunk_size), "--loop", str(artifact), str(public), str(inputs[args.rows])]
        cases = [  # each score case right after the loop it is compared with: the pair sees the same background load
            ("loop", args.rows, [*loop_command, "-"]),
            ("score no-proba", args.rows, score(args.rows, "--no-probabilities")),
            ("loop+proba", args.rows, [*loop_command, "proba"]),
            ("score no-fast-path", args.rows, score(args.rows, "--no-fast-path")),
            ("score", args.rows, score(args.rows)),
            ("score jobs 2", args.rows, score(args.rows, "--jobs", "2")),
            *([] if args.no_dask else [("score dask", args.rows, score(args.rows, "--engine", "dask"))]),
            ("score small", args.rows // 4, score(args.rows // 4)),
        ]
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in cases}
        for attempt in range(args.repeat):
            for name, _, command in cases:
                runs[name].append(measure(command))
                print(f"  run {attempt + 1}: {name:<18} {runs[name][-1]['seconds']:6.1f} s", flush=True)
        same_answers(output(args.rows), output(args.rows, "--no-fast-path"))
        same_answers(output(args.rows, "--jobs", "2"), output(args.rows), "score --jobs 2 and score")
        results = [
            {"case": name, "rows": n, "seconds": min(r["seconds"] for r in runs[name]),
             "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[name]), "runs": runs[name]}
            for name, n, _ in cases
        ]
        for result in results:
            result["rows_per_s"] = result["rows"] / result["seconds"]

    by_name = {r["case"]: r for r in results}
    print(f"\n{'case':<18} {'rows':>10} {'seconds':>8} {'rows/s':>9} {'vs loop':>8} {'vs loop+proba':>14} {'peak RSS MB':>12}")
    for r in results:
        print(f"{r['case']:<18} {r['rows']:>10,} {r['seconds']:>8.1f} {r['rows_per_s']:>9,.0f} "
              f"{r['rows_per_s'] / by_name['loop']['rows_per_s']:>7.2f}x {r['rows_per_s'] / by_name['loop+proba']['rows_per_s']:>13.2f}x "
              f"{r['peak_rss_mb']:>12.0f}")
    paired = {f"{ours} vs {theirs}": statistics.median(t["seconds"] / o["seconds"] for o, t in zip(runs[ours], runs[theirs]))
              for ours, theirs in (("score no-proba", "loop"), ("score", "loop+proba"), ("score", "score no-fast-path"),
                                   ("score jobs 2", "score"))}
    print("\nrows/s ratios, median over runs of each run's pair (measured back to back):")
    for name, value in paired.items():
        print(f"- {name}: {value:.2f}x")
    target = paired["score no-proba vs loop"]
    print(f"target: score >= 0.9x the loop's rows/s (same outputs: predictions): {target:.2f}x {'MET' if target >= 0.9 else 'NOT MET'}")
    fast = paired["score vs score no-fast-path"]
    print(f"target (#19): score >= 4x score --no-fast-path's rows/s: {fast:.2f}x {'MET' if fast >= 4 else 'NOT MET'}")
    peaks = by_name["score"]["peak_rss_mb"], by_name["score small"]["peak_rss_mb"]
    print(f"memory: peak RSS {peaks[0]:.0f} MB for {args.rows:,} rows, {peaks[1]:.0f} MB for {args.rows // 4:,}")
    RESULTS.mkdir(exist_ok=True)
    report = {"rows": args.rows, "chunk_size": args.chunk_size, "repeat": args.repeat, "cpus": os.cpu_count(), "results": results,
              "paired_ratios": paired, "load_average": os.getloadavg()}
    (RESULTS / "scoring.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS / 'scoring.json'}")


if __name__ == "__main__":
    main()
