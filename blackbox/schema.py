"""Input schema: inferred from the training frame, enforced on raw JSON records.

Scope: inference and validation only; no HTTP, no pickle. :func:`infer_schema`
captures at save time what each column the pipeline consumes looked like in
training (the caller chooses the columns: :func:`blackbox.save` takes those the
fitted pipeline reads, recorded in ``inputs``), and :meth:`Schema.probe_missing`
decides each field's nullability from what a predict callable tolerates; the schema travels as plain JSON (:meth:`Schema.to_dict`) and
:meth:`Schema.to_frame` checks a batch of raw records against it and rebuilds
the DataFrame with exactly the training dtypes, so a served record is
predicted bit for bit like the same row in training. Nothing is per model.

Kinds: ``integer``, ``number``, ``string``, ``boolean`` and ``category`` (an
unordered pandas ``category`` column of strings: ``categories`` keeps all of the
dtype's categories in dtype order, uncapped, and a value outside them cannot be
represented, so it is a ``type`` error, not a warning). Training dtypes that a
JSON record cannot carry faithfully (datetimes, mixed objects, ...) are refused
at :func:`infer_schema` with a :class:`UsageError`.

Rules callers rely on:

* Names match exactly: ``"Age"`` is an unknown field and ``"age"`` is missing.
* An absent key or ``null`` is a missing value when the field is ``nullable``;
  otherwise it is a ``missing`` / ``null`` problem. A missing value of a nullable
  field is predicted (the model fills it in) with a warning: ``missing_imputed``
  for an absent key, ``null_imputed`` for a ``null`` (and, in a DataFrame or CSV,
  for NaN/None/NA or an empty cell: a frame cannot leave a field out). In JSON
  NaN is never a missing value (send null).
* ``nullable`` is decided at save time by probing the fitted model with the field
  missing (``missing_probe``: ``tolerated``, ``refused``, or ``untestable`` for a
  numpy integer or boolean dtype, which holds no missing value). A schema without
  ``missing_probe`` (older artifacts) keeps the nullability training's rows showed.
* Numbers may be JSON numbers or numeric strings (``"22"``, ``"7.25"``), the
  same for JSON records and CSV/DataFrame input (a CSV column with one bad value
  is text, and its good rows must still score); :func:`serving.openapi.record_schema` documents
  both (``anyOf`` a number and a string matching :data:`NUMERIC_PATTERN`).
  Booleans are not numbers; an integer field takes ``3`` and ``3.0``, not ``3.5``.
* Strings are normalised to NFC; numbers are not strings; a lone surrogate
  (not encodable as UTF-8) is a ``type`` error.
* ``row`` is the 0-based position in the batch (also for DataFrame input).
  Problems and warnings are sorted by row, then schema order (unknown last).
* The frame's index is a RangeIndex for records, the caller's for a DataFrame.
* A ``number`` field may carry a ``limit``: the largest magnitude the model
  computes with (float32's for models of decision trees, which cast their input
  to float32, so 1e300 would become infinity). A value beyond it is
  ``non_finite``, like one beyond float64. Integer fields need none: the
  integer dtypes fit in float32's range.
* :meth:`Schema.to_dict` carries ``"version": 1``; :meth:`Schema.from_dict`
  refuses any other version and any unknown or missing key (``UsageError``);
  ``limit``, ``missing_probe`` (per field) and ``inputs`` (``{"from": "pipeline" |
  "train_data", "detail"}``: how the columns were chosen) are optional, and
  written only when set, so schemas without them (older artifacts, models
  without limits) read in every version; a ``missing_probe`` that contradicts
  ``nullable`` is refused.
* DataFrame input: a missing column is an error even for a nullable field,
  and object columns are checked value by value.
* One cap for records and DataFrames, so an answer stays small whatever the
  batch: row-level entries are capped at 100 per (field, issue), followed by
  one ``row: None`` "N more rows" entry; and the problems, like the warnings,
  at 1000 entries in all, followed by one ``{"row": None, "field": None,
  "issue": "truncated", "received": "N more entries"}`` (an unknown field name
  per record could otherwise make thousands of groups).

Every problem and warning is ``{"row", "field", "issue", "expected", "received"}`` (:func:`blackbox.errors.problem`).
Problems (one :class:`SchemaError` lists them all; nothing is predicted):
``not_a_list`` (the batch is not a list), ``empty`` (no records),
``not_an_object``, ``missing``, ``null``, ``type``, ``non_finite``, ``too_long``
(longer than ``max(4 * max_length, 1024)``) and, with ``strict=True``,
``unknown_field``; a field name that is not valid Unicode (a lone surrogate) is
a ``type`` problem whatever ``strict`` says, its name shown with the surrogate
escaped (``\\ud800``), so every problem and warning encodes as UTF-8.
Warnings (returned; the record is still predicted):
``unknown_field``, ``unseen_category``, ``out_of_range``, ``missing_imputed``,
``null_imputed``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from blackbox.errors import SchemaError, UsageError, problem

__all__ = ["Field", "Schema", "infer_schema"]

_VERSION = 1
EXPECTED = {  # each kind's values in words: error messages and the OpenAPI record (serving.openapi)
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "category": "a string",
    "boolean": "a boolean (true or false)",
}
_FAMILIES = ({"integer", "number"}, {"string", "category"}, {"boolean"})
_WARNINGS = frozenset({"out_of_range", "unseen_category"})
_PROBES = frozenset({"tolerated", "refused", "untestable"})
_ABSENT = object()  # the record has no such key
_SKIP = object()  # the record is not an object (already reported)
_INT = re.compile(r"\s*[+-]?\d+\s*", re.ASCII)
_FLOAT = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*", re.ASCII)
NUMERIC_PATTERN = r"^[ \t\n\r\f\v]*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[ \t\n\r\f\v]*$"
"""The numeric strings a number field takes (:data:`_FLOAT`, anchored, ECMA-262 syntax for OpenAPI)."""
_NON_FINITE_WORDS = frozenset({"nan", "inf", "infinity"})
_SHOWN = 5  # bullet lines in a SchemaError message
_ROW_CAP = 100  # row-level entries per (field, issue)
_TOTAL_CAP = 1000  # problems (and warnings) in one report, before the one "truncated" entry
_FLOAT32_MAX = float(np.finfo(np.float32).max)

_Check = Callable[[Any], "tuple[Any, str | None, str | None]"]
Flagged = dict[tuple[str, str], list[int]]
"""Every row (0-based, ascending per key) of each warning, keyed by ``(field, issue)``: uncapped, unlike the warnings."""


@dataclass(frozen=True)
class Field:
    """One input column as training saw it, which bounds what a record may hold.

    ``dtype`` is ``str(series.dtype)`` in training and is what :meth:`Schema.to_frame`
    rebuilds; ``categories`` (sorted, for strings with few distinct values),
    ``minimum``/``maximum`` (finite values) and ``max_length`` only feed warnings
    and the ``too_long`` limit; ``limit`` (numbers) is the model's, a hard bound
    on the magnitude of a value. ``missing_probe`` says how ``nullable`` was
    decided (see :meth:`Schema.probe_missing`); None: from training's rows.
    """

    name: str
    kind: str
    dtype: str
    nullable: bool
    categories: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    limit: float | None = None
    missing_probe: str | None = None


@dataclass(frozen=True)
class Schema:
    """The columns a pipeline consumes, in order; validates and rebuilds its input.

    ``inputs`` is ``(how, detail)``: how the columns were chosen (``pipeline`` or
    ``train_data``) and from what, or None when nobody said (older artifacts).
    """

    fields: tuple[Field, ...]
    inputs: tuple[str, str] | None = None

    @property
    def columns(self) -> list[str]:
        return [field.name for field in self.fields]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the artifact manifest (no NaN, no tuples)."""
        fields = []
        for field in self.fields:
            item = asdict(field)
            item["categories"] = None if field.categories is None else list(field.categories)
            for key in _OPTIONAL:
                if item[key] is None:
                    del item[key]  # optional: absent, the schema reads in blackboxes that predate it
            fields.append(item)
        data: dict[str, Any] = {"version": _VERSION, "fields": fields}
        if self.inputs is not None:
            data["inputs"] = {"from": self.inputs[0], "detail": self.inputs[1]}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        """Read a manifest's schema strictly: it is a trust boundary, so refuse anything odd."""
        if not isinstance(data, Mapping) or not {"version", "fields"} <= set(data) <= {"version", "fields", "inputs"}:
            raise UsageError("A schema must be a mapping with exactly the keys 'version' and 'fields' (and optionally 'inputs').")
        if data["version"] != _VERSION:
            raise UsageError(f"Unsupported schema version {data['version']!r}; this blackbox reads version {_VERSION}.")
        items = data["fields"]
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence) or not items:
            raise UsageError("A schema's 'fields' must be a non-empty list of field mappings.")
        fields = tuple(_field_from_dict(position, item) for position, item in enumerate(items))
        duplicates = sorted(name for name, count in Counter(f.name for f in fields).items() if count > 1)
        if duplicates:
            raise UsageError(f"Schema fields must have unique names; repeated: {duplicates}.")
        return cls(fields, _inputs_from_dict(data.get("inputs")))

    def to_frame(self, records: Any, *, strict: bool = False) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
        """Check a whole batch, then build the frame the pipeline gets, one column at a time.

        Returns ``(frame, warnings)``; raises one :class:`SchemaError` listing every problem.
        """
        columns, index, report = self._check(records, strict)
        frame = pd.DataFrame({name: _build(values, dtype, index) for (name, values), dtype in zip(columns.items(), self._dtypes)}, index=index)
        return frame, report.warnings

    def probe_missing(self, records: Sequence[Mapping[str, Any]], predict: Callable[[pd.DataFrame], Any]) -> Schema:
        """This schema with each field's nullability decided by what ``predict`` tolerates.

        ``records`` are a few rows the schema accepts; for each field whose dtype can
        hold a missing value they are rebuilt by :meth:`to_frame` with that field
        null in every row (as one request without it would be) and passed to
        ``predict``, which raises when the model cannot do without the field. Any
        exception means ``refused``; the records as given must predict (their
        failure propagates: it is no answer about a missing value).
        """
        holds = [_holds_missing(dtype) for dtype in self._dtypes]
        relaxed = replace(self, fields=tuple(replace(f, nullable=h) for f, h in zip(self.fields, holds)))
        predict(relaxed.to_frame(records)[0])
        fields = []
        for field, holds_missing in zip(self.fields, holds):
            if not holds_missing:
                fields.append(replace(field, nullable=False, missing_probe="untestable"))
                continue
            frame, _ = relaxed.to_frame([{**record, field.name: None} for record in records])
            try:
                predict(frame)
            except Exception:  # noqa: BLE001  the model's own code may raise anything: it cannot do without the field
                tolerated = False
            else:
                tolerated = True
            fields.append(replace(field, nullable=tolerated, missing_probe="tolerated" if tolerated else "refused"))
        return replace(self, fields=tuple(fields))

    def validate(self, records: Any, *, strict: bool = False) -> list[dict[str, Any]]:
        """:meth:`to_frame`'s checks without building the frame: the warnings, or one :class:`SchemaError`.

        For a server that validates each request on its own and builds one frame per batch of them.
        """
        return self._check(records, strict)[2].warnings

    def checked(self, records: Any, *, strict: bool = False) -> tuple[list[Any], pd.Index, list[dict[str, Any]], Flagged]:
        """:meth:`to_frame`'s checks and its columns before any is built: the values of each field in schema
        order (missing values as the dtype's marker), the frame's index, the warnings, and every row
        each warning concerns (:data:`Flagged`: the warnings are capped, this is not).

        For the fast path (:mod:`blackbox.fastpath.table`), which builds only the columns it reads,
        each with :meth:`column`, and for batch scoring's per-row warnings.
        """
        columns, index, report = self._check(records, strict)
        return list(columns.values()), index, report.warnings, report.flagged

    def column(self, position: int, values: Any, index: pd.Index) -> Any:
        """The column :meth:`to_frame` builds for field ``position`` from its :meth:`checked` values."""
        return _build(values, self._dtypes[position], index)

    def _check(self, records: Any, strict: bool) -> tuple[dict[str, Any], pd.Index, _Report]:
        report = _Report({name: position for position, name in enumerate(self.columns)})
        index = None
        if isinstance(records, pd.DataFrame):
            index, total = records.index, len(records)
            columns = self._from_frame(records, strict, report) if total else {}
        elif isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
            report.add(None, None, "not_a_list", "a list of records", _describe(records))
            report.check(0)  # raises
        else:
            records = records if isinstance(records, Sequence) else list(records)
            total = len(records)
            columns = self._from_records(records, strict, report) if total else {}
        if not total:
            report.add(None, None, "empty", "at least one record", "0 records")
        report.check(total)
        return columns, pd.RangeIndex(total) if index is None else index, report

    @cached_property
    def _dtypes(self) -> list[Any]:
        return [_dtype_of(field) for field in self.fields]

    @cached_property
    def _folded(self) -> dict[str, str]:
        return {name.casefold(): name for name in self.columns}

    @cached_property
    def _checks(self) -> list[_Check]:
        return [_CHECKERS[field.kind](field, dtype) for field, dtype in zip(self.fields, self._dtypes)]

    def _from_records(self, records: Sequence[Any], strict: bool, report: _Report) -> dict[str, list[Any]]:
        names = set(self.columns)
        skip = dict.fromkeys(names, _SKIP)
        safe = []
        for row, record in enumerate(records):
            if not isinstance(record, Mapping):
                report.add(row, None, "not_an_object", "a JSON object", _describe(record))
                record = skip
            elif not names.issuperset(record):
                for key in record:
                    if key not in names:
                        self._unknown(report, row, key, _describe(record[key]), strict)
            safe.append(record)
        return {
            field.name: _convert(field, dtype, check, [record.get(field.name, _ABSENT) for record in safe], report)
            for field, dtype, check in zip(self.fields, self._dtypes, self._checks)
        }

    def _from_frame(self, frame: pd.DataFrame, strict: bool, report: _Report) -> dict[str, Any]:
        names = set(self.columns)
        for name in frame.columns:
            if name not in names:
                self._unknown(report, None, name, "a column", strict)
        columns: dict[str, Any] = {}
        for field, dtype, check in zip(self.fields, self._dtypes, self._checks):
            if field.name not in frame.columns:
                report.add(None, field.name, "missing", f"a column of {EXPECTED[field.kind]}s", "no such column")
                continue
            column = frame[field.name]
            if isinstance(column, pd.DataFrame):
                report.add(None, field.name, "type", "one column", f"{column.shape[1]} columns with this name")
            elif not _compatible(field.kind, column.dtype):
                report.add(None, field.name, "type", f"a column of {EXPECTED[field.kind]}s", f"column of dtype {column.dtype}")
            elif isinstance(dtype, np.dtype) and dtype.kind in "biuf" and column.dtype == dtype:
                columns[field.name] = _check_array(field, column.to_numpy(), report)
            elif field.kind in ("string", "category") and pd.api.types.infer_dtype(column, skipna=True) == "string":
                columns[field.name] = _check_strings(field, dtype, check, column, report)
            else:
                missing = column.isna().to_numpy()
                values = [None if gap else value for value, gap in zip(column.tolist(), missing)]
                columns[field.name] = _convert(field, dtype, check, values, report)
        return columns

    def _unknown(self, report: _Report, row: int | None, key: Any, received: str, strict: bool) -> None:
        name = _clip(key if isinstance(key, str) else repr(key), 40)
        if isinstance(key, str) and not _encodable(key):
            shown = _clip(key.encode("utf-8", "backslashreplace").decode("utf-8"), 40)
            report.add(row, shown, "type", "a field name of valid Unicode text (no lone surrogates)", received)
            return
        match = self._folded.get(name.casefold())
        expected = "only the schema's fields" + (f" (did you mean {match!r}?)" if match else "")
        report.add(row, name, "unknown_field", expected, received, warning=not strict)


