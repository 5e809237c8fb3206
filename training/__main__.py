"""The ``blackbox-train`` command: train the Titanic model and save it as a blackbox artifact.

Usable as ``python -m training`` and as the ``blackbox-train`` console script.
The work happens in :func:`train`, a plain function (tests and notebooks call
it directly); the click command only parses options and turns bad input into
a one-line error with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split

import blackbox
from blackbox import signing
from blackbox.signing import SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, PublicKey
from blackbox.store import Store
from training.data import DataError, builtin_titanic_path, load_data
from training.pipeline import SCORING, n_candidates, parallel_backend, param_grid, search

DEFAULT_OUT = Path("artifacts/titanic.bbx")
HOLDOUT_FRACTION = 0.2
CV_FOLDS = 5
SAMPLE_ROWS = 5


def holdout_metrics(estimator: Any, X: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """Accuracy, ROC AUC, F1 and log loss of a fitted classifier on held-out data."""
    proba = estimator.predict_proba(X)[:, list(estimator.classes_).index(1)]
    pred = estimator.predict(X)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "roc_auc": float(roc_auc_score(y, proba)),
        "f1": float(f1_score(y, pred)),
        "log_loss": float(log_loss(y, proba, labels=[0, 1])),
    }


def describe_params(params: dict[str, Any]) -> dict[str, Any]:
    """``best_params_`` made JSON-able: the model step by class name, numbers as numbers."""
    described: dict[str, Any] = {}
    for key, value in params.items():
        if hasattr(value, "get_params"):
            described[key] = type(value).__name__
        elif isinstance(value, np.generic):
            described[key] = value.item()
        else:
            described[key] = value
    return described


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the whole artifact, as ``sha256sum`` prints it)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def command_line(
    out: Path, data: Path | None, seed: int, serializer: str, small_grid: bool, name: str, version: str | None
) -> str:
    """The ``blackbox-train`` invocation that reproduces this run (recorded in the artifact)."""
    args = ["blackbox-train", "--out", str(out), "--seed", str(seed), "--serializer", serializer]
    if data is not None:
        args += ["--data", str(data)]
    if small_grid:
        args.append("--small-grid")
    args += ["--name", name]
    if version is not None:
        args += ["--version", version]
    return shlex.join(args)


def recipe_args(seed: int, serializer: str, small_grid: bool, name: str) -> list[str]:
    """The options that define the model, recorded so `blackbox rebuild` can train it again."""
    return ["--seed", str(seed), "--serializer", serializer, "--name", name, *(["--small-grid"] if small_grid else [])]


def train(
    out: str | Path = DEFAULT_OUT,
    data: str | Path | None = None,
    seed: int = 42,
    serializer: str = "dill",
    n_jobs: int | None = -1,
    small_grid: bool = False,
    name: str = "titanic",
    version: str | None = None,
    *,
    verify: bool = True,
    signing_key: str | Path | None = None,
    predictions_out: str | Path | None = None,
    quiet: bool = False,
    backend: str = "loky",
    scheduler: str | None = None,
    push: str | None = None,
) -> dict[str, Any]:
    """Load, split, search, evaluate once on the holdout, save; return the run summary.

    With ``verify`` (the default) the artifact is loaded in an isolated
    interpreter, with this package unimportable, before it is published.
    ``signing_key`` signs the artifact (default: $BLACKBOX_SIGNING_KEY, if set).
    ``predictions_out`` receives the holdout records and what the trained model
    predicted for them, to check a server elsewhere against (isolation_env/).
    ``backend="dask"`` runs the search's fits on the Dask cluster at ``scheduler``
    (default: a local cluster of worker processes).
    ``push`` names a model store (blackbox.store) to publish the saved artifact in, verified with
    $BLACKBOX_TRUSTED_KEYS if set, else with the signing key's public half; it needs a signing key,
    checked before the search.

    Raises :class:`training.data.DataError` for unusable input data.
    """

    def say(message: str = "") -> None:
        if not quiet:
            click.echo(message)

    out = Path(out)
    data = Path(data) if data is not None else None
    push_trust = _push_trust(signing_key) if push is not None else None  # before the search, which takes minutes

    X, y, source = load_data(data)
    balance = {int(k): int(v) for k, v in y.value_counts().sort_index().items()}
    say(f"data: {source}")
    say(f"  {len(X)} rows; columns: {', '.join(X.columns)}")
    say(f"  survived: {balance.get(1, 0)} ({y.mean():.1%}), died: {balance.get(0, 0)}")

    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=HOLDOUT_FRACTION, stratify=y, random_state=seed
    )
    smallest_class = int(y_train.value_counts().min())
    if smallest_class < CV_FOLDS:
        raise DataError(
            f"{source}: too few rows: the rarer class has {smallest_class} training rows, "
            f"need at least {CV_FOLDS} for {CV_FOLDS}-fold cross-validation"
        )

    candidates = n_candidates(param_grid(seed, small=small_grid))
    say(
        f"search: {candidates} candidates x {CV_FOLDS} folds on {len(X_train)} rows "
        f"(holdout {len(X_test)}), scoring {SCORING}, n_jobs={n_jobs}, backend {backend}"
    )
    started = time.perf_counter()
    with parallel_backend(backend, scheduler):
        grid = search(X_train, y_train, seed=seed, n_jobs=n_jobs, cv_folds=CV_FOLDS, small=small_grid)
    elapsed = time.perf_counter() - started
    say(f"  done in {elapsed:.1f}s")

    holdout = holdout_metrics(grid.best_estimator_, X_test, y_test)
    best = grid.best_index_
    cv_mean = float(grid.cv_results_["mean_test_score"][best])
    cv_std = float(grid.cv_results_["std_test_score"][best])
    best_params = describe_params(grid.best_params_)

    out.parent.mkdir(parents=True, exist_ok=True)
    training_command = command_line(out, data, seed, serializer, small_grid, name, version)
    started = time.perf_counter()
    path = Path(
        blackbox.save(
            grid,
            out,
            serializer=serializer,
            sample=X_test.head(SAMPLE_ROWS),
            train_data=X_train,
            name=name,
            version=version,
            metrics={"holdout": holdout},
            data_source=source,
            verify=verify,
            block=("training",),  # this package: the isolated check proves the artifact does without it
            signing_key=signing_key,
            metadata={"seed": seed, "training_command": training_command},
            recipe={
                "entry_point": "training",
                "args": recipe_args(seed, serializer, small_grid, name),
                "seed": seed,
                "data": data if data is not None else builtin_titanic_path(),
            },
        )
    )
    save_seconds = time.perf_counter() - started
    signer = blackbox.inspect(path)["signature"]
    say(f"save: signed by key {signer['key_id']}" if signer["signed"] else
        "save: UNSIGNED (no --signing-key): servers refuse it unless told --allow-unsigned")
    if verify:
        say(f"save: verified in an isolated interpreter with training blocked ({save_seconds:.1f}s)")
    else:
        say(f"save: NOT verified (--no-verify); run `blackbox verify {path}` before shipping it")
    manifest = blackbox.inspect(path)
    if predictions_out is not None:
        write_predictions(Path(predictions_out), grid.best_estimator_, X_test, manifest)

    summary: dict[str, Any] = {
        "name": name,
        "version": manifest["version"],
        "data_source": source,
        "rows": len(X),
        "columns": list(X.columns),
        "class_balance": balance,
        "seed": seed,
        "candidates": candidates,
        "cv_folds": CV_FOLDS,
        "search_seconds": round(elapsed, 2),
        "best_params": best_params,
        "cv": {"scoring": SCORING, "mean": cv_mean, "std": cv_std},
        "holdout": holdout,
        "artifact": str(path),
        "size": path.stat().st_size,
        "file_sha256": file_sha256(path),
        "payload_sha256": manifest["payload"]["sha256"],
        "verified": verify,
        "training_command": training_command,
    }
    say(format_summary(summary))
    if push is not None:
        # The same key signs NAME@latest's pointer.
        release = Store.open(push).push(path, signing_key=signing_key, trusted_keys=push_trust)
        summary["release"] = release.to_dict()
        say(f"push: {release.ref} is in {push} ({release.uri})")
    return summary


def _push_trust(signing_key: str | Path | None) -> PublicKey | None:
    """Whom the push trusts: BLACKBOX_TRUSTED_KEYS when set, else the public half of the key that signs here.

    The push verifies the artifact this run signed moments before; without a trusted key it refused that
    artifact after the whole search (the command has no --trusted-keys). Without a signing key it is refused
    before the search: a store takes no unsigned artifact, and pointers are signed.
    """
    key = signing_key or os.environ.get(SIGNING_KEY_ENV) or None
    if key is None:
        raise blackbox.UsageError(
            f"--push needs a signing key (the artifact and its store pointer are signed): pass --signing-key KEY "
            f"or set {SIGNING_KEY_ENV} (`blackbox keygen --out keys` makes one)."
        )
    if os.environ.get(TRUSTED_KEYS_ENV):
        return None
    return signing.load_private_key(key).public_key()


def write_predictions(path: Path, estimator: Any, X: pd.DataFrame, manifest: dict[str, Any]) -> None:
    """Holdout records the served model accepts, with this process's predictions for them."""
    schema = blackbox.Schema.from_dict(manifest["schema"])
    all_records = json.loads(X.to_json(orient="records"))
    kept = [i for i, record in enumerate(all_records) if _accepted(schema, record)]
    records, frame = [all_records[i] for i in kept], X.iloc[kept]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "classes": [int(c) for c in estimator.classes_],
        "records": records,
        "predictions": estimator.predict(frame).tolist(),
        "probabilities": estimator.predict_proba(frame).tolist(),
    }))


