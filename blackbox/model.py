"""``Model``: the one interface the rest of the project uses to get predictions.

A Model pairs an estimator with its manifest (:class:`~blackbox.manifest.Manifest`); it never reads or verifies files
(:mod:`blackbox.persist` does, then builds it). It takes raw records (dicts, as
JSON gives them) or a DataFrame, validates and types them with the schema
captured at training time, and returns plain Python values. Libraries plug in
by subclassing with an ``adapter`` name; :class:`SklearnModel` is the adapter
for scikit-learn estimators.

Where predictions come out (``predict_frame``, ``predict_proba_frame``,
``predict_and_proba_frame``, so serving and batch scoring alike), two failures
are told apart from a bug: a model that refuses records which passed the schema
(scikit-learn's "Input X contains infinity or a value too large", NaN) raises
:class:`~blackbox.errors.ModelInputError` (a SchemaError naming the rows when
they can be found), and a model that answers NaN or infinity raises
:class:`~blackbox.errors.ModelOutputError` naming the rows; neither ever
returns ``null`` as a prediction.

When the artifact carries a fast path (:mod:`blackbox.fastpath`, recorded as
``manifest.fast_path.enabled``), ``model.plan`` computes the predictions
and a call it defers runs the estimator itself; ``model.plan = None`` (or
``blackbox.load(..., fast_path=False)``) turns it off. With a plan, records
(``predict``, ``predict_batch``, ``predict_proba``) go from the schema's checks
to the plan without a DataFrame (:class:`~blackbox.fastpath.table.Prepared`);
the ``*_frame`` methods take either that or a prepared frame. The self-test
runs the golden sample through both routes.

The plan is derived at save by the fast-path code of that day, and rides
pickled in the payload; the estimator is what the artifact is. So a plan never
stops a model from being served: one recorded with another ``PLAN_VERSION``
than this blackbox reads is not used, and one that raises or differs on the
golden sample (:meth:`Model.check_plan`, run by every load, and the second half
of :meth:`Model.self_test`) is dropped; either way with one warning,
and the model predicts through the estimator (re-saving it builds a new plan).
"""

from __future__ import annotations

import logging
import math
import re
import reprlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

from .artifact import Artifact
from .errors import ModelInputError, ModelOutputError, SelfTestError, UsageError
from .fastpath import ATTRIBUTE as _PLAN_ATTRIBUTE
from .fastpath import PLAN_VERSION, Defer
from .fastpath.table import Prepared, as_frame
from .manifest import Manifest, jsonable
from .schema import Schema
from .signing import read_block

log = logging.getLogger("blackbox")

if TYPE_CHECKING:
    from .fastpath.plan import Plan

Records = Sequence[Mapping[str, Any]] | pd.DataFrame
_T = TypeVar("_T")

_REFUSED_INPUT = re.compile(r"\bcontains (NaN|infinity)")
"""scikit-learn's input check (``check_array``): "Input X contains infinity or a value too large for dtype('float32')." """
_SHOWN_ROWS = 10

PROBA_TOLERANCE = 1e-9
"""Largest absolute difference in a probability that the self-test accepts."""