def infer_schema(frame: pd.DataFrame, *, max_categories: int = 50, limit: float | None = None) -> Schema:
    """Capture the columns a pipeline is fitted on, so serving can check and rebuild them.

    :param limit: the largest magnitude the model computes a number with (see
        :meth:`blackbox.Model.numeric_limit`), set on every ``number`` field.
    """
    if not isinstance(frame, pd.DataFrame):
        raise UsageError(f"infer_schema needs a pandas DataFrame, got {type(frame).__name__}.")
    if frame.shape[1] == 0:
        raise UsageError("The training frame has no columns; a schema needs at least one.")
    bad = [name for name in frame.columns if not isinstance(name, str)]
    if bad:
        raise UsageError(f"Column names must be strings, got {bad[:5]!r}; rename them (frame.columns = frame.columns.map(str)) before fitting.")
    if not frame.columns.is_unique:
        raise UsageError(f"Column names must be unique; repeated: {sorted(set(frame.columns[frame.columns.duplicated()]))}.")
    fields = (_infer_field(name, frame[name], max_categories) for name in frame.columns)
    return Schema(tuple(replace(field, limit=limit) if field.kind == "number" else field for field in fields))


def _infer_field(name: str, column: pd.Series, max_categories: int) -> Field:
    missing = column.isna().to_numpy()
    present = column[~missing].tolist()
    dtype = column.dtype
    kinds = _kinds_for(dtype)
    if dtype == object:  # decided by the values
        if all(isinstance(value, str) for value in present):
            kinds = {"string"}
        elif all(isinstance(value, (bool, np.bool_)) for value in present):
            kinds = {"boolean"}
        else:
            kinds = set()
    elif isinstance(dtype, pd.CategoricalDtype) and (dtype.ordered or not all(isinstance(c, str) for c in dtype.categories)):
        kinds = set()
    if len(kinds) != 1:
        example = _describe(present[0]) if present else "no values"
        raise UsageError(
            f"Column {name!r} has dtype {dtype} (e.g. {example}), which JSON records cannot carry faithfully; "
            "convert it to numbers, strings, booleans or an unordered category of strings before fitting and saving."
        )
    (kind,) = kinds
    extra: dict[str, Any] = {}
    if kind in ("integer", "number"):
        values = np.asarray(present, dtype="float64")
        finite = values[np.isfinite(values)]
        if finite.size:
            extra.update(minimum=float(finite.min()), maximum=float(finite.max()))
    elif kind == "category":
        assert isinstance(dtype, pd.CategoricalDtype)  # the only dtype whose kinds are {"category"}
        extra.update(categories=tuple(dtype.categories), max_length=max(map(len, dtype.categories), default=None))
    elif kind == "string":
        distinct = set(present)
        extra["max_length"] = max(map(len, distinct), default=None)
        extra["categories"] = tuple(sorted(distinct)) if len(distinct) <= max_categories else None
    return Field(name=name, kind=kind, dtype=str(dtype), nullable=bool(missing.any()), **extra)