def _accepted(schema: blackbox.Schema, record: dict[str, Any]) -> bool:
    try:
        schema.to_frame([record])
    except blackbox.SchemaError:  # e.g. a null where training never saw one: the server answers 422
        return False
    return True


def format_summary(summary: dict[str, Any]) -> str:
    """The short human-readable report printed at the end of a run."""
    params = ", ".join(f"{k}={v}" for k, v in summary["best_params"].items())
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary["holdout"].items())
    cv = summary["cv"]
    return "\n".join(
        [
            f"best: {params}",
            f"  CV {cv['scoring']}: {cv['mean']:.4f} ± {cv['std']:.4f}",
            f"  holdout: {metrics}",
            f"artifact: {summary['artifact']} ({summary['size']:,} bytes)",
            f"  file_sha256:    {summary['file_sha256']}  (the whole file: sha256sum, blackbox push and list)",
            f"  payload_sha256: {summary['payload_sha256']}  (blackbox inspect, the server, the prediction log)",
        ]
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Where to write the artifact.")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Your own CSV or Parquet file (default: the Titanic data shipped in scikit-learn).")
@click.option("--seed", type=int, default=42, show_default=True,
              help="Seed for the holdout split, the CV folds and the forests.")
@click.option("--serializer", type=click.Choice(["dill", "cloudpickle"]), default="dill",
              show_default=True, help="How blackbox serialises the model.")
