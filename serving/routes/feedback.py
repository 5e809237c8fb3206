"""``POST /feedback``: labels observed after the fact, for logged predictions.

Scope: the route and its body (HTTP side): reading the entries
(:mod:`serving.payloads`), checking each one and its label, and storing the
labels in the prediction log the server writes
(:attr:`serving.recorder.Recorder.log`). ``/models/{name}/feedback``
addresses the model whose classes a label not logged yet must match.

The body is ``{"request_id": ..., "row": 0, "label": ...}`` or a list of them
(``row`` defaults to 0, the only record of a single-record request). A label
for a prediction not logged yet (the log is written asynchronously) is kept all
the same (``known: false``); a later label for the same record replaces it.

Each label must be an outcome of the model it is about (:func:`as_label`):
the model of that name among the served ones when the log names the
prediction's model, else the addressed one (the route's model, or the only one
served); with neither, the entry is refused (``unknown_model``). Labels are
stored as the class itself (``1.0`` and ``"1"`` for the class ``1`` store
``1``), so a label column keeps the classes' type. Nothing is stored unless
every entry passes (422 ``invalid_feedback`` naming each entry and field).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, request

from blackbox import Model
from blackbox.errors import problem as _problem
from blackbox.monitoring.predlog import TRANSIENT, PredictionLog
from blackbox.schema import NUMERIC_PATTERN

from .. import jsonio, payloads
from ..http_errors import InvalidFeedback, PredictionLogOff, PredictionLogUnavailable
from ..lifecycle import request_id
from . import current
from .api import held

bp = Blueprint("feedback", __name__)

MAX_LABEL_CHARS = 1_000


@bp.post("/feedback")
@bp.post("/models/<name>/feedback")
def feedback(name: str | None = None) -> Response:
    """Labels observed after the fact, for logged predictions (see :func:`store_labels`).

    Each label is checked against the model that made its logged prediction; one
    not logged yet, against the addressed model (the only one, or ``NAME``'s).
    """
    state = current()
    if state.predlog is None:
        raise PredictionLogOff()
    addressed = held(state.served(name)) if name is not None or len(state.models) == 1 else None
    models = {served.name: served.holder.model for served in state.models.values()}
    entries = payloads.read_records(request, _entries, max_records=state.settings.max_records)
    answer = store_labels(state.predlog.log, entries, models=models, addressed=addressed)
    return jsonio.response({**answer, "request_id": request_id()})


def store_labels(
    log: PredictionLog, entries: list[Any], *, models: Mapping[str, Model | None], addressed: Model | None,
) -> dict[str, Any]:
    """Store the labels of a body's entries; the answer says, per entry, whether its prediction is logged yet.

    ``models``: the served ones by name; ``addressed``: the model a label whose
    prediction is not logged (yet) must fit (None: such a label is refused).
    """
    labels = [_label(index, entry) for index, entry in enumerate(entries)]
    problems = [problem for item in labels if isinstance(item, list) for problem in item]
    if problems:
        raise InvalidFeedback(problems)
    entries_ok: list[tuple[str, int, Any]] = labels  # type: ignore[assignment]  # no problems: every item is a tuple
    try:
        logged = log.predicted_by((rid, row) for rid, row, _ in entries_ok)
        stored = []
        for index, (rid, row, label) in enumerate(entries_ok):
            name = logged.get((rid, row), (None, None))[0]
            model = models.get(name) if name is not None else None
            checked = _checked(index, label, model or addressed)
            if isinstance(checked, dict):
                problems.append(checked)
            else:
                stored.append((rid, row, checked[0]))
        if problems:
            raise InvalidFeedback(problems)
        known = log.add_labels(stored)
    except TRANSIENT:
        raise PredictionLogUnavailable() from None
    return {
        "stored": len(stored),
        "feedback": [{"request_id": rid, "row": row, "known": seen} for (rid, row, _), seen in zip(stored, known, strict=True)],
    }


def _entries(body: Any) -> list[Any]:
    """The body's entries: a list of them (at least one), or one."""
    if body == []:
        raise InvalidFeedback([_problem(None, None, "no_entries", 'at least one entry {"request_id", "row", "label"}', "an empty list")])
    return body if isinstance(body, list) else [body]


def _checked(index: int, label: Any, model: Model | None) -> tuple[Any] | dict[str, Any]:
    """``(label as stored,)``, or the entry's problem with ``label`` for ``model``."""
    if model is None:
        return _problem(index, "label", "unknown_model",
                        "a label for a prediction this server made: this one is not in the log (yet), so which "
                        "model's classes it must match is unknown; send it to /models/NAME/feedback", _shown(label))
    value = as_label(model, label)
    if value is not _REFUSED:
        return (value,)
    classes = model.classes
    if classes is None:
        return _problem(index, "label", "invalid",
                        f"a finite number (model {model.name!r} is a regressor), as a JSON number or numeric text", _shown(label))
    shown = json.dumps(classes[:20]) + (f" and {len(classes) - 20} more" if len(classes) > 20 else "")
    return _problem(index, "label", "unknown_class", f"one of model {model.name!r}'s classes: {shown}", _shown(label))


_REFUSED = object()
_NUMERIC = re.compile(NUMERIC_PATTERN)


def as_label(model: Model, label: Any) -> Any:
    """``label`` as the outcome of ``model`` it names (the class itself), or :data:`_REFUSED`.

    The JSON value must equal a class once read as the classes' own type:
    a number class (integer or float) takes a number or numeric text of the same
    value (``1``, ``1.0``, ``"1"``, ``" 1 "`` for the class ``1``); a string class that
    string exactly, or a number whose text it is; a boolean class a boolean or
    ``"true"``/``"false"``. A boolean is never a number (``true`` is not the class
    ``1``). A regressor takes a finite number or numeric text, stored as a float.
    """
    classes = model.classes
    if classes is None:
        if not model.manifest.is_regressor:
            return label  # an adapter that names no classes: nothing to check against
        number = _number(label)
        return _REFUSED if number is None else number
    for value in classes:
        if _names(value, label):
            return value
    return _REFUSED


def _names(value: Any, label: Any) -> bool:
    """Whether the JSON ``label`` names the class ``value``."""
    if isinstance(value, bool):
        if isinstance(label, str):
            return label.strip().lower() == ("true" if value else "false")
        return isinstance(label, bool) and label is value
    if isinstance(value, str):
        if isinstance(label, str):
            return label == value
        number = _number(label)
        return number is not None and (str(int(number)) if number.is_integer() else repr(number)) == value
    if isinstance(value, (int, float)):
        if isinstance(label, int) and not isinstance(label, bool):
            return label == value  # exactly, however large
        number = _number(label)
        return number is not None and number == value
    return bool(label == value)


def _number(label: Any) -> float | None:
    """A JSON number or numeric text as a finite float; None for anything else (booleans included)."""
    if isinstance(label, bool):
        return None
    if isinstance(label, str):
        if len(label) > 100 or not _NUMERIC.match(label):
            return None
        label = float(label)
    if isinstance(label, (int, float)):
        try:
            number = float(label)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _shown(label: Any) -> str:
    """The label as the client sent it, in JSON, cut for the answer."""
    try:
        text = json.dumps(label, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(label)
    return text if len(text) <= 100 else text[:99] + "…"


def _label(index: int, entry: Any) -> tuple[str, int, Any] | list[dict[str, Any]]:
    """One entry as (request_id, row, label), or the problems that keep it out."""

    def problem(field: str | None, issue: str, expected: str) -> dict[str, Any]:
        if field and isinstance(entry, dict):
            received = type(entry[field]).__name__ if field in entry else "nothing"
        else:
            received = type(entry).__name__
        return _problem(index, field, issue, expected, received)

    if not isinstance(entry, dict):
        return [problem(None, "not_an_object", 'an object {"request_id", "row", "label"}')]
    found = []
    rid, row, label = entry.get("request_id"), entry.get("row", 0), entry.get("label")
    if not isinstance(rid, str) or not 1 <= len(rid) <= 128 or jsonio.text(rid) != rid:
        found.append(problem("request_id", "invalid", "the request_id a prediction answered with (1-128 characters, valid Unicode)"))
    if type(row) is not int or row < 0:
        found.append(problem("row", "invalid", "the record's 0-based index in its request (default 0)"))
    if isinstance(label, (dict, list)) or label is None or (
        isinstance(label, str) and (len(label) > MAX_LABEL_CHARS or jsonio.text(label) != label)
    ):
        found.append(problem("label", "invalid", f"the observed outcome: a number, boolean or string (at most {MAX_LABEL_CHARS} characters, valid Unicode)"))
    found += [problem(jsonio.text(str(key))[:40], "unknown_field", "only request_id, row and label") for key in entry
              if key not in ("request_id", "row", "label")]
    if found:
        return found
    assert isinstance(rid, str)  # checked above
    return rid, row, label