def _kinds_for(dtype: Any) -> set[str]:
    """The kinds a training dtype can serve (object: decided by the values)."""
    if isinstance(dtype, pd.CategoricalDtype):
        return {"category"}
    if dtype == object:
        return {"string", "boolean"}
    if pd.api.types.is_bool_dtype(dtype):
        return {"boolean"}
    if pd.api.types.is_integer_dtype(dtype):
        return {"integer"}
    if pd.api.types.is_float_dtype(dtype):
        return {"number"}
    if isinstance(dtype, pd.StringDtype):
        return {"string"}
    return set()


def _compatible(kind: str, dtype: Any) -> bool:
    """Whether a DataFrame column of this dtype can hold values of this kind (object: checked per value)."""
    family = next(family for family in _FAMILIES if kind in family)
    return dtype == object or bool(_kinds_for(dtype) & family)


def _dtype_of(field: Field) -> Any:
    if field.kind == "category":
        return pd.CategoricalDtype(list(field.categories or ()))
    return pd.api.types.pandas_dtype(field.dtype)


def _field_from_dict(position: int, item: Any) -> Field:
    if not isinstance(item, Mapping) or not set(_FIELD_RULES) - set(_OPTIONAL) <= set(item) <= set(_FIELD_RULES):
        keys = sorted(map(str, item)) if isinstance(item, Mapping) else type(item).__name__
        raise UsageError(
            f"Schema field {position} must have exactly the keys {sorted(set(_FIELD_RULES) - set(_OPTIONAL))} "
            f"(and optionally {sorted(_OPTIONAL)}); got {keys}."
        )
    item = {**dict.fromkeys(_OPTIONAL), **item}

    def bad(key: str, what: str) -> NoReturn:
        got = _clip(repr(item[key]), 60)
        raise UsageError(f"Schema field {position} ({_clip(repr(item['name']), 60)}): {key!r} must be {what}, got {got}.")

    for key, (valid, what) in _FIELD_RULES.items():
        if not valid(item[key]):
            bad(key, what)
    numbers = {key: None if item[key] is None else float(item[key]) for key in ("minimum", "maximum", "limit")}
    categories = None if item["categories"] is None else tuple(item["categories"])
    field = Field(**{**item, **numbers, "categories": categories})
    if field.kind == "category" and field.categories is None:
        bad("categories", "the list of categories of a 'category' field")
    try:
        dtype = _dtype_of(field)
    except (TypeError, ValueError):
        dtype = bad("dtype", "a pandas dtype")
    if field.kind not in _kinds_for(dtype):
        bad("dtype", f"a dtype that holds {field.kind} values")
    if field.nullable and not _holds_missing(dtype):
        bad("nullable", f"false for dtype {dtype}, which cannot hold missing values")
    if field.missing_probe is not None and field.nullable != (field.missing_probe == "tolerated"):
        bad("nullable", f"{str(not field.nullable).lower()} when missing_probe is {field.missing_probe!r}")
    if field.limit is not None and field.kind != "number":
        bad("limit", "null for a field that is not a number")
    return field