@click.option("--n-jobs", type=int, default=-1, show_default=True,
              help="Parallel search processes (-1: all CPUs).")
@click.option("--backend", type=click.Choice(["loky", "dask"]), default="loky", show_default=True,
              help="Run the search's fits in local processes, or on a Dask cluster (pip install 'blackbox[dask]').")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler for --backend dask (default: a local cluster of worker processes).")
@click.option("--small-grid", is_flag=True, help="Search a reduced grid (fast, for CI).")
@click.option("--name", default="titanic", show_default=True, help="Model name recorded in the artifact.")
@click.option("--version", "version", default=None,
              help="Model version recorded in the artifact (default: blackbox picks one).")
@click.option("--no-verify", is_flag=True,
              help="Skip the isolated load check before the artifact is published.")
@click.option("--signing-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Ed25519 private key to sign the artifact with (blackbox keygen). "
                   "Default: $BLACKBOX_SIGNING_KEY.")
@click.option("--predictions-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the holdout records and this model's predictions for them (JSON).")
@click.option("--push", "push", default=None, metavar="STORE",
              help="After saving, verify the artifact and push it to this model store (a directory or s3://...).")
def cli(
    out: Path, data: Path | None, seed: int, serializer: str, n_jobs: int, backend: str, scheduler: str | None,
    small_grid: bool, name: str, version: str | None, no_verify: bool, signing_key: Path | None,
    predictions_out: Path | None, push: str | None,
) -> None:
    """Train the Titanic survival model and save it as a blackbox artifact."""
    if scheduler is not None and backend != "dask":
        raise click.UsageError("--scheduler only applies to --backend dask.")
    try:
        train(out, data=data, seed=seed, serializer=serializer, n_jobs=n_jobs,
              small_grid=small_grid, name=name, version=version, verify=not no_verify,
              signing_key=signing_key, predictions_out=predictions_out, backend=backend, scheduler=scheduler,
              push=push)
    except (DataError, OSError) as exc:  # OSError: e.g. --out where no directory can be created
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except blackbox.BlackboxError as exc:  # carries the exit code every blackbox tool uses
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)


def main() -> None:
    """Console-script entry point (``blackbox-train``)."""
    cli()


if __name__ == "__main__":
    main()
