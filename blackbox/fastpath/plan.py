"""The plan: a fitted pipeline's steps as verified nodes, built at save time and run for every prediction.

Scope: building (:func:`build_plan`), proving and running the whole path.
:func:`build_plan` compiles each step (:mod:`.compiler`) on the verification
rows (every row of ``train_data`` plus generated edge rows, :mod:`.edges`),
then checks the whole plan against the reference, ``estimator.predict`` and
``predict_proba``, on all of them at once and again in small batches (from
one row up: a step may take another way for a few rows): labels identical,
probabilities within 1e-9, and a row the reference refuses is refused
(deferred) by the plan too. It measures the
speed-up on single rows and returns the plan with its record (compiled steps,
fallbacks and why, the speed-up); a plan that fails the whole check is not
used (``plan`` is None, the record says why).

Rules callers rely on:

* :meth:`Plan.predict`, :meth:`Plan.predict_proba` and :meth:`Plan.both` take
  the frame :meth:`Schema.to_frame` prepared, or the same records as
  :class:`~blackbox.fastpath.table.Prepared` (no DataFrame built), and give
  what the estimator would; they raise :class:`~blackbox.fastpath.base.Defer`
  when the call must run the reference way (the caller does that, whole, on
  :func:`~blackbox.fastpath.table.as_frame` of its input). Both input forms
  are proved at save.
* The plan holds references to the estimator's own fitted objects, so it is
  pickled beside it (as :data:`ATTRIBUTE` on the estimator) and adds only
  small index arrays; derived arrays are rebuilt when it is unpickled.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from . import boosting, compiler, estimators, transformers
from .base import Defer, Node
from .edges import edge_records
from .table import Prepared, Table, as_frame

ATTRIBUTE = "_blackbox_fast_path"
"""Where the plan rides inside the payload: an attribute of the stored estimator."""

PLAN_VERSION = 1
_TIMED_ROWS = 30
_SMALL_BATCHES = tuple(sorted({1, 4, 32, *(size + more for size in (estimators.SMALL_BATCH, estimators.SUMMED_AT_ONCE,
                                                                   boosting.WALKED_AT_ONCE, transformers.COLUMNWISE_ROWS)
                                           for more in (0, 1))}))
"""Batch sizes the verification rows are also run in, in turn: what a server sends, and both sides of each
size a step changes method at."""


class Plan:
    """Transformer nodes then a final estimator node, over one input table."""

    def __init__(self, columns: list[str], steps: list[Node], final: estimators.Estimator) -> None:
        self.version = PLAN_VERSION
        self.columns = list(columns)
        self.steps = steps
        self.final = final

    def _features(self, source: pd.DataFrame | Prepared) -> Any:
        if not self.steps:
            raise Defer("nothing compiled")
        X: Any = Table(source, self.columns)
        for index, node in enumerate(self.steps):
            if index == 0 and node.form != "table":
                X = as_frame(source)
            X = node.transform(X)
        return X

    def predict(self, source: pd.DataFrame | Prepared) -> np.ndarray:
        return self.final.predict(self._features(source))

    def predict_proba(self, source: pd.DataFrame | Prepared) -> np.ndarray:
        return self.final.predict_proba(self._features(source))

    def both(self, source: pd.DataFrame | Prepared) -> tuple[np.ndarray, np.ndarray]:
        return self.final.both(self._features(source))

    def records(self) -> list[dict[str, Any]]:
        return [r for node in [*self.steps, self.final] for r in node.records()]


def build_plan(estimator: Any, train_data: pd.DataFrame, schema: Any) -> tuple[Plan | None, dict[str, Any]]:
    """Compile and prove a plan for a fitted estimator; return it (or None) and its record for the manifest."""
    from sklearn.pipeline import Pipeline

    columns = schema.columns
    if type(estimator) is not Pipeline or len(estimator.steps) < 2:
        return None, {"enabled": False, "reason": "not a scikit-learn Pipeline of transformers and a final estimator"}
    accepted, refused = _verification_records(estimator, train_data, schema)
    frame = schema.to_frame(accepted)[0]
    table = Table(frame, columns)
    steps: list[Node] = []
    X: Any = frame
    transformers = [(n, s) for n, s in estimator.steps[:-1] if s is not None and s != "passthrough"]
    for index, (name, step) in enumerate(transformers):
        if index == 0:
            steps.append(compiler.first_step(step, f"steps[{name}]", frame, table))
        else:
            steps.append(compiler.transformer(step, f"steps[{name}]", X, X))
        X = step.transform(X)
    name, last = estimator.steps[-1]
    proba = last.predict_proba(X) if hasattr(last, "predict_proba") else None
    final = compiler.final_step(last, f"steps[{name}]", X, (last.predict(X), proba))
    plan = Plan(columns, steps, final)
    record: dict[str, Any] = {"enabled": True, "version": PLAN_VERSION, "steps": plan.records()}
    problem = prove(plan, estimator, schema, accepted, refused)
    if problem:
        return None, {**record, "enabled": False, "reason": problem}
    record["verified_rows"] = {"accepted": len(frame), "refused_by_the_model": len(refused)}
    record["speedup"] = measure(plan, estimator, schema, accepted)
    return plan, record


def _verification_records(estimator: Any, train_data: pd.DataFrame, schema: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every training row and the edge rows the model accepts (as records the schema takes); and the edge rows it refuses."""
    from ..manifest import jsonable

    records = [r for r in jsonable(train_data[schema.columns].to_dict("records")) if _fits(schema, r)]
    edges = [r for r in edge_records(schema, records) if _fits(schema, r)]
    accepted, refused = list(records), []
    try:
        reference(estimator, schema.to_frame(edges)[0])
        accepted += edges
    except Exception:  # noqa: BLE001 - the model refuses some edge row: find which
        for record in edges:
            try:
                reference(estimator, schema.to_frame([record])[0])
                accepted.append(record)
            except Exception:  # noqa: BLE001
                refused.append(record)
    return accepted, refused