def _is_finite_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


_FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "kind": (lambda v: v in EXPECTED, f"one of {sorted(EXPECTED)}"),
    "dtype": (lambda v: isinstance(v, str), "a string"),
    "nullable": (lambda v: isinstance(v, bool), "true or false"),
    "categories": (lambda v: v is None or (isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v)), "a list of strings or null"),
    "minimum": (_is_finite_or_none, "a finite number or null"),
    "maximum": (_is_finite_or_none, "a finite number or null"),
    "max_length": (lambda v: v is None or (type(v) is int and v >= 0), "a non-negative integer or null"),
    "limit": (lambda v: v is None or (_is_finite_or_none(v) and v > 0), "a positive finite number or null"),
    "missing_probe": (lambda v: v is None or v in _PROBES, f"one of {sorted(_PROBES)} or null"),
}
_OPTIONAL = ("limit", "missing_probe")
_INPUTS_FROM = frozenset({"pipeline", "train_data"})


def _inputs_from_dict(data: Any) -> tuple[str, str] | None:
    if data is None:
        return None
    if not (isinstance(data, Mapping) and set(data) == {"from", "detail"} and data["from"] in _INPUTS_FROM and isinstance(data["detail"], str)):
        raise UsageError(
            f"A schema's 'inputs' must be {{'from': one of {sorted(_INPUTS_FROM)}, 'detail': a string}}, got {_clip(repr(data), 80)}."
        )
    return data["from"], data["detail"]


