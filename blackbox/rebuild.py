"""Recreate a model from its artifact, not only reinstantiate it.

At save time a *recipe* goes into the manifest: the training package's full
source, the entry point (run as ``python -m``) and the arguments that produced
the model, its seed, the training data file with its sha256, and the CV
protocol. :func:`rebuild` checks the data file against that fingerprint,
unpacks the recorded source into a temporary directory, re-runs the recorded
training there in a subprocess (the recorded code is never imported into this
process), and compares the new model with the old: library versions, CV score
and holdout metrics, and the golden-sample predictions.

The rebuilt artifact is signed here (the recorded code never sees the key),
loaded in isolation trusting that key, and only then published at its
destination: a failed rebuild leaves no artifact behind. A JSON report is
written in every outcome, a failure included. Paths the caller gives (data,
keys, outputs) mean the caller's working directory, not the one the recorded
training runs in.

The entry point's contract: it accepts ``--data PATH --out PATH --version V``
besides its recorded arguments, and saves with ``blackbox.save(..., recipe=...)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from . import signing
from .artifact import Artifact, read_bytes, read_header, read_manifest
from .atomic import atomic_write
from .containment.isolation import verify
from .errors import BlackboxError, ExitCode, RebuildError, UsageError
from .manifest import Manifest, scorer_name
from .signing import SIGNING_KEY_ENV
from .trust import TrustedKeys, authenticate

REPRODUCED, DRIFTED = ExitCode.OK, ExitCode.REBUILD_DRIFTED


def recipe_section(recipe: Mapping[str, Any], search: Any) -> dict[str, Any]:
    """Complete a recipe passed to ``save``: package source, data fingerprint, CV protocol."""
    unknown = set(recipe) - {"entry_point", "args", "seed", "data"}
    if unknown or "entry_point" not in recipe or "data" not in recipe:
        raise UsageError(
            "recipe takes entry_point (the module run with python -m), data (the training data file), "
            f"and optionally args and seed; got {sorted(recipe)}."
        )
    package = str(recipe["entry_point"]).partition(".")[0]
    init: str | None = getattr(sys.modules.get(package), "__file__", None)  # None: not imported, or a namespace package
    if not init:
        raise UsageError(f"The recipe's package {package!r} is not imported; import it before saving.")
    data = Path(recipe["data"]).resolve()
    return {
        "entry_point": str(recipe["entry_point"]),
        "args": [str(a) for a in recipe.get("args", [])],
        "seed": recipe.get("seed"),
        "data": {"path": str(data), "sha256": _file_sha256(data)},
        "cv": None if search is None else {
            "splitter": repr(search.cv),
            "folds": search.n_splits_,
            "scoring": scorer_name(search),
        },
        "source": _package_source(Path(init).parent, package),
    }


@dataclass(frozen=True)
class RebuildReport:
    """What changed between an artifact and its rebuild."""

    status: str  # reproduced, drifted or failed
    exit_code: int
    artifact: str
    rebuilt: str | None  # None when failed: nothing was published
    seconds: float
    report: str | None = None
    signed_by: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, dict[str, str | None]] = field(default_factory=dict)
    cv: dict[str, Any] = field(default_factory=dict)
    holdout: dict[str, dict[str, float | None]] = field(default_factory=dict)
    golden: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None  # code and message, when failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rebuild(
    path: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    allow_data_change: bool = False,
    signing_key: str | os.PathLike[str] | None = None,
    trusted_keys: TrustedKeys = None,
    allow_unsigned: bool = False,
    timeout: float = 3600,
) -> RebuildReport:
    """Re-run the training recorded in ``path`` in this environment and compare the results.

    The artifact's signature is checked first: rebuilding runs its recorded code.
    A data file whose sha256 differs from the recorded one is refused unless
    ``allow_data_change``. The new artifact is signed with ``signing_key``
    (default: BLACKBOX_SIGNING_KEY); without one the rebuild is refused before
    training, unless ``allow_unsigned`` (then it is unsigned). It is published at
    ``out`` (default: ``NAME.rebuilt.bbx`` beside the old one) only once it loads.
    The JSON report goes to ``report`` (default: ``OUT.report.json``) in every
    outcome; on failure the error is raised after it is written.
    """
    started = time.perf_counter()
    path = Path(path)
    new_path, report_path = output_paths(path, out, report)
    try:
        result = _rebuild(
            path, new_path, data=data, allow_data_change=allow_data_change, signing_key=signing_key,
            trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, timeout=timeout,
        )
    except Exception as exc:
        error = exc if isinstance(exc, BlackboxError) else RebuildError(f"{type(exc).__name__}: {exc}")
        failed = RebuildReport(
            status="failed", exit_code=error.exit_code, artifact=str(path), rebuilt=None,
            seconds=round(time.perf_counter() - started, 2), report=str(report_path),
            error={"code": error.code, "message": error.message},
        )
        atomic_write(report_path, json.dumps(failed.to_dict(), indent=2).encode())
        raise
    result = replace(result, seconds=round(time.perf_counter() - started, 2), report=str(report_path))
    atomic_write(report_path, json.dumps(result.to_dict(), indent=2).encode())
    return result


def output_paths(
    path: str | os.PathLike[str], out: str | os.PathLike[str] | None, report: str | os.PathLike[str] | None
) -> tuple[Path, Path]:
    """Where the rebuilt artifact and the report go: ``out`` (default: ``NAME.rebuilt.bbx`` beside
    ``path``) and ``report`` (default: the artifact's path + ``.report.json``), resolved here."""
    new_path = (Path(out) if out else Path(path).with_name(f"{Path(path).stem}.rebuilt.bbx")).resolve()
    return new_path, Path(report).resolve() if report else new_path.with_name(f"{new_path.name}.report.json")


def _rebuild(
    path: Path, new_path: Path, *, data: str | os.PathLike[str] | None, allow_data_change: bool,
    signing_key: str | os.PathLike[str] | None, trusted_keys: TrustedKeys, allow_unsigned: bool, timeout: float,
) -> RebuildReport:
    manifest_bytes, block = read_header(path)
    authenticate(Artifact(manifest_bytes, block, b""), trusted_keys, allow_unsigned=allow_unsigned)
    old = read_manifest(manifest_bytes)
    recipe = old.recipe
    if not recipe:
        raise RebuildError(f"{str(path)!r} records no recipe; it was saved without blackbox.save(..., recipe=...).")
    key_path = signing_key or os.environ.get(SIGNING_KEY_ENV) or None
    if key_path is None and not allow_unsigned:
        raise RebuildError(
            "No key to sign the rebuilt artifact with, and loaders refuse unsigned artifacts: pass "
            f"signing_key=KEY or set {SIGNING_KEY_ENV}; or allow_unsigned=True for an unsigned rebuild.",
            options={"signing_key": "KEY", "allow_unsigned": True},
        )
    private_key = None if key_path is None else signing.load_private_key(Path(key_path).resolve())
    data_path = Path(data or recipe["data"]["path"]).resolve()
    if not data_path.is_file():
        raise RebuildError(f"Training data {str(data_path)!r} is not there; pass the snapshot as data=PATH.", options={"data": "PATH"})
    data_sha = _file_sha256(data_path)
    data_changed = data_sha != recipe["data"]["sha256"]
    if data_changed and not allow_data_change:
        raise RebuildError(
            f"Training data {str(data_path)!r} has sha256 {data_sha[:16]}…, not the recorded "
            f"{recipe['data']['sha256'][:16]}…: it is another snapshot. Pass the original data, or "
            "allow_data_change=True to rebuild on this one (the report will say so).",
            options={"allow_data_change": True},
        )
    with tempfile.TemporaryDirectory(prefix="blackbox-rebuild-") as workdir:
        src, built = Path(workdir) / "src", Path(workdir) / "rebuilt.bbx"
        _unpack_source(recipe["source"], src)
        command = [
            sys.executable, "-m", recipe["entry_point"], *recipe["args"],
            "--data", str(data_path), "--out", str(built), "--version", f"{old.version}+rebuild",
        ]
        # The recorded code never holds the key: it saves unsigned, and the result is signed here.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != SIGNING_KEY_ENV}
        try:
            done = subprocess.run(command, cwd=src, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RebuildError(f"The recorded training ran over {timeout:.0f} s and was stopped.") from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise RebuildError(f"The recorded training failed (exit {done.returncode}):\n{tail}")
        if not built.is_file():
            raise RebuildError(f"The recorded training exited 0 but wrote no artifact at --out; is {recipe['entry_point']!r} a blackbox training entry point?")
        new = read_manifest(read_header(built)[0])
        if (new.recipe or {}).get("source") != recipe["source"]:
            raise RebuildError(
                "The rebuilt artifact was not made by the recorded source (an installed copy of "
                f"{recipe['entry_point']!r} shadowed it); uninstall it or run rebuild elsewhere."
            )
        if key_path is not None:  # private_key was loaded from it
            from .persist import sign  # persist imports this module

            sign(built, Path(key_path).resolve())
        golden = old.golden
        probe = verify(  # the recipe's own package blocked, as the training command's check blocks it
            built, records=golden.records, block=[recipe["entry_point"].partition(".")[0]],
            allow_unsigned=private_key is None,
            trusted_keys=None if private_key is None else private_key.public_key(),
        )
        if probe.predictions is None:
            raise RebuildError(f"The rebuilt artifact does not load: {probe.message}")
        atomic_write(new_path, read_bytes(built))
    changed = sum(a != b for a, b in zip(golden.predictions, probe.predictions))
    signer = None if private_key is None else signing.key_id(private_key.public_key())
    return _report(path, new_path, old, new, data_path, data_changed, changed, signer)


def _report(
    path: Path, new_path: Path, old: Manifest, new: Manifest,
    data_path: Path, data_changed: bool, golden_changed: int, signed_by: str | None,
) -> RebuildReport:
    old_cv, new_cv = old.metric_group("search"), new.metric_group("search")
    old_score, new_score = old_cv.get("best_score"), new_cv.get("best_score")
    spread = old_cv.get("best_score_std") or 0.0
    within = old_score is not None and new_score is not None and abs(new_score - old_score) <= spread
    reproduced = old_score == new_score and golden_changed == 0 and not data_changed
    old_pins, new_pins = old.requirements or {}, new.requirements or {}
    libraries = sorted({*old_pins, *new_pins, "python"})
    versions = {
        lib: {
            "old": old.python.version if lib == "python" else old_pins.get(lib),
            "new": new.python.version if lib == "python" else new_pins.get(lib),
        }
        for lib in libraries
    }
    old_holdout, new_holdout = old.metric_group("holdout"), new.metric_group("holdout")
    notes = []
    if data_changed:
        notes.append("rebuilt on a different data snapshot (a data change was allowed)")
    if signed_by is None:
        notes.append("the rebuilt artifact is UNSIGNED (unsigned was allowed)")
    notes += [f"{lib} {v['old']} -> {v['new']}" for lib, v in versions.items() if v["old"] != v["new"]]
    return RebuildReport(
        status="reproduced" if reproduced else "drifted",
        exit_code=REPRODUCED if reproduced else DRIFTED,
        artifact=str(path),
        rebuilt=str(new_path),
        seconds=0.0,  # set by rebuild()
        signed_by=signed_by,
        data={"path": str(data_path), "changed": data_changed},
        versions=versions,
        cv={
            "old": {"mean": old_score, "std": old_cv.get("best_score_std"), "params": old_cv.get("best_params")},
            "new": {"mean": new_score, "std": new_cv.get("best_score_std"), "params": new_cv.get("best_params")},
            "difference": None if old_score is None or new_score is None else new_score - old_score,
            "within_old_spread": within,
        },
        holdout={k: {"old": old_holdout.get(k), "new": new_holdout.get(k)} for k in sorted({*old_holdout, *new_holdout})},
        golden={"rows": len(old.golden.predictions), "changed": golden_changed},
        notes=notes,
    )


def _package_source(directory: Path, package: str) -> dict[str, str]:
    """Every Python file of the package, by path relative to its parent directory."""
    return {
        str(PurePosixPath(package, *file.relative_to(directory).parts)): file.read_text(encoding="utf-8")
        for file in sorted(directory.rglob("*.py"))
        if "__pycache__" not in file.parts
    }


def _unpack_source(source: Mapping[str, str], root: Path) -> None:
    for relative, text in source.items():
        parts = PurePosixPath(relative).parts
        if PurePosixPath(relative).is_absolute() or ".." in parts or not relative.endswith(".py"):
            raise RebuildError(f"The recipe's source names {relative!r}, outside its package; refusing to write it.")
        target = root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def format_report(report: RebuildReport) -> str:
    """The human summary of a rebuild."""
    cv = report.cv
    def score(side: dict[str, Any]) -> str:
        return "-" if side["mean"] is None else f"{side['mean']:.6f} ± {side['std'] or 0:.6f}"
    lines = [
        f"{report.status.upper()}: {report.artifact} -> {report.rebuilt} in {report.seconds:.1f}s",
        f"  CV score      old {score(cv['old'])}, new {score(cv['new'])}"
        + ("" if cv["difference"] is None else f", difference {cv['difference']:+.6f}")
        + (", within the old spread" if cv["within_old_spread"] else ", OUTSIDE the old spread"),
        f"  golden sample {report.golden['changed']} of {report.golden['rows']} predictions changed",
    ]
    lines += [f"  holdout {k:<9} old {_num(v['old'])}, new {_num(v['new'])}" for k, v in report.holdout.items()]
    lines += [f"  note          {n}" for n in report.notes] or ["  libraries     same versions as the artifact's"]
    lines += [f"  signed by     key {report.signed_by}"] if report.signed_by else []
    lines += [f"  report        {report.report}"] if report.report else []
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
