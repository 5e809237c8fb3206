"""What an artifact says about itself: the manifest's type, and the builders of its sections.

:class:`Manifest` is the product's file format as frozen dataclasses, one per
section a reader reads by name (:class:`Serializer`, :class:`Python`,
:class:`Payload`, :class:`Output`, :class:`Git`, :class:`Data`,
:class:`FastPath`, :class:`Golden`); open-ended sections (requirements,
metrics, schema, profile, source, recipe, metadata) stay JSON mappings, read by
their own modules (``Schema.from_dict``, drift, rebuild). Rules callers rely on:

* :meth:`Manifest.from_json` is strict: a required key missing, or any known key
  of the wrong JSON type (a string where an object belongs, an empty name, a
  boolean for a number), is an :class:`~blackbox.errors.ArtifactError` (exit 3)
  listing every problem by its dotted path, before anything is unpickled.
  :func:`blackbox.artifact.parse_manifest` calls it for every reader.
* The round trip is exact: ``Manifest.from_json(d).to_json() == d`` for every
  manifest blackbox wrote, old ones included. An optional key the JSON did not
  have stays absent (``absent``; its attribute reads None), and keys this
  version does not know (a newer blackbox's) are kept in ``extra`` and written
  back as they were: reading never loses what a signature covers.
* :meth:`Manifest.check_loadable` holds what loading needs beyond the shape (this
  format version, a serializer blackbox knows): ``inspect`` reads such a
  manifest, ``load`` refuses it.

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

from .errors import ArtifactError


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def scorer_name(search: Any) -> str | None:
    """A search's ``scoring`` as recorded: its name, the repr of a callable or dict, None for the estimator's own score."""
    scoring = search.scoring
    return scoring if scoring is None or isinstance(scoring, str) else repr(scoring)


def search_metrics(search: Any) -> dict[str, Any]:
    """Best parameters, best CV score and mean ± std of every candidate of a fitted search."""
    results = search.cv_results_
    best = search.best_index_
    metrics: dict[str, Any] = jsonable(
        {
            "scoring": scorer_name(search),
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
    return metrics


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


# -- the manifest's type --------------------------------------------------------------------------------------------

_S = TypeVar("_S", bound="Section")
_JSON_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
               list: "an array", type(None): "null"}
_SHOWN_PROBLEMS = 6


def _key(*kinds: type, required: bool = False, section: type[Section] | None = None) -> Any:
    """A dataclass field read from the JSON key of its name: its JSON kinds, and whether it must be present."""
    kinds = (dict,) if section is not None else kinds
    metadata = {"kinds": kinds, "required": required, "section": section}
    return field(metadata=metadata) if required else field(default=None, metadata=metadata)


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true is not a number
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds) and (not isinstance(value, str) or bool(value))


def _kind_of(value: Any) -> str:
    return "empty" if value == "" else _JSON_KINDS.get(type(value), type(value).__name__)


@dataclass(frozen=True, kw_only=True)
class Section:
    """A JSON object with known keys as typed attributes; unknown keys in ``extra``, absent optional keys in ``absent``."""

    extra: Mapping[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = field(default=frozenset())
    _OWN: ClassVar[frozenset[str]] = frozenset({"extra", "absent"})

    @classmethod
    def _known(cls) -> list[Any]:
        return [f for f in fields(cls) if f.name not in Section._OWN]

    @classmethod
    def parse(cls: type[_S], data: Any, where: str, problems: list[str]) -> _S | None:
        """The section read from ``data``, appending what is wrong to ``problems`` (None if it is not an object)."""
        if not isinstance(data, dict):
            problems.append(f"{where} should be an object, is {_kind_of(data)}")
            return None
        values: dict[str, Any] = {}
        absent = []
        for f in cls._known():
            path = f"{where}.{f.name}" if where else f.name
            kinds, required, section = f.metadata["kinds"], f.metadata["required"], f.metadata["section"]
            if f.name not in data:
                if required:
                    problems.append(f"{path} should be {' or '.join(_JSON_KINDS[k] for k in kinds)}, is missing")
                absent.append(f.name)
                values[f.name] = None
                continue
            value = data[f.name]
            if value is None and not required:
                values[f.name] = None
            elif not _is(value, kinds):
                null = "" if required else " or null"
                problems.append(f"{path} should be {' or '.join(_JSON_KINDS[k] for k in kinds)}{null}, is {_kind_of(value)}")
                values[f.name] = None
            else:
                values[f.name] = section.parse(value, path, problems) if section is not None else value
        known = {f.name for f in cls._known()}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra, absent=frozenset(absent))

    def to_json(self) -> dict[str, Any]:
        """The JSON object: every known key (but those absent when read) and the unknown ones, as read."""
        out: dict[str, Any] = {}
        for f in self._known():
            if f.name in self.absent:
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_json() if isinstance(value, Section) else value
        return {**out, **self.extra}


@dataclass(frozen=True, kw_only=True)
class Serializer(Section):
    name: str = _key(str, required=True)
    version: str | None = _key(str)


@dataclass(frozen=True, kw_only=True)
class Python(Section):
    version: str = _key(str, required=True)
    implementation: str | None = _key(str)


@dataclass(frozen=True, kw_only=True)
class Payload(Section):
    sha256: str = _key(str, required=True)
    size: int = _key(int, required=True)


@dataclass(frozen=True, kw_only=True)
class Output(Section):
    kind: str | None = _key(str)
    classes: list[Any] | None = _key(list)
    probabilities: bool | None = _key(bool)


@dataclass(frozen=True, kw_only=True)
class Git(Section):
    commit: str | None = _key(str)
    branch: str | None = _key(str)
    dirty: bool | None = _key(bool)


@dataclass(frozen=True, kw_only=True)
class Data(Section):
    source: str | None = _key(str)
    rows: int | None = _key(int)
    columns: list[str] | None = _key(list)
    fingerprint: str | None = _key(str)


@dataclass(frozen=True, kw_only=True)
class FastPath(Section):
    """The fast path's record as save wrote it: on or off (``reason``), each step's mode, the speed-up measured then."""

    enabled: bool | None = _key(bool)
    reason: str | None = _key(str)
    steps: list[Any] | None = _key(list)
    speedup: Mapping[str, Any] | None = _key(dict)


@dataclass(frozen=True, kw_only=True)
class Golden(Section):
    records: list[Any] = _key(list, required=True)
    predictions: list[Any] = _key(list, required=True)
    probabilities: list[Any] | None = _key(list)


@dataclass(frozen=True, kw_only=True)
class Manifest(Section):
    """The manifest of one artifact (see the module docstring for the rules)."""

    format_version: int = _key(int, required=True)
    name: str = _key(str, required=True)
    version: str = _key(str, required=True)
    created_at: str | None = _key(str)
    adapter: str = _key(str, required=True)
    estimator: str | None = _key(str)
    serializer: Serializer = _key(required=True, section=Serializer)
    python: Python = _key(required=True, section=Python)
    blackbox_version: str | None = _key(str)
    requirements: Mapping[str, str] | None = _key(dict)
    by_value: list[str] | None = _key(list)
    imports: list[str] | None = _key(list)
    payload: Payload = _key(required=True, section=Payload)
    git: Git | None = _key(section=Git)
    data: Data | None = _key(section=Data)
    schema: Mapping[str, Any] = _key(dict, required=True)
    features: Mapping[str, Any] | None = _key(dict)
    output: Output | None = _key(section=Output)
    metrics: Mapping[str, Any] | None = _key(dict)
    source: Mapping[str, Any] | None = _key(dict)
    profile: Mapping[str, Any] | None = _key(dict)
    recipe: Mapping[str, Any] | None = _key(dict)
    metadata: Mapping[str, Any] | None = _key(dict)
    fast_path: FastPath | None = _key(section=FastPath)
    golden: Golden = _key(required=True, section=Golden)

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """The typed manifest of parsed JSON; ArtifactError (exit 3) naming every key of the wrong shape."""
        problems: list[str] = []
        manifest = cls.parse(data, "", problems)
        if problems or manifest is None:
            more = f" and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
            raise ArtifactError(
                f"The artifact manifest is malformed: {'; '.join(problems[:_SHOWN_PROBLEMS]) or 'not an object'}{more}. "
                "The file is damaged or not an artifact written by blackbox.save; nothing was unpickled. Fetch it "
                "again from its source, or re-save the model."
            )
        return manifest

    def check_loadable(self, format_version: int, serializers: Collection[str]) -> None:
        """Raise ArtifactError unless this blackbox can load it: the framing's format version, a known serializer."""
        if self.format_version != format_version:
            raise ArtifactError(
                f"The manifest says format {self.format_version!r} but the framing says {format_version}; "
                "the file is damaged."
            )
        if self.serializer.name not in serializers:
            raise ArtifactError(f"The artifact names serializer {self.serializer.name!r}, which blackbox does not know.")

    # -- what readers ask, in one place ---------------------------------------------------------------------------
    @property
    def classes(self) -> list[Any] | None:
        return self.output.classes if self.output is not None else None

    @property
    def has_proba(self) -> bool:
        return bool(self.output is not None and self.output.probabilities)

    @property
    def is_regressor(self) -> bool:
        return self.output is not None and self.output.kind == "regression"

    @property
    def fast_path_enabled(self) -> bool:
        return bool(self.fast_path is not None and self.fast_path.enabled)

    def metric_group(self, group: str) -> Mapping[str, Any]:
        """``metrics[group]`` (``search``, ``holdout``...), or an empty mapping."""
        value = (self.metrics or {}).get(group)
        return value if isinstance(value, Mapping) else {}