def _holds_missing(dtype: Any) -> bool:
    """Whether a column of this training dtype can hold a missing value (numpy integers and booleans cannot)."""
    return not (isinstance(dtype, np.dtype) and dtype.kind in "biu")


class _Report:
    """Problems and warnings of one batch, sorted by row then schema order when checked."""

    def __init__(self, order: dict[str, int]) -> None:
        self.problems: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self.cap = _ROW_CAP
        self._order = order
        self._dropped: Counter[bool] = Counter()  # entries past _TOTAL_CAP, by warning
        self._bad_rows: set[int] = set()
        self._counts: Counter[tuple[str | None, str, bool]] = Counter()
        self.flagged: Flagged = {}

    def _flag(self, field: str | None, issue: str, rows: list[int]) -> None:
        if field is not None:
            self.flagged.setdefault((field, issue), []).extend(rows)

    def add(self, row: int | None, field: str | None, issue: str, expected: str, received: str, *, warning: bool = False) -> None:
        if row is not None and not warning:
            self._bad_rows.add(row)
        elif row is not None:
            self._flag(field, issue, [row])
        if row is not None:
            self._counts[field, issue, warning] += 1
            if self._counts[field, issue, warning] > self.cap:
                return
        self._keep(problem(row, field, issue, expected, received), warning)

    def _keep(self, entry: dict[str, Any], warning: bool) -> None:
        kept = self.warnings if warning else self.problems
        if len(kept) < _TOTAL_CAP:
            kept.append(entry)
        else:
            self._dropped[warning] += 1

    def add_rows(self, rows: np.ndarray, field: str, issue: str, expected: str, values: np.ndarray, *, warning: bool = False) -> None:
        """Many rows with one issue (DataFrame input): count them all, keep entries up to the cap."""
        if not warning:
            self._bad_rows.update(rows.tolist())
        elif len(rows):
            self._flag(field, issue, rows.tolist())
        room = max(self.cap - self._counts[field, issue, warning], 0)
        self._counts[field, issue, warning] += len(rows)
        for row in rows[:room].tolist():
            self._keep(problem(row, field, issue, expected, _describe(values[row].item())), warning)

    def check(self, total: int) -> None:
        """Raise the batch's one SchemaError if anything is wrong."""
        for (field, issue, warning), count in self._counts.items():
            if count > self.cap:
                self._keep(problem(None, field, issue, "as above", f"{count - self.cap} more rows"), warning)
        key = lambda p: (p["row"] is not None, p["row"] or 0, self._order.get(p["field"], len(self._order)))  # noqa: E731
        self.problems.sort(key=key)
        self.warnings.sort(key=key)
        for warning, dropped in self._dropped.items():
            entry = problem(None, None, "truncated", f"at most {_TOTAL_CAP} entries in one answer", f"{dropped} more entries")
            (self.warnings if warning else self.problems).append(entry)
        if not self.problems:
            return
        head = f"{len(self._bad_rows)} of {total} records failed validation against the model's schema:"
        lines = [head if self._bad_rows else "The input failed validation against the model's schema:"]
        for p in self.problems[:_SHOWN]:
            where = ", ".join(([f"record {p['row']}"] if p["row"] is not None else []) + ([f"field {p['field']!r}"] if p["field"] is not None else []))
            lines.append(f"- {where or 'input'}: expected {p['expected']}, got {p['received']}")
        if len(self.problems) > _SHOWN:
            lines.append(f"- ... and {len(self.problems) - _SHOWN} more")
        lines.append("Send records with the fields the model's schema lists (model.schema); every problem is listed in the error's problems.")
        raise SchemaError("\n".join(lines), self.problems)


