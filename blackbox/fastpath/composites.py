"""Compiled containers: Pipeline chains, sklearn-pandas DataFrameMapper and ColumnTransformer.

Scope: routing only; the arithmetic is in the children. A container that
slices columns takes the :class:`~blackbox.fastpath.table.Table` and hands each
child its columns, chosen once by position at build time, in the form the
child was verified with (see ``Node.form``), then stacks the outputs with
``np.hstack`` as the container itself does. Rules:

* DataFrameMapper: ``default=False``, ``df_out=False``, column lists or single
  names (not callables); ColumnTransformer: dense output, default output
  container. Other settings are :class:`~blackbox.fastpath.base.Unsupported`.
* A sparse child output is made an array with ``toarray()`` in a
  ColumnTransformer (whose output is dense: a sparse one is not compiled), as
  it does itself; in a DataFrameMapper it defers (sklearn-pandas combines the
  parts sparsely first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Defer, Node
from .table import Table

#: How a container hands a child its columns (each is what the container itself would pass).
VALUES, VECTOR, FRAME, SERIES = "values", "vector", "frame", "series"


class Chain(Node):
    """A ``Pipeline`` (or sklearn-pandas ``TransformerPipeline``) of transformers."""

    def __init__(self, step: Any, path: str, nodes: Sequence[Node]) -> None:
        super().__init__(step, path)
        self.nodes = list(nodes)
        self.form = self.nodes[0].form if self.nodes else "reference"

    def transform(self, X: Any) -> Any:
        for node in self.nodes:
            X = node.transform(X)
        return X

    def records(self) -> list[dict[str, Any]]:
        return [r for node in self.nodes for r in node.records()]

    @property
    def kind(self) -> str:  # type: ignore[override]
        kinds = {r["mode"] for r in self.records()}
        return "compiled" if kinds == {"compiled"} else "mixed"


class Slice:
    """One child's columns: their positions, how they are handed over, and the dtype of their values."""

    __slots__ = ("positions", "how", "dtype")

    def __init__(self, positions: Sequence[int], how: str, dtype: np.dtype | None) -> None:
        self.positions, self.how, self.dtype = list(positions), how, dtype

    def take(self, table: Table) -> Any:
        if self.how == VALUES:
            assert self.dtype is not None  # recorded for every VALUES slice
            return table.values(self.positions, self.dtype)
        if self.how == VECTOR:
            return table.vector(self.positions[0])
        if self.how == FRAME:
            return table.frame_of(self.positions)
        return table.series(self.positions[0])


class Columns(Node):
    """DataFrameMapper or ColumnTransformer: each child on its slice, outputs side by side."""

    form = "table"
    densify = False  # what a plan pickled before the attribute existed does with a sparse part: defer

    def __init__(self, step: Any, path: str, parts: Sequence[tuple[Slice, Node | None]], one_d: str,
                 densify: bool = False) -> None:
        super().__init__(step, path)
        self.parts = list(parts)
        self.one_d = one_d  # what a 1-D child output becomes: "column" (mapper) or "refuse" (ColumnTransformer)
        self.densify = densify  # a sparse child output becomes its toarray() (ColumnTransformer), else defers

    def transform(self, table: Any) -> np.ndarray:
        if not isinstance(table, Table):
            raise Defer("not the plan's table")
        from scipy import sparse

        outputs = []
        plain = True  # every output a 2-D ndarray: np.hstack is np.concatenate(axis=1), without its per-array checks
        for columns, node in self.parts:
            X = columns.take(table)
            out = X if node is None else node.transform(X)
            if type(out) is not np.ndarray:
                plain = False
                if sparse.issparse(out):
                    if not self.densify:
                        raise Defer("a sparse part: the container combines those sparsely")
                    out = out.toarray()
            if len(out.shape) == 1:
                if self.one_d != "column":
                    raise Defer("a 1-D part: ColumnTransformer refuses it")
                out = np.array([out]).T
            outputs.append(out)
        return np.concatenate(outputs, axis=1) if plain else np.hstack(outputs)

    def records(self) -> list[dict[str, Any]]:
        own = super().records()
        return own + [r for _, node in self.parts if node is not None for r in node.records()]

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "compiled"


class Identity(Node):
    """ColumnTransformer's ``"passthrough"``: the columns' values as they are."""

    def transform(self, X: Any) -> Any:
        return X