def _fits(schema: Any, record: dict[str, Any]) -> bool:
    try:
        schema.validate([record])
    except Exception:  # noqa: BLE001 - SchemaError: not a row a server would predict
        return False
    return True


def reference(estimator: Any, frame: pd.DataFrame) -> tuple[Any, Any]:
    """What the estimator itself answers: (labels, probabilities or None)."""
    proba = estimator.predict_proba(frame) if hasattr(estimator, "predict_proba") else None
    return estimator.predict(frame), proba


def prove(plan: Plan, estimator: Any, schema: Any, accepted: list[dict[str, Any]], refused: list[dict[str, Any]]) -> str | None:
    """Why the plan does not give the reference's answers on the verification records, or None.

    Both input forms (the prepared frame, and :class:`Prepared` records), all
    records at once and again in small batches (:data:`_SMALL_BATCHES`), since
    a step may take another way for a few rows than for many. On the
    records the model accepts: labels identical, probabilities (and regression
    outputs) within the tolerance. On a record the model refuses: the plan
    defers (so the caller gets the model's own error) or raises the same type
    of error.
    """
    frame = schema.to_frame(accepted)[0]
    labels, proba = reference(estimator, frame)
    sources = [("frame", frame, slice(None)), ("records", Prepared(schema, accepted), slice(None))]
    start = 0
    for size in itertools.cycle(_SMALL_BATCHES):
        if start >= len(accepted):
            break
        rows = slice(start, start + size)
        sources += [(f"batches of {size} records", Prepared(schema, accepted[rows]), rows),
                    (f"batches of {size} rows", schema.to_frame(accepted[rows])[0], rows)]
        start += size
    for form, source, rows in sources:
        try:
            got_labels, got_proba = plan.both(source) if proba is not None else (plan.predict(source), None)
        except Defer as exc:
            return f"the plan deferred on the verification rows ({form}): {exc}"
        expected = labels[rows]
        labels_ok = compiler.close(got_labels, expected) if np.asarray(labels).dtype.kind == "f" else compiler.same(got_labels, expected)
        if not labels_ok:
            return f"labels differ from the reference on the verification rows ({form})"
        if proba is not None and not compiler.close(got_proba, proba[rows]):
            return f"probabilities differ from the reference by more than {compiler.TOLERANCE} on the verification rows ({form})"
    for i, record in enumerate(refused):
        row = schema.to_frame([record])[0]
        try:
            reference(estimator, row)
        except Exception as exc:  # noqa: BLE001
            error = exc
        for source in (row, Prepared(schema, [record])):
            try:
                plan.both(source) if plan.final.has_proba else plan.predict(source)
            except Defer:
                continue
            except Exception as exc:  # noqa: BLE001
                if type(exc) is type(error):
                    continue
                return f"refused edge row {i}: the model raised {error!r}, the plan {exc!r}"
            return f"refused edge row {i}: the model raised {error!r} and the plan answered"
    return None


def measure(plan: Plan, estimator: Any, schema: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median time from one record to its answer on both paths, paired record by record (a shared machine's load hits both alike).

    The plan's side checks the record and runs on it (:class:`Prepared`); the
    reference's builds the DataFrame (``to_frame``) and calls the estimator.
    """
    rows = records[:_TIMED_ROWS]
    has_proba = plan.final.has_proba

    def fast(record: dict[str, Any]) -> Any:
        source = Prepared(schema, [record])
        try:
            return plan.both(source) if has_proba else plan.predict(source)
        except Defer:
            return reference(estimator, source.frame())

    def slow(record: dict[str, Any]) -> Any:
        frame = schema.to_frame([record])[0]
        return reference(estimator, frame) if has_proba else estimator.predict(frame)

    def timed(call: Callable[[dict[str, Any]], Any], record: dict[str, Any]) -> float:
        started = time.perf_counter()
        call(record)
        return time.perf_counter() - started

    pairs = [(timed(fast, r), timed(slow, r)) for r in rows for _ in range(2)][2:]
    ours = statistics.median(p[0] for p in pairs)
    theirs = statistics.median(p[1] for p in pairs)
    return {"rows": len(rows), "from": "one record", "plan_us": round(ours * 1e6, 1), "reference_us": round(theirs * 1e6, 1),
            "ratio": round(theirs / ours, 1) if ours else None}


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """Counts of compiled, called and reference steps in a plan record (for display)."""
    modes = [s["mode"] for s in record.get("steps", [])]
    return {mode: modes.count(mode) for mode in ("compiled", "called", "reference")}