def _convert(field: Field, dtype: Any, check: _Check, values: list[Any], report: _Report) -> list[Any]:
    """Check one column's raw values; return them with missing values as the dtype's marker."""
    fill = np.nan if isinstance(dtype, np.dtype) and dtype.kind in "fO" else None
    out = []
    for row, value in enumerate(values):
        if value is None or value is _ABSENT or value is _SKIP:
            if value is not _SKIP:
                null = value is None
                if field.nullable:
                    report.add(row, field.name, _IMPUTED[null], _imputed_expected(field), _NO_VALUE[null], warning=True)
                else:
                    report.add(row, field.name, "null" if null else "missing", _null_expected(field), _NO_VALUE[null])
            out.append(fill)
        else:
            out.append(_checked(field, check, row, value, fill, report))
    return out


def _checked(field: Field, check: _Check, row: int, value: Any, fill: Any, report: _Report) -> Any:
    """One present value, checked and converted; its problem, if any, reported."""
    converted, issue, expected = check(value)
    if issue is not None:
        assert expected is not None  # a checker names what it expected with every issue
        report.add(row, field.name, issue, expected, _describe(value), warning=issue in _WARNINGS)
    return fill if converted is None else converted


def _null_expected(field: Field) -> str:
    why = {
        None: "training never saw a missing value",
        "refused": "the model cannot predict without it",
        "untestable": f"its training dtype {field.dtype} holds no missing value",
    }[field.missing_probe]
    return f"{EXPECTED[field.kind]} ({why})"