class Model:
    """A trained model with its manifest; subclass it (with ``adapter=``) for another library."""

    adapter: ClassVar[str] = ""
    expects: ClassVar[str] = "an estimator this adapter accepts"  # what accepts() wants, for a refusal
    _adapters: ClassVar[dict[str, type[Model]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.adapter:
            Model._adapters[cls.adapter] = cls

    def __init__(self, estimator: Any, manifest: Manifest, artifact: Artifact | None = None) -> None:
        self.estimator = estimator
        self.manifest = manifest
        self.schema = Schema.from_dict(manifest.schema)
        self._artifact = artifact
        self.plan: Plan | None = getattr(estimator, _PLAN_ATTRIBUTE, None) if manifest.fast_path_enabled else None
        if self.plan is not None and getattr(self.plan, "version", None) != PLAN_VERSION:
            self._drop_plan(f"it was saved as fast-path version {getattr(self.plan, 'version', None)!r}, "
                            f"and this blackbox reads version {PLAN_VERSION}")

    # -- what an adapter provides -------------------------------------------
    @classmethod
    def accepts(cls, estimator: Any) -> bool:
        """True when this adapter can serve ``estimator``."""
        raise NotImplementedError

    @classmethod
    def describe_output(cls, estimator: Any) -> dict[str, Any]:
        """The output section of the manifest: classes, or regression."""
        raise NotImplementedError

    def _predict(self, frame: pd.DataFrame | Prepared) -> np.ndarray:
        raise NotImplementedError

    def _predict_proba(self, frame: pd.DataFrame | Prepared) -> np.ndarray:
        raise NotImplementedError

    def _predict_both(self, frame: pd.DataFrame | Prepared) -> tuple[np.ndarray, np.ndarray]:
        """Predictions and probabilities; adapters override it to share the work of the two."""
        return self._predict(frame), self._predict_proba(frame)

    @classmethod
    def numeric_limit(cls, estimator: Any) -> float | None:
        """The largest magnitude the estimator computes a number with, when it is below float64's (saved in the schema)."""
        return None

    @classmethod
    def input_columns(cls, estimator: Any, frame: pd.DataFrame) -> tuple[list[str] | None, str]:
        """The columns of the training ``frame`` the estimator reads, in order, and how that is known.

        None and why when it cannot say: then the schema takes every column of ``frame``.
        """
        return None, f"the {cls.adapter!r} adapter does not say which columns a model reads"

    def _refused_rows(self, frame: pd.DataFrame, dtype: np.dtype) -> list[int]:
        """Rows of ``frame`` whose features are not finite in ``dtype`` (after an input refusal; [] if unknown)."""
        return []

    # -- the interface ------------------------------------------------------
    @classmethod
    def adapter_for(cls, estimator: Any) -> type[Model]:
        for adapter in cls._adapters.values():
            if adapter.accepts(estimator):
                return adapter
        raise UsageError(
            f"No blackbox adapter serves {type(estimator).__name__}; pass a fitted scikit-learn estimator, "
            "or subclass blackbox.Model with adapter='name' for another library."
        )

    @classmethod
    def named(cls, adapter: str) -> type[Model]:
        try:
            return cls._adapters[adapter]
        except KeyError:
            raise UsageError(
                f"The artifact needs the {adapter!r} adapter, which this blackbox does not have; "
                "upgrade blackbox or import the package that defines it."
            ) from None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def sha256(self) -> str:
        return self.manifest.payload.sha256

    @property
    def signer(self) -> str | None:
        """Key id of the verified signature, or None for an unsigned artifact."""
        if self._artifact is None or not self._artifact.signature:
            return None
        return str(read_block(self._artifact.signature)["key_id"])

    @property
    def classes(self) -> list[Any] | None:
        return self.manifest.classes

    def prepare(self, records: Records, *, strict: bool = False) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
        """Validate records against the schema; return the typed frame and the warnings."""
        return self.schema.to_frame(records, strict=strict)

    def validate(self, records: Records, *, strict: bool = False) -> list[dict[str, Any]]:
        """What :meth:`prepare` checks, without building the frame: the warnings (raises SchemaError)."""
        return self.schema.validate(records, strict=strict)

    def checked(self, records: Records, *, strict: bool = False) -> Prepared:
        """What :meth:`prepare` checks, with the frame not built yet: the input of the ``*_frame`` methods with a plan.

        Its ``warnings`` are the schema's; ``frame()`` is the frame :meth:`prepare`
        builds (for a model without a plan). Raises SchemaError.
        """
        return Prepared(self.schema, records, strict=strict)

    def predict(self, record: Mapping[str, Any]) -> Any:
        """The prediction for one record."""
        return self.predict_batch([record])[0]

    def predict_batch(self, records: Records) -> list[Any]:
        """Predictions for many records, in input order."""
        return self.predict_frame(self._prepared(records))

    def _prepared(self, records: Records) -> pd.DataFrame | Prepared:
        """The records checked by the schema: as columns for the plan (no DataFrame), else as the prepared frame."""
        if self.plan is not None:
            return Prepared(self.schema, records)
        return self.prepare(records)[0]

    def predict_frame(self, frame: pd.DataFrame | Prepared) -> list[Any]:
        """Predictions for a frame already prepared by :meth:`prepare` (or records as :class:`Prepared`)."""
        predictions = self._guarded(self._predict, frame)
        self._check_output(predictions, "predictions")
        answers: list[Any] = jsonable(predictions)
        return answers

    def predict_proba(self, records: Mapping[str, Any] | Records) -> list[float] | list[list[float]]:
        """Class probabilities (columns in ``classes`` order); one row for one record."""
        single = isinstance(records, Mapping)
        batch: Records = [records] if isinstance(records, Mapping) else records
        rows = self.predict_proba_frame(self._prepared(batch))
        return rows[0] if single else rows

    def predict_proba_frame(self, frame: pd.DataFrame | Prepared) -> list[list[float]]:
        if not self.has_proba:
            raise UsageError(f"Model {self.name!r} gives no probabilities (it is not a probabilistic classifier).")
        proba = np.asarray(self._guarded(self._predict_proba, frame), dtype=float)
        self._check_output(proba, "probabilities")
        rows: list[list[float]] = proba.tolist()
        return rows

    def predict_and_proba_frame(self, frame: pd.DataFrame | Prepared) -> tuple[list[Any], list[list[float]] | None]:
        """Predictions and, where the model has them, probabilities, for one prepared frame.

        Cheaper than calling both methods: a pipeline's transform runs once.
        """
        if not self.has_proba:
            return self.predict_frame(frame), None
        predictions, proba = self.predict_and_proba_arrays(frame)
        return jsonable(predictions), proba.tolist()

    def predict_and_proba_arrays(self, frame: pd.DataFrame | Prepared) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_and_proba_frame`'s checked answers as the model's arrays, for a model with probabilities.

        For batch scoring: a million rows of probabilities as Python lists cost
        seconds to build, and the writer wants columns.
        """
        predictions, proba = self._guarded(self._predict_both, frame)
        proba = np.asarray(proba, dtype=float)
        self._check_output(predictions, "predictions")
        self._check_output(proba, "probabilities")
        return predictions, proba

    def _guarded(self, call: Callable[[pd.DataFrame | Prepared], _T], frame: pd.DataFrame | Prepared) -> _T:
        """``call(frame)``, with scikit-learn's refusal of a non-finite input raised as a ModelInputError."""
        try:
            with np.errstate(over="ignore"):  # an overflow ends as infinity, which is refused here or by _check_output
                return call(frame)
        except ValueError as exc:
            reason = str(exc)
            if not _REFUSED_INPUT.search(reason):
                raise
        dtype = np.dtype(np.float32 if "float32" in reason else np.float64)
        rows = [0] if len(frame) == 1 else self._refused_rows(as_frame(frame), dtype)
        where = f"record{'s' if len(rows) > 1 else ''} {_rows_text(rows)}" if rows else "a record"
        raise ModelInputError(
            f"Model {self.name!r} {self.version} cannot compute with {where}, although it passed the schema: "
            f"{reason[:200]} A value is too large (or becomes infinite or NaN in the model's transforms); "
            "send values closer to the range seen in training (model.schema has each field's minimum and maximum).",
            rows, reason[:200],
        )

    def _check_output(self, values: Any, output: str) -> None:
        """Raise ModelOutputError naming the rows where the model answered NaN or infinity."""
        array = np.asarray(values)
        if array.dtype.kind in "fc":
            bad = ~np.isfinite(array)
            if not bad.any():
                return
        elif array.dtype == object:
            bad = np.frompyfunc(_not_finite, 1, 1)(array).astype(bool)
        else:
            return
        rows = np.flatnonzero(bad.reshape(len(array), -1).any(axis=1)).tolist() if array.ndim else []
        if rows:
            raise ModelOutputError(
                f"Model {self.name!r} {self.version} returned NaN or infinity as the {output} of "
                f"record{'s' if len(rows) > 1 else ''} {_rows_text(rows)}; its input passed the schema, so the model "
                "is at fault: fix or retrain it (or check the inputs it was not trained for).",
                rows, output,
            )

    @property
    def has_proba(self) -> bool:
        return self.manifest.has_proba

    def self_test(self) -> None:
        """Re-run the golden sample through the estimator (SelfTestError on any difference), then through the fast path.

        A fast path that raises or differs there is dropped (see the module docstring), never the model.
        """
        plan, self.plan = self.plan, None
        try:
            self._self_test("the model")
        finally:
            self.plan = plan
        self.check_plan()

    def check_plan(self) -> None:
        """The golden sample through the fast path alone (no DataFrame: about a millisecond, so every load runs it);
        a plan that raises or differs is dropped (see the module docstring)."""
        if self.plan is None:
            return
        try:
            self._self_test("the fast path")
        except Exception as exc:  # noqa: BLE001  whatever failed is the plan's: the estimator is tested on its own
            self._drop_plan(f"its golden-sample self-test failed ({type(exc).__name__}: {exc})"[:800])

    def _drop_plan(self, why: str) -> None:
        """Predict through the estimator from now on, in every Model built from it (the plan is the estimator's attribute)."""
        log.warning("Model %r %s: its fast path is not used, because %s; it predicts through the estimator instead, "
                    "with the same answers more slowly. Re-save it with this blackbox to build a new fast path.",
                    self.name, self.version, why)
        self.plan = None
        if getattr(self.estimator, _PLAN_ATTRIBUTE, None) is not None:
            setattr(self.estimator, _PLAN_ATTRIBUTE, None)

    def _self_test(self, route: str) -> None:
        golden = self.manifest.golden
        got, proba = self.predict_and_proba_frame(self._prepared(golden.records))
        differences = [
            {"row": i, "expected": e, "got": g} for i, (e, g) in enumerate(zip(golden.predictions, got)) if e != g
        ]
        max_diff = 0.0
        if golden.probabilities is not None:
            expected = np.asarray(golden.probabilities, dtype=float)
            actual = np.asarray(proba, dtype=float)
            if expected.shape != actual.shape:
                max_diff = float("inf")
            else:
                per_row = np.abs(expected - actual).max(axis=1)
                max_diff = float(per_row.max(initial=0.0))
                differences += [
                    {"row": int(i), "expected_proba": expected[i].tolist(), "got_proba": actual[i].tolist()}
                    for i in np.flatnonzero(per_row > PROBA_TOLERANCE)
                ]
        if differences or max_diff > PROBA_TOLERANCE:
            shown = "\n".join(f"- {d}" for d in differences[:5])
            raise SelfTestError(
                f"Model {self.name!r} {self.version}, through {route}, no longer gives its golden-sample predictions: "
                f"{len(differences)} difference(s), largest probability difference {max_diff:.3g} "
                f"(tolerance {PROBA_TOLERANCE}).\n{shown}\n"
                "Load it with the package versions it was saved with (see its requirements), or retrain.",
                differences,
            )

    def serialize(self) -> bytes:
        """The artifact's bytes, exactly as saved (signature included); :func:`blackbox.persist.loads` reads them."""
        if self._artifact is None:
            raise UsageError("This model was not built from an artifact; save it with blackbox.save first.")
        return self._artifact.to_bytes()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.version} sha256={self.sha256[:12]}>"


class SklearnModel(Model):
    """Adapter for scikit-learn estimators and pipelines."""

    adapter = "sklearn"
    expects = "a fitted scikit-learn estimator or pipeline (with predict and get_params)"

    @classmethod
    def accepts(cls, estimator: Any) -> bool:
        return hasattr(estimator, "predict") and hasattr(estimator, "get_params")

    @classmethod
    def describe_output(cls, estimator: Any) -> dict[str, Any]:
        if hasattr(estimator, "classes_"):
            return {
                "kind": "classification",
                "classes": jsonable(estimator.classes_),
                "probabilities": hasattr(estimator, "predict_proba"),
            }
        return {"kind": "regression", "probabilities": False}

    @classmethod
    def numeric_limit(cls, estimator: Any) -> float | None:
        """float32's largest value when the estimator holds decision trees (trees, forests, boosting cast X to float32)."""
        return float(np.finfo(np.float32).max) if _holds_trees(estimator) else None

    @classmethod
    def input_columns(cls, estimator: Any, frame: pd.DataFrame) -> tuple[list[str] | None, str]:
        """What the first step reads: a ColumnTransformer's columns, a DataFrameMapper's features, else ``feature_names_in_``.

        Searches are followed to their best estimator and pipelines to their first
        step. The order is the estimator's ``feature_names_in_`` (a bare estimator
        checks it), then ``frame``'s. None when the first step cannot say: a user
        step without ``feature_names_in_``, a mapper with a ``default`` (it passes on
        every column it does not list), a ColumnTransformer fitted on an array.
        """
        columns, detail = _columns_read(estimator, frame)
        if columns is None:
            return None, detail
        order = [*map(str, getattr(estimator, "feature_names_in_", ())), *frame.columns]
        rank = {name: position for position, name in reversed(list(enumerate(order)))}
        return sorted(dict.fromkeys(columns), key=lambda name: rank.get(name, len(rank))), detail

    def _predict(self, frame: pd.DataFrame | Prepared) -> np.ndarray:
        if self.plan is not None:
            try:
                return self.plan.predict(frame)
            except Defer:
                pass
        predictions: np.ndarray = self.estimator.predict(as_frame(frame))
        return predictions

    def _predict_proba(self, frame: pd.DataFrame | Prepared) -> np.ndarray:
        if self.plan is not None:
            try:
                return self.plan.predict_proba(frame)
            except Defer:
                pass
        proba: np.ndarray = self.estimator.predict_proba(as_frame(frame))
        return proba

    def _refused_rows(self, frame: pd.DataFrame, dtype: np.dtype) -> list[int]:
        # What the final step saw: the pipeline's transform of the frame, or the frame's numbers.
        try:
            steps = getattr(self.estimator, "steps", None)
            features = self.estimator[:-1].transform(frame) if steps and len(steps) > 1 else frame.select_dtypes("number")
            values = np.asarray(features, dtype=np.float64).reshape(len(frame), -1)
        except (TypeError, ValueError):  # sparse or non-numeric features: the rows cannot be told apart
            return []
        with np.errstate(over="ignore", invalid="ignore"):
            return np.flatnonzero(~np.isfinite(values.astype(dtype)).all(axis=1)).tolist()

    def _predict_both(self, frame: pd.DataFrame | Prepared) -> tuple[np.ndarray, np.ndarray]:
        if self.plan is not None:
            try:
                return self.plan.both(frame)
            except Defer:
                pass
        frame = as_frame(frame)
        # What Pipeline.predict and predict_proba each do, with the transform shared.
        if not hasattr(self.estimator, "steps") or len(self.estimator.steps) < 2:
            return super()._predict_both(frame)
        features = self.estimator[:-1].transform(frame)
        final = self.estimator.steps[-1][1]
        proba = final.predict_proba(features)
        if _predicts_by_argmax(final):  # a forest's predict would compute every tree's probabilities again
            return final.classes_.take(np.argmax(proba, axis=1), axis=0), proba
        return final.predict(features), proba


def _columns_read(step: Any, frame: pd.DataFrame) -> tuple[list[str] | None, str]:
    """The columns ``step`` reads (repeats allowed, any order) and from what that is known; None and why if it cannot say."""
    name = type(step).__name__
    if hasattr(step, "best_estimator_"):
        return _columns_read(step.best_estimator_, frame)
    if isinstance(getattr(step, "steps", None), list):  # a Pipeline: its first step that is not 'passthrough'
        first = next((s for _, s in step.steps if not (s is None or isinstance(s, str))), None)
        return _columns_read(first, frame) if first is not None else (None, f"{name} has only passthrough steps")
    if hasattr(step, "transformers_"):  # a fitted ColumnTransformer (the remainder is one of its entries)
        names = getattr(step, "feature_names_in_", None)
        if names is None:
            return None, f"{name} was fitted on an array, without column names"
        read: list[str] = []
        for _, transformer, selection in step.transformers_:
            if isinstance(transformer, str) and transformer == "drop":
                continue
            columns = _selected(selection, pd.Index(names))
            if columns is None:
                return None, f"{name} selects columns with {reprlib.repr(selection)}, which blackbox cannot read"
            read += columns
        return read, f"{name} columns"
    if hasattr(step, "built_features") and hasattr(step, "default"):  # a fitted sklearn-pandas DataFrameMapper
        if step.default is not False:
            return None, f"{name} has default={reprlib.repr(step.default)}, which passes on every column its features do not list"
        read = []
        for feature in step.built_features if isinstance(step.built_features, list) else [step.built_features]:
            columns = feature[0](frame) if callable(feature[0]) else feature[0]
            columns = [columns] if isinstance(columns, str) else columns
            if not (isinstance(columns, (list, tuple)) and all(isinstance(c, str) for c in columns)):
                return None, f"{name} has a feature of columns {reprlib.repr(feature[0])}, which blackbox cannot read"
            read += columns
        return read, f"{name} features"
    names = getattr(step, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names], f"{name}.feature_names_in_"
    return None, f"{name} does not say which columns it reads (no feature_names_in_)"


def _selected(selection: Any, names: pd.Index) -> list[str] | None:
    """A fitted ColumnTransformer's selection (names, positions, a slice or a boolean mask) as column names."""
    if isinstance(selection, str):
        return [selection]
    if isinstance(selection, slice):
        if isinstance(selection.start, str) or isinstance(selection.stop, str):  # labels, both ends included
            selection = names.slice_indexer(selection.start, selection.stop, selection.step)
        return [str(n) for n in names[selection]]
    values = np.asarray(selection)
    if values.ndim == 0 and values.dtype.kind in "iu":
        return [str(names[int(values)])]
    if values.ndim != 1:
        return None
    if values.size == 0:
        return []
    if values.dtype.kind in "UO" and all(isinstance(v, str) for v in values.tolist()):
        return [str(v) for v in values.tolist()]
    if values.dtype.kind in "biu":
        return [str(n) for n in names[values]]
    return None


def _predicts_by_argmax(estimator: Any) -> bool:
    """Whether ``predict`` is exactly ``classes_[argmax(predict_proba)]`` (scikit-learn's single-output forests).

    Looked up in ``sys.modules`` rather than imported: a forest's module is loaded
    by unpickling the forest, and importing it otherwise would slow every load.
    """
    forest = sys.modules.get("sklearn.ensemble._forest")
    return (
        forest is not None
        and type(estimator).predict is forest.ForestClassifier.predict
        and getattr(estimator, "n_outputs_", None) == 1
    )


def _holds_trees(estimator: Any) -> bool:
    """Whether a decision tree is anywhere in the estimator: a step, a parameter, or a fitted member (``estimators_``)."""
    from sklearn.tree import BaseDecisionTree  # save time only: loading never imports trees for this

    pending = [estimator]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseDecisionTree):
            return True
        if hasattr(item, "get_params"):
            pending.extend(value for value in item.get_params(deep=True).values() if hasattr(value, "get_params"))
            members = getattr(item, "estimators_", None)
            if isinstance(members, (list, np.ndarray)):
                pending.extend(np.ravel(np.asarray(members, dtype=object)).tolist())
    return False


def _not_finite(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) and not math.isfinite(value)


def _rows_text(rows: Sequence[int]) -> str:
    shown = ", ".join(map(str, rows[:_SHOWN_ROWS]))
    return shown + (f" and {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else "")
