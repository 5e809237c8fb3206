"""Edge rows for the exactness check: what training did not show but a server will see.

Scope: generating records from the schema only (no model). For a few
training rows, each field is replaced in turn by: a missing value (nullable
fields), numbers far below, far above and around zero (within the schema's
limit), an unseen category and an empty string; and one row has every
nullable field missing. Records the schema would refuse are dropped by the
caller: only what a server would predict is checked.
"""

from __future__ import annotations

from typing import Any

_BASE_ROWS = 3


def edge_records(schema: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Variants of the first few ``records``, one field changed at a time, plus an all-missing one."""
    base = records[:_BASE_ROWS]
    out: list[dict[str, Any]] = []
    for field in schema.fields:
        for value in _values(field):
            out += [{**record, field.name: value} for record in base]
    if base:
        out.append({**base[0], **{f.name: None for f in schema.fields if f.nullable}})
    return out


def _values(field: Any) -> list[Any]:
    values: list[Any] = [None] if field.nullable else []
    if field.kind in ("integer", "number"):
        low = field.minimum if field.minimum is not None else 0.0
        high = field.maximum if field.maximum is not None else 0.0
        span = (high - low) or 1.0
        numbers = [low - 10 * span, high + 10 * span, 0, -1, 1e12]
        if field.limit is not None:
            numbers = [n for n in numbers if abs(n) <= field.limit]
        values += [int(n) for n in numbers] if field.kind == "integer" else [float(n) for n in numbers]
    elif field.kind in ("string", "category"):
        values += ["<unseen category>", ""]
    elif field.kind == "boolean":
        values += [True, False]
    return values