def _imputed_expected(field: Field) -> str:
    return f"{EXPECTED[field.kind]} (a missing value is filled in by the model: send one if you have it)"


_IMPUTED = {True: "null_imputed", False: "missing_imputed"}  # by whether the value was null (True) or absent
_NO_VALUE = {True: "null", False: "no value (field absent)"}


def _check_array(field: Field, values: np.ndarray, report: _Report) -> np.ndarray:
    """Vectorised checks for a DataFrame column that already has the training dtype."""
    def flag(mask: np.ndarray, issue: str, expected: str, warning: bool = False) -> None:
        report.add_rows(np.flatnonzero(mask), field.name, issue, expected, values, warning=warning)

    if values.dtype.kind == "f":
        if field.nullable:
            flag(np.isnan(values), "null_imputed", _imputed_expected(field), warning=True)
        else:
            flag(np.isnan(values), "null", _null_expected(field))
        flag(np.isinf(values), "non_finite", f"a finite {EXPECTED[field.kind][2:]}")
        if field.limit is not None:
            with np.errstate(invalid="ignore"):
                flag(np.isfinite(values) & (np.abs(values) > field.limit), "non_finite", _bounds(field, values.dtype)[2])
    if field.minimum is not None and values.dtype.kind != "b":
        with np.errstate(invalid="ignore"):
            outside = (values < field.minimum) | (values > field.maximum)
        flag(outside, "out_of_range", f"between {field.minimum:g} and {field.maximum:g} (seen in training)", warning=True)
    return values


def _check_strings(field: Field, dtype: Any, check: _Check, column: pd.Series, report: _Report) -> np.ndarray:
    """Vectorised checks for a DataFrame column of strings (batch scoring reads millions of them).

    Missing values and plain, known, short ASCII strings are settled column-wise;
    only the rest (too long, non-ASCII to normalise, unseen) go through ``check``
    one by one, so every message is the same as for records.
    """
    missing = column.isna().to_numpy()
    values = column.to_numpy(dtype=object, copy=True)
    present = column[~missing]
    unusual = ~present.str.isascii() | (present.str.len() > max_chars(field))
    if field.categories is not None:
        unusual |= ~present.isin(field.categories)
    fill = np.nan if isinstance(dtype, np.dtype) and dtype.kind in "fO" else None
    values[missing] = fill
    for row in np.flatnonzero(missing).tolist():
        if field.nullable:
            report.add(row, field.name, "null_imputed", _imputed_expected(field), "null", warning=True)
        else:
            report.add(row, field.name, "null", _null_expected(field), "null")
    for row in np.flatnonzero(~missing)[unusual.to_numpy()].tolist():
        values[row] = _checked(field, check, row, values[row], fill, report)
    return values


