"""Compiled final estimators: HistGradientBoostingClassifier and HistGradientBoostingRegressor over their fitted trees.

Scope: the last step of a pipeline, given the 2-D array the transformers made,
for the two classes themselves (a subclass is not compiled). What scikit-learn's
``_raw_predict`` does, in its order: ``X`` as float64, each row's raw score
starting at ``_baseline_prediction`` and each iteration's tree outputs added in
iteration order (one tree per class and iteration), so the sums are bit for
bit the estimator's; then the estimator's own loss object maps them
(``_loss.predict_proba``: expit for two classes, softmax for more;
``_loss.link.inverse`` for a regressor) and labels are taken as scikit-learn
takes them (``raw > 0`` for two classes, the first maximum for more).

A split sends NaN where the tree learnt (``missing_go_to_left``) and any other
value left when ``x <= num_threshold``, as ``_predict_from_raw_data`` does:
numpy's comparison treats inf, -inf and huge values as its C code does, so
they are answered, not deferred (scikit-learn accepts them). Up to
:data:`WALKED_AT_ONCE` rows every tree is walked at once (flat arrays of all
trees' nodes, rows x trees level by level: ~60-150 us for one row of 100
trees, ``predict_proba`` ~650-1200 us, most of it fixed per call); above it
each tree's own ``TreePredictor.predict`` (scikit-learn's compiled walk) is
called and added in the same order, without the estimator's per-call checks.

Refused (:class:`~blackbox.fastpath.base.Unsupported`, so the step runs the
reference way and says why): categorical features (a ``_preprocessor`` or any
categorical split), a loss whose mapping is not one listed in
:func:`_losses`, and trees per iteration that do not match the classes.
Rules: a non-numeric input, another width or no rows defers. Derived arrays
(the packed nodes) are rebuilt after unpickling, never stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Defer, Unsupported
from .estimators import Estimator, NotThisKind

WALKED_AT_ONCE = 32
"""Up to this many rows, all trees are walked at once; above it, tree by tree with scikit-learn's own walk (measured on
100 iterations of depth 16, two classes: 1 row ~63 us against ~500 us, 32 rows ~330 against ~500, 64 rows ~570 against
~540; three classes (300 trees): 32 rows ~940 against ~1520, 64 rows ~1870 against ~1750)."""
_LEAF_CHECK = 4
"""The walk stops early when every (row, tree) is at a leaf, checked every this many levels."""


def _losses() -> tuple[type, ...]:
    """Losses whose mapping of raw scores is compiled (the loss's own ``predict_proba`` or ``link.inverse`` is called)."""
    from sklearn._loss.loss import (
        AbsoluteError,
        HalfBinomialLoss,
        HalfGammaLoss,
        HalfMultinomialLoss,
        HalfPoissonLoss,
        HalfSquaredError,
        PinballLoss,
    )

    return HalfBinomialLoss, HalfMultinomialLoss, HalfSquaredError, AbsoluteError, PinballLoss, HalfPoissonLoss, HalfGammaLoss


class Boosting(Estimator):
    """A fitted HistGradientBoosting classifier or regressor with numeric splits only."""

    def __init__(self, step: Any, path: str) -> None:
        super().__init__(step, path)
        from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = type(step)
        if cls not in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
            raise NotThisKind("not a scikit-learn HistGradientBoosting classifier or regressor")
        if step._preprocessor is not None or any(p.nodes["is_categorical"].any() for it in step._predictors for p in it):
            raise Unsupported("categorical features (categorical_features): category splits are not compiled")
        loss = type(step._loss)
        if loss not in _losses():
            raise Unsupported(f"loss {loss.__name__}: its mapping of raw scores is not compiled")
        self.classifier = cls is HistGradientBoostingClassifier
        self.has_proba = self.classifier
        per_iteration = int(step.n_trees_per_iteration_)
        if self.classifier:
            binary = len(step.classes_) == 2
            expected = (1, HalfBinomialLoss) if binary else (len(step.classes_), HalfMultinomialLoss)
        else:
            expected = (1, loss)
        if (per_iteration, loss) != expected or step._baseline_prediction.shape != (1, per_iteration) or any(
                len(it) != per_iteration for it in step._predictors):
            raise Unsupported(f"{per_iteration} trees per iteration with loss {loss.__name__} and "
                              f"{len(getattr(step, 'classes_', ()))} classes: not the layout compiled")
        self.width = int(step.n_features_in_)
        self._derive()

    def __getstate__(self) -> dict[str, Any]:
        return {"step": self.step, "path": self.path, "classifier": self.classifier, "has_proba": self.has_proba,
                "width": self.width}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._derive()

    def _derive(self) -> None:
        """Pack every tree's nodes into flat arrays, in iteration then class order (leaves point at themselves)."""
        self.iterations = [list(it) for it in self.step._predictors]  # at least one: max_iter >= 1
        predictors = [p for it in self.iterations for p in it]
        self.per_iteration = int(self.step.n_trees_per_iteration_)
        self.baseline: np.ndarray = self.step._baseline_prediction
        self.known_categories = self.step._bin_mapper.make_known_categories_bitsets()  # empty: no categorical feature
        offsets = np.cumsum([0, *[len(p.nodes) for p in predictors[:-1]]]).astype(np.intp)
        feature, threshold, nan_right, children = [], [], [], []
        for predictor, offset in zip(predictors, offsets):
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            own = np.arange(len(nodes))
            feature.append(np.where(leaf, 0, nodes["feature_idx"]))
            threshold.append(nodes["num_threshold"])
            nan_right.append(~nodes["missing_go_to_left"].astype(bool) & ~leaf)
            left = np.where(leaf, own, nodes["left"]) + offset
            right = np.where(leaf, own, nodes["right"]) + offset
            children.append(np.stack([left, right], axis=1).ravel())  # node i's left at 2i, right at 2i + 1
        self.value = np.concatenate([p.nodes["value"] for p in predictors])
        linked = np.concatenate(children).astype(np.intp)
        # As estimators.Trees: the walk's copies are indexed by twice the node's number, so a level's step is
        # children2[2i + went_right], with no multiplication.
        self.starts2 = 2 * offsets
        self.children2 = 2 * linked
        self.feature2 = np.repeat(np.concatenate(feature).astype(np.intp), 2)
        self.threshold2 = np.repeat(np.concatenate(threshold), 2)
        self.nan_right2 = np.repeat(np.concatenate(nan_right), 2)
        self.is_leaf2 = np.repeat(linked[0::2] == np.arange(len(self.value)), 2)
        self.depth = max(int(p.nodes["depth"].max()) for p in predictors)

    def _float64(self, X: Any) -> np.ndarray:
        if type(X) is not np.ndarray or X.ndim != 2 or X.dtype.kind not in "biuf":
            raise Defer("input is not a numeric 2-D array")
        if X.shape[1] != self.width:
            raise Defer("wrong number of features")
        if not len(X):
            raise Defer("no rows: scikit-learn refuses it")
        return np.ascontiguousarray(X, dtype=np.float64)  # as validate_data(dtype=float64) converts it

    def _raw(self, X: Any) -> np.ndarray:
        """The raw scores (rows, trees per iteration), summed as ``_raw_predict`` sums them."""
        values = self._float64(X)
        rows = len(values)
        if rows > WALKED_AT_ONCE:
            from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

            raw = np.zeros((rows, self.per_iteration), dtype=self.baseline.dtype, order="F")
            raw += self.baseline
            known, f_idx_map = self.known_categories
            threads = _openmp_effective_n_threads()
            for iteration in self.iterations:
                for k, predictor in enumerate(iteration):
                    raw[:, k] += predictor.predict(values, known, f_idx_map, threads)
            return raw
        outputs = self.value.take(self._leaves(values) >> 1).reshape(rows, len(self.iterations), self.per_iteration)
        ordered = np.concatenate([np.broadcast_to(self.baseline, (rows, 1, self.per_iteration)), outputs], axis=1)
        summed: np.ndarray = np.cumsum(ordered, axis=1)[:, -1, :]  # baseline, then each iteration in order
        return summed

    def _leaves(self, values: np.ndarray) -> np.ndarray:
        """Twice the global index of each (row, tree)'s leaf, rows major."""
        rows, width = values.shape
        flat = values.ravel()
        missing = bool(np.isnan(flat).any())
        starts = np.repeat(np.arange(rows) * width, len(self.starts2)) if rows > 1 else None  # each (row, tree)'s row
        doubled = np.tile(self.starts2, rows)
        for level in range(self.depth):
            at = self.feature2.take(doubled)
            found = flat.take(at if starts is None else starts + at)
            # Right when not x <= threshold (False for NaN), except that NaN goes where the tree learnt.
            right = found > self.threshold2.take(doubled)
            if missing:
                right |= np.isnan(found) & self.nan_right2.take(doubled)
            doubled = self.children2.take(doubled + right)
            if level % _LEAF_CHECK == _LEAF_CHECK - 1 and self.is_leaf2.take(doubled).all():
                break
        return doubled

    def _labels(self, raw: np.ndarray) -> np.ndarray:
        encoded = (raw.ravel() > 0).astype(int) if raw.shape[1] == 1 else np.argmax(raw, axis=1)
        labels: np.ndarray = self.step.classes_[encoded]
        return labels

    def predict(self, X: Any) -> np.ndarray:
        raw = self._raw(X)
        if self.classifier:
            return self._labels(raw)
        predictions: np.ndarray = self.step._loss.link.inverse(raw.ravel())
        return predictions

    def predict_proba(self, X: Any) -> np.ndarray:
        proba: np.ndarray = self.step._loss.predict_proba(self._raw(X))
        return proba

    def both(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        raw = self._raw(X)
        proba: np.ndarray = self.step._loss.predict_proba(raw)
        return self._labels(raw), proba
