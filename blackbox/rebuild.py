"""Recreate a model from its artifact, not only reinstantiate it.

At save time a *recipe* goes into the manifest: the training package's full
source, the entry point (run as ``python -m``) and the arguments that produced
the model, its seed, the training data file with its sha256, and the CV
protocol. :func:`rebuild` checks the data file against that fingerprint,
unpacks the recorded source into a temporary directory, re-runs the recorded
training there in a subprocess (the recorded code is never imported into this
process), and compares the new model with the old: library versions, CV score
and holdout metrics, and the golden-sample predictions.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .artifact import Artifact, parse_manifest, read_header
from .errors import BlackboxError, UsageError
from .isolation import verify
from .trust import TrustedKeys, authenticate

REPRODUCED, DRIFTED = 0, 12


class RebuildError(BlackboxError):
    """The recorded training could not be re-run (no recipe, changed data, a failing run)."""

    code = "rebuild_failed"
    exit_code = 13


def recipe_section(recipe: Mapping[str, Any], search: Any) -> dict[str, Any]:
    """Complete a recipe passed to ``save``: package source, data fingerprint, CV protocol."""
    unknown = set(recipe) - {"entry_point", "args", "seed", "data"}
    if unknown or "entry_point" not in recipe or "data" not in recipe:
        raise UsageError(
            "recipe takes entry_point (the module run with python -m), data (the training data file), "
            f"and optionally args and seed; got {sorted(recipe)}."
        )
    package = str(recipe["entry_point"]).partition(".")[0]
    module = sys.modules.get(package)
    if module is None or not getattr(module, "__file__", None):
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
            "scoring": search.scoring if isinstance(search.scoring, str) else repr(search.scoring),
        },
        "source": _package_source(Path(module.__file__).parent, package),
    }


@dataclass(frozen=True)
class RebuildReport:
    """What changed between an artifact and its rebuild."""

    status: str
    exit_code: int
    artifact: str
    rebuilt: str
    seconds: float
    data: dict[str, Any]
    versions: dict[str, dict[str, str | None]]
    cv: dict[str, Any]
    holdout: dict[str, dict[str, float | None]]
    golden: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rebuild(
    path: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    allow_data_change: bool = False,
    trusted_keys: TrustedKeys = None,
    allow_unsigned: bool = False,
    timeout: float = 3600,
) -> RebuildReport:
    """Re-run the training recorded in ``path`` in this environment and compare the results.

    The artifact's signature is checked first: rebuilding runs its recorded code.
    A data file whose sha256 differs from the recorded one is refused unless
    ``allow_data_change``. The new artifact is written to ``out`` (default:
    next to the old one, ``NAME.rebuilt.bbx``) and signed like any save
    (BLACKBOX_SIGNING_KEY).
    """
    started = time.perf_counter()
    path = Path(path)
    manifest_bytes, block = read_header(path)
    authenticate(Artifact(manifest_bytes, block, b""), trusted_keys, allow_unsigned=allow_unsigned)
    old = parse_manifest(manifest_bytes)
    recipe = old.get("recipe")
    if not recipe:
        raise RebuildError(f"{str(path)!r} records no recipe; it was saved without blackbox.save(..., recipe=...).")
    data_path = Path(data or recipe["data"]["path"]).resolve()
    if not data_path.is_file():
        raise RebuildError(f"Training data {str(data_path)!r} is not there; pass the snapshot with --data PATH.")
    data_sha = _file_sha256(data_path)
    data_changed = data_sha != recipe["data"]["sha256"]
    if data_changed and not allow_data_change:
        raise RebuildError(
            f"Training data {str(data_path)!r} has sha256 {data_sha[:16]}…, not the recorded "
            f"{recipe['data']['sha256'][:16]}…: it is another snapshot. Pass the original data, or "
            "--allow-data-change to rebuild on this one (the report will say so)."
        )
    new_path = Path(out) if out else path.with_name(f"{path.stem}.rebuilt.bbx")
    with tempfile.TemporaryDirectory(prefix="blackbox-rebuild-") as workdir:
        src = Path(workdir) / "src"
        _unpack_source(recipe["source"], src)
        command = [
            sys.executable, "-m", recipe["entry_point"], *recipe["args"],
            "--data", str(data_path), "--out", str(new_path.resolve()), "--version", f"{old['version']}+rebuild",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        try:
            done = subprocess.run(command, cwd=src, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RebuildError(f"The recorded training ran over {timeout:.0f} s and was stopped.") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RebuildError(f"The recorded training failed (exit {done.returncode}):\n{tail}")
    new = parse_manifest(read_header(new_path)[0])
    if (new.get("recipe") or {}).get("source") != recipe["source"]:
        raise RebuildError(
            "The rebuilt artifact was not made by the recorded source (an installed copy of "
            f"{recipe['entry_point']!r} shadowed it); uninstall it or run rebuild elsewhere."
        )
    golden = old["golden"]
    probe = verify(new_path, records=golden["records"], trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
    if probe.predictions is None:
        raise RebuildError(f"The rebuilt artifact does not load: {probe.message}")
    changed = sum(a != b for a, b in zip(golden["predictions"], probe.predictions))
    return _report(path, new_path, old, new, data_path, data_changed, changed, time.perf_counter() - started)


def _report(
    path: Path, new_path: Path, old: dict[str, Any], new: dict[str, Any],
    data_path: Path, data_changed: bool, golden_changed: int, seconds: float,
) -> RebuildReport:
    old_cv, new_cv = old["metrics"].get("search") or {}, new["metrics"].get("search") or {}
    old_score, new_score = old_cv.get("best_score"), new_cv.get("best_score")
    spread = old_cv.get("best_score_std") or 0.0
    within = old_score is not None and new_score is not None and abs(new_score - old_score) <= spread
    reproduced = old_score == new_score and golden_changed == 0 and not data_changed
    libraries = sorted({*old["requirements"], *new["requirements"], "python"})
    versions = {
        lib: {
            "old": old["python"]["version"] if lib == "python" else old["requirements"].get(lib),
            "new": new["python"]["version"] if lib == "python" else new["requirements"].get(lib),
        }
        for lib in libraries
    }
    old_holdout, new_holdout = old["metrics"].get("holdout") or {}, new["metrics"].get("holdout") or {}
    notes = []
    if data_changed:
        notes.append("rebuilt on a different data snapshot (--allow-data-change)")
    notes += [f"{lib} {v['old']} -> {v['new']}" for lib, v in versions.items() if v["old"] != v["new"]]
    return RebuildReport(
        status="reproduced" if reproduced else "drifted",
        exit_code=REPRODUCED if reproduced else DRIFTED,
        artifact=str(path),
        rebuilt=str(new_path),
        seconds=round(seconds, 2),
        data={"path": str(data_path), "changed": data_changed},
        versions=versions,
        cv={
            "old": {"mean": old_score, "std": old_cv.get("best_score_std"), "params": old_cv.get("best_params")},
            "new": {"mean": new_score, "std": new_cv.get("best_score_std"), "params": new_cv.get("best_params")},
            "difference": None if old_score is None or new_score is None else new_score - old_score,
            "within_old_spread": within,
        },
        holdout={k: {"old": old_holdout.get(k), "new": new_holdout.get(k)} for k in sorted({*old_holdout, *new_holdout})},
        golden={"rows": len(old["golden"]["predictions"]), "changed": golden_changed},
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
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