def _number_check(field: Field, dtype: Any) -> _Check:
    integer = field.kind == "integer"
    base = np.dtype(getattr(dtype, "numpy_dtype", dtype))
    low, high, bounds = _bounds(field, base)
    expected = EXPECTED[field.kind]
    seen = None if field.minimum is None else f"between {field.minimum:g} and {field.maximum:g} (seen in training)"

    def check(value: Any) -> tuple[Any, str | None, str | None]:
        if isinstance(value, str) and len(value) <= 100:
            value = _parse_number(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            return None, "type", expected
        if isinstance(value, (float, np.floating)):
            value = float(value)
            if not math.isfinite(value):
                return None, "non_finite", f"a finite {expected[2:]} (send null for a missing value)"
            if integer:
                if not value.is_integer():
                    return None, "type", expected
                value = int(value)
        else:
            value = int(value)
            if not integer:
                try:
                    value = float(value)
                except OverflowError:
                    return None, "non_finite", f"a finite {expected[2:]}"
        if not low <= value <= high:
            return None, "type" if integer else "non_finite", bounds
        if seen is not None and not field.minimum <= value <= field.maximum:
            return value, "out_of_range", seen
        return value, None, None

    return check


def _bounds(field: Field, base: np.dtype) -> tuple[Any, Any, str]:
    """The values a numeric field can hold at all (its dtype's range, within the model's ``limit``), and how to say so."""
    expected = EXPECTED[field.kind]
    if field.kind == "integer":
        info = np.iinfo(base)
        return int(info.min), int(info.max), f"{expected} between {int(info.min)} and {int(info.max)}"
    high = float(np.finfo(base).max)
    if field.limit is None or field.limit >= high:
        return -high, high, f"{expected} between {-high} and {high}"
    limit = field.limit
    why = "the model computes in float32" if limit == _FLOAT32_MAX else "the model's numeric limit"
    return -limit, limit, f"{expected} between {-limit:.8g} and {limit:.8g} ({why}: a larger value becomes infinity)"


def _parse_number(text: str) -> Any:
    """A numeric string as int or float; anything else stays a string (a type error)."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text) or text.strip().lower().lstrip("+-") in _NON_FINITE_WORDS:
        return float(text)
    return text


def _string_check(field: Field, dtype: Any) -> _Check:
    limit = max_chars(field)
    seen = None if field.categories is None else frozenset(field.categories)
    choices = None if seen is None else _clip("one of " + ", ".join(map(repr, field.categories or ())), 80)

    def check(value: Any) -> tuple[Any, str | None, str | None]:
        if not isinstance(value, str):
            return None, "type", EXPECTED[field.kind]
        if len(value) > limit:
            return None, "too_long", f"a string of at most {limit} characters"
        if not value.isascii():
            if not _encodable(value):
                return None, "type", "valid Unicode text (no lone surrogates)"
            value = unicodedata.normalize("NFC", value)
        if seen is not None and value not in seen:
            return (None, "type", choices) if field.kind == "category" else (value, "unseen_category", choices)
        return value, None, None

    return check


def _boolean_check(field: Field, dtype: Any) -> _Check:
    def check(value: Any) -> tuple[Any, str | None, str | None]:
        if isinstance(value, (bool, np.bool_)):
            return bool(value), None, None
        return None, "type", EXPECTED["boolean"]

    return check


_CHECKERS = {"integer": _number_check, "number": _number_check, "string": _string_check, "category": _string_check, "boolean": _boolean_check}


def _build(values: Any, dtype: Any, index: pd.Index) -> Any:
    """One column for the whole batch, in the training dtype."""
    if dtype == object:  # a Series, since pandas 3 turns a bare object array of strings into "str"
        return pd.Series(values, index=index, dtype=object)
    if isinstance(dtype, np.dtype):
        return np.asarray(values, dtype=dtype)
    return pd.array(values, dtype=dtype)


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode (a lone surrogate is not, and cannot be written as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def max_chars(field: Field) -> int:
    """The longest string ``field`` accepts (validation, and the OpenAPI record's maxLength): 4x training's longest, >= 1024."""
    return max(4 * (field.max_length or 0), 1024)


def _describe(value: Any) -> str:
    """A short, safe description of a received value: never echo a huge one."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return f"bool {'true' if value else 'false'}"
    if isinstance(value, str):
        return f"str of {len(value)} characters" if len(value) > 1024 else _clip(f"str {value[:40]!r}", 40)
    if isinstance(value, (int, np.integer)) and abs(int(value)) > 10**30:
        return f"int of {int(value).bit_length()} bits"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _clip(f"{type(value).__name__} {value}", 40)
    if isinstance(value, Mapping):
        return f"object with {len(value)} keys"
    if isinstance(value, (list, tuple)):
        return f"list of {len(value)} items"
    return _clip(type(value).__name__, 40)


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."
