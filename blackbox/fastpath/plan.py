"""The plan: a fitted pipeline's steps as verified nodes, built at save time and run for every prediction.

Scope: building (:func:`build_plan`), proving and running the whole path.
:func:`build_plan` compiles each step (:mod:`.compiler`) on the verification
rows (every row of ``train_data`` plus generated edge rows, :mod:`.edges`),
then checks the whole plan against the reference, ``estimator.predict`` and
``predict_proba``: labels identical, probabilities within 1e-9, and a row the
reference refuses is refused (deferred) by the plan too. It measures the
speed-up on single rows and returns the plan with its record (compiled steps,
fallbacks and why, the speed-up); a plan that fails the whole check is not
used (``plan`` is None, the record says why).

Rules callers rely on:

* :meth:`Plan.predict`, :meth:`Plan.predict_proba` and :meth:`Plan.both` take
  the frame :meth:`Schema.to_frame` prepared and give what the estimator
  would; they raise :class:`~blackbox.fastpath.base.Defer` when the call must
  run the reference way (the caller does that, whole).
* The plan holds references to the estimator's own fitted objects, so it is
  pickled beside it (as :data:`ATTRIBUTE` on the estimator) and adds only
  small index arrays; derived arrays are rebuilt when it is unpickled.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from . import compiler, estimators
from .base import Defer, Node
from .edges import edge_records
from .table import Table

ATTRIBUTE = "_blackbox_fast_path"
"""Where the plan rides inside the payload: an attribute of the stored estimator."""

PLAN_VERSION = 1
_TIMED_ROWS = 30


class Plan:
    """Transformer nodes then a final estimator node, over one input table."""

    def __init__(self, columns: list[str], steps: list[Node], final: estimators.Estimator) -> None:
        self.version = PLAN_VERSION
        self.columns = list(columns)
        self.steps = steps
        self.final = final

    def _features(self, frame: pd.DataFrame) -> Any:
        X: Any = Table(frame, self.columns)
        for index, node in enumerate(self.steps):
            if index == 0 and node.form != "table":
                X = frame
            X = node.transform(X)
        if not self.steps:
            raise Defer("nothing compiled")
        return X

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.final.predict(self._features(frame))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.final.predict_proba(self._features(frame))

    def both(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return self.final.both(self._features(frame))

    def records(self) -> list[dict[str, Any]]:
        return [r for node in [*self.steps, self.final] for r in node.records()]


def build_plan(estimator: Any, train_data: pd.DataFrame, schema: Any) -> tuple[Plan | None, dict[str, Any]]:
    """Compile and prove a plan for a fitted estimator; return it (or None) and its record for the manifest."""
    from sklearn.pipeline import Pipeline

    columns = schema.columns
    if type(estimator) is not Pipeline or len(estimator.steps) < 2:
        return None, {"enabled": False, "reason": "not a scikit-learn Pipeline of transformers and a final estimator"}
    frame, refused = _verification_frames(estimator, train_data, schema)
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
    problem = prove(plan, estimator, frame, refused)
    if problem:
        return None, {**record, "enabled": False, "reason": problem}
    record["verified_rows"] = {"accepted": len(frame), "refused_by_the_model": len(refused)}
    record["speedup"] = measure(plan, estimator, frame)
    return plan, record


def _verification_frames(estimator: Any, train_data: pd.DataFrame, schema: Any) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Every training row and the edge rows the model accepts, as one frame the schema typed; and the refused rows, one frame each."""
    from ..manifest import jsonable

    records = [r for r in jsonable(train_data[schema.columns].to_dict("records")) if _fits(schema, r)]
    edges = [r for r in edge_records(schema, records) if _fits(schema, r)]
    accepted, refused = list(records), []
    try:
        reference(estimator, schema.to_frame(edges)[0])
        accepted += edges
    except Exception:  # noqa: BLE001 - the model refuses some edge row: find which
        for record in edges:
            row = schema.to_frame([record])[0]
            try:
                reference(estimator, row)
                accepted.append(record)
            except Exception:  # noqa: BLE001
                refused.append(row)
    return schema.to_frame(accepted)[0], refused


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


def prove(plan: Plan, estimator: Any, frame: pd.DataFrame, refused: list[pd.DataFrame]) -> str | None:
    """Why the plan does not give the reference's answers on the verification rows, or None.

    On the rows the model accepts: labels identical, probabilities (and
    regression outputs) within the tolerance. On a row the model refuses: the
    plan defers (so the caller gets the model's own error) or raises the same
    type of error.
    """
    labels, proba = reference(estimator, frame)
    try:
        got_labels, got_proba = plan.both(frame) if proba is not None else (plan.predict(frame), None)
    except Defer as exc:
        return f"the plan deferred on the verification rows: {exc}"
    labels_ok = compiler.close(got_labels, labels) if np.asarray(labels).dtype.kind == "f" else compiler.same(got_labels, labels)
    if not labels_ok:
        return "labels differ from the reference on the verification rows"
    if proba is not None and not compiler.close(got_proba, proba):
        return f"probabilities differ from the reference by more than {compiler.TOLERANCE} on the verification rows"
    for i, row in enumerate(refused):
        try:
            reference(estimator, row)
        except Exception as exc:  # noqa: BLE001
            error = exc
        try:
            plan.both(row) if plan.final.has_proba else plan.predict(row)
        except Defer:
            continue
        except Exception as exc:  # noqa: BLE001
            if type(exc) is type(error):
                continue
            return f"refused edge row {i}: the model raised {error!r}, the plan {exc!r}"
        return f"refused edge row {i}: the model raised {error!r} and the plan answered"
    return None


def measure(plan: Plan, estimator: Any, frame: pd.DataFrame) -> dict[str, Any]:
    """Median single-row time of both paths, paired row by row (a shared machine's load hits both alike)."""
    rows = [frame.iloc[[i]].reset_index(drop=True) for i in range(min(_TIMED_ROWS, len(frame)))]
    has_proba = plan.final.has_proba

    def timed(call: Callable[[pd.DataFrame], Any], row: pd.DataFrame) -> float:
        started = time.perf_counter()
        try:
            call(row)
        except Defer:
            pass
        return time.perf_counter() - started

    fast = plan.both if has_proba else plan.predict
    slow = (lambda f: reference(estimator, f)) if has_proba else estimator.predict
    pairs = [(timed(fast, row), timed(slow, row)) for row in rows for _ in range(2)][2:]
    ours = statistics.median(p[0] for p in pairs)
    theirs = statistics.median(p[1] for p in pairs)
    return {"rows": len(rows), "plan_us": round(ours * 1e6, 1), "reference_us": round(theirs * 1e6, 1),
            "ratio": round(theirs / ours, 1) if ours else None}


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """Counts of compiled, called and reference steps in a plan record (for display)."""
    modes = [s["mode"] for s in record.get("steps", [])]
    return {mode: modes.count(mode) for mode in ("compiled", "called", "reference")}



