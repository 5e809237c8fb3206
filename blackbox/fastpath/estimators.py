"""Compiled final estimators: linear models, decision trees and random forests over their fitted attributes.

Scope: the last step of a pipeline, given the 2-D array the transformers made.
Compiled only when the estimator's class uses scikit-learn's own methods (a
subclass that overrides ``predict`` or ``predict_proba`` is not compiled):

* linear classifiers (``LinearClassifierMixin``: LogisticRegression,
  RidgeClassifier, SGDClassifier, ...): ``X @ coef_.T + intercept_``, labels
  as scikit-learn takes them; probabilities for LogisticRegression (expit for
  two classes, softmax for more);
* linear regressors using ``LinearModel.predict`` (LinearRegression, Ridge, Lasso, ...);
* single-output DecisionTree / RandomForest / ExtraTrees classifiers and
  regressors. ``X`` is cast to float32 as scikit-learn does; leaves are found
  by one traversal of every tree at once for small batches (flat 1-D arrays of
  all trees' nodes, rows x trees walked level by level; measured ~3x cheaper
  than ``tree_.apply`` per tree for one row of a 100-tree forest, even at about
  12 rows) and by ``tree_.apply`` per tree for larger ones; tree outputs are
  summed in tree order, as the forest does (a cumulative sum up to
  ``SUMMED_AT_ONCE`` rows; above it tree by tree, each tree's leaves found,
  added and dropped before the next: at 50,000 rows of a 100-tree forest that
  took the plan from ~1.3x the estimator's time to par).

HistGradientBoosting classifiers and regressors are compiled in :mod:`.boosting`.
An estimator class that is not a node class's kind raises :class:`NotThisKind`
(the compiler tries the next); one of its kind with settings it does not
compile raises :class:`~blackbox.fastpath.base.Unsupported` with the reason.

Rules: a non-finite value (or one beyond float32 for trees) defers, so the
reference gives its own answer (NaN routing of trees that learnt it) or its own
error. Derived arrays (the forest's packed nodes) are rebuilt after unpickling,
never stored: the payload holds only the fitted estimator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Defer, Node, Unsupported

SMALL_BATCH = 12
"""Up to this many rows, trees are walked all at once; above it, per tree with ``tree_.apply`` (measured crossover)."""
SUMMED_AT_ONCE = 64
"""Up to this many rows, the trees' outputs are gathered at once and summed by one cumulative sum (at 32 rows of a
100-tree forest ~60 us, the loop over trees ~175 us); above it, tree by tree (the same additions, in the same order)."""
_LEAF_CHECK = 4
"""The walk stops early when every row is at a leaf, checked every this many levels."""


class NotThisKind(Unsupported):
    """The estimator is not of the kind this node class compiles (the compiler tries the next one)."""


class Estimator(Node):
    """A final step: ``predict``, and ``predict_proba`` where the estimator has it."""

    has_proba = False
    classifier = False
    """Whether ``predict`` gives labels (held to the reference's exactly) rather than numbers (within the tolerance)."""

    def predict(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, X: Any) -> np.ndarray:
        raise NotImplementedError

    def both(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.predict(X), self.predict_proba(X)


class CalledEstimator(Estimator):
    """A final step run as it is (the user's own estimator, or a fallback with ``reason``)."""

    def __init__(self, step: Any, path: str, kind: str, reason: str | None = None) -> None:
        super().__init__(step, path)
        self.kind, self.reason = kind, reason
        self.has_proba = hasattr(step, "predict_proba")

    def predict(self, X: Any) -> np.ndarray:
        predictions: np.ndarray = self.step.predict(X)
        return predictions

    def predict_proba(self, X: Any) -> np.ndarray:
        proba: np.ndarray = self.step.predict_proba(X)
        return proba

    def records(self) -> list[dict[str, Any]]:
        record = super().records()[0]
        if self.reason:
            record["reason"] = self.reason
        return [record]


def _numeric(X: Any) -> np.ndarray:
    if type(X) is not np.ndarray or X.ndim != 2 or X.dtype.kind not in "biuf":
        raise Defer("input is not a numeric 2-D array")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise Defer("NaN or infinity: scikit-learn refuses it")
    return X


class Linear(Estimator):
    """``decision = X @ coef_.T + intercept_``, then labels, probabilities or the regression output."""

    def __init__(self, step: Any, path: str) -> None:
        super().__init__(step, path)
        from sklearn.linear_model import LogisticRegression
        from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

        cls = type(step)
        if not isinstance(step, (LinearClassifierMixin, LinearModel)):
            raise NotThisKind("not a scikit-learn linear model")
        if not isinstance(step.coef_, np.ndarray):
            raise Unsupported("sparse coef_ (sparsify())")
        if isinstance(step, LinearClassifierMixin):
            if cls.predict is not LinearClassifierMixin.predict or cls.decision_function is not LinearClassifierMixin.decision_function:
                raise Unsupported("predict or decision_function is overridden")
            self.classifier = True
            self.has_proba = cls is LogisticRegression or (
                issubclass(cls, LogisticRegression) and cls.predict_proba is LogisticRegression.predict_proba
            )
        elif isinstance(step, LinearModel):
            if cls.predict is not LinearModel.predict:
                raise Unsupported("predict is overridden")
            self.classifier = False
        self.width = int(step.n_features_in_)

    def _decision(self, X: Any) -> np.ndarray:
        values = _numeric(X)
        if values.shape[1] != self.width:
            raise Defer("wrong number of features")
        coef: np.ndarray = self.step.coef_
        intercept: np.ndarray | float = self.step.intercept_
        if not self.classifier:
            out: np.ndarray = values @ coef + intercept if coef.ndim == 1 else values @ coef.T + intercept
            return out
        scores: np.ndarray = values @ (coef.T if coef.ndim == 2 else coef) + intercept
        return scores.reshape(-1) if scores.ndim > 1 and scores.shape[1] == 1 else scores

    def _labels(self, scores: np.ndarray) -> np.ndarray:
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else np.argmax(scores, axis=1)
        classes: np.ndarray = self.step.classes_
        return classes.take(indices, axis=0)

    def predict(self, X: Any) -> np.ndarray:
        scores = self._decision(X)
        return self._labels(scores) if self.classifier else scores

    def _proba(self, scores: np.ndarray) -> np.ndarray:
        if scores.ndim == 1:
            from scipy.special import expit

            prob = expit(scores)
            both = np.empty((len(prob), 2), dtype=prob.dtype)  # np.stack([1 - prob, prob], axis=1), without its checks
            np.subtract(1, prob, out=both[:, 0])
            both[:, 1] = prob
            return both
        from sklearn.utils.extmath import softmax

        proba: np.ndarray = softmax(scores.copy(), copy=False)
        return proba

    def predict_proba(self, X: Any) -> np.ndarray:
        return self._proba(self._decision(X))

    def both(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        scores = self._decision(X)
        return self._labels(scores), self._proba(scores)


class Trees(Estimator):
    """One decision tree or a forest of them (single output), classifier or regressor."""

    def __init__(self, step: Any, path: str) -> None:
        super().__init__(step, path)
        from sklearn.ensemble import (
            ExtraTreesClassifier,
            ExtraTreesRegressor,
            RandomForestClassifier,
            RandomForestRegressor,
        )
        from sklearn.ensemble._forest import ForestClassifier
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor

        cls = type(step)
        forests = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor)
        trees = (DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor)
        if cls not in forests + trees:
            raise NotThisKind("not a scikit-learn decision tree or forest of them")
        if getattr(step, "n_outputs_", 1) != 1:
            raise Unsupported("several outputs")
        self.forest = cls in forests
        self.classifier = issubclass(cls, (ForestClassifier, DecisionTreeClassifier))
        self.has_proba = self.classifier
        self.width = int(step.n_features_in_)
        self._derive()

    def __getstate__(self) -> dict[str, Any]:
        return {"step": self.step, "path": self.path, "forest": self.forest, "classifier": self.classifier,
                "has_proba": self.has_proba, "width": self.width}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._derive()

    def _derive(self) -> None:
        """Pack every tree's nodes into flat arrays (leaves point at themselves) and their outputs per leaf."""
        estimators = list(self.step.estimators_) if self.forest else [self.step]
        self.trees = [e.tree_ for e in estimators]
        sizes = [t.node_count for t in self.trees]
        self.offsets = np.cumsum([0, *sizes[:-1]]).astype(np.intp)
        feature, threshold, children, outputs = [], [], [], []
        for tree, offset, estimator in zip(self.trees, self.offsets, estimators):
            leaf = tree.children_left < 0
            own = np.arange(tree.node_count)
            feature.append(np.where(leaf, 0, tree.feature))
            threshold.append(tree.threshold)
            left = np.where(leaf, own, tree.children_left) + offset
            right = np.where(leaf, own, tree.children_right) + offset
            children.append(np.stack([left, right], axis=1).ravel())  # node i's left at 2i, right at 2i + 1
            outputs.append(self._leaf_outputs(tree, estimator))
        self.feature = np.concatenate(feature).astype(np.intp)
        self.threshold = np.concatenate(threshold)
        self.children = np.concatenate(children).astype(np.intp)
        self.is_leaf = self.children[0::2] == np.arange(len(self.feature))
        # The walk's own copies, indexed by twice the node's number (2i: node i's; 2i + 1 unused), so a level
        # is children2[2i + went_right] with no multiplication: six numpy calls a level instead of eight.
        self.feature2, self.threshold2, self.is_leaf2 = (np.repeat(a, 2) for a in (self.feature, self.threshold, self.is_leaf))
        self.children2 = 2 * self.children
        self.outputs: np.ndarray = np.concatenate(outputs)  # (all nodes, classes) or (all nodes,)
        self.depth = max(int(t.max_depth) for t in self.trees)

    def _leaf_outputs(self, tree: Any, estimator: Any) -> np.ndarray:
        """What ``estimator.predict_proba`` (classifier) or ``predict`` gives for each node.

        Since scikit-learn 1.4 (the floor) a classifier's ``tree_.value`` holds each node's class fractions and
        ``predict_proba`` returns them as they are: dividing them by their sum again (as for the counts of older
        versions) moved an impure leaf's fractions by an ulp, and where a forest's probabilities tied, its label.
        """
        value: np.ndarray = tree.value[:, 0, :]
        if not self.classifier:
            return value[:, 0].copy()
        return value[:, : estimator.n_classes_].copy()

    def _float32(self, X: Any) -> np.ndarray:
        """``X`` as the float32 array scikit-learn's trees read, or :class:`Defer` where scikit-learn would refuse it."""
        X = _numeric(X)
        if X.shape[1] != self.width:
            raise Defer("wrong number of features")
        with np.errstate(all="ignore"):
            X32 = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(X32).all():
            raise Defer("a value beyond float32: scikit-learn refuses it")
        return X32

    def _leaves(self, X32: np.ndarray) -> np.ndarray:
        """Global node index of each row's leaf in each tree: (rows, trees)."""
        if len(X32) > SMALL_BATCH:
            return np.stack([t.apply(X32) for t in self.trees], axis=1) + self.offsets
        rows, width = X32.shape
        values = X32.ravel()
        starts = np.repeat(np.arange(rows) * width, len(self.offsets)) if rows > 1 else None  # each (row, tree)'s row in values
        doubled = np.tile(2 * self.offsets, rows)  # 2i for node i
        feature2, threshold2, children2, is_leaf2 = self.feature2, self.threshold2, self.children2, self.is_leaf2
        for level in range(self.depth):
            at = feature2.take(doubled) if starts is None else starts + feature2.take(doubled)
            # Right when not X <= threshold (scikit-learn's test; X is finite here): node i's children at 2i and 2i + 1.
            doubled = children2.take(doubled + (values.take(at) > threshold2.take(doubled)))
            if level % _LEAF_CHECK == _LEAF_CHECK - 1 and is_leaf2.take(doubled).all():
                break
        nodes: np.ndarray = (doubled >> 1).reshape(rows, len(self.offsets))
        return nodes

    def _summed(self, X: Any) -> np.ndarray:
        X32 = self._float32(X)
        if self.forest and len(X32) > SUMMED_AT_ONCE:
            # Tree by tree, each tree's leaves and outputs dropped before the next: the same sums in the same order,
            # without a (rows, trees) array of leaves (40 MB for 50,000 rows of 100 trees, and read down its columns).
            total: np.ndarray | None = None
            for tree, offset in zip(self.trees, self.offsets):
                found = self.outputs.take(tree.apply(X32) + offset, axis=0)
                total = found if total is None else np.add(total, found, out=total)
            assert total is not None
            return total / len(self.trees)
        leaves = self._leaves(X32)
        if not self.forest:
            single: np.ndarray = self.outputs[leaves[:, 0]]
            return single
        return np.cumsum(self.outputs[leaves], axis=1)[:, -1] / len(self.trees)  # (rows, trees[, classes]) summed in tree order

    def predict_proba(self, X: Any) -> np.ndarray:
        return self._summed(X)

    def predict(self, X: Any) -> np.ndarray:
        if not self.classifier:
            return self._summed(X)
        return self.both(X)[0]

    def both(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        proba = self._summed(X)
        if self.forest:
            return self.step.classes_.take(np.argmax(proba, axis=1), axis=0), proba
        raw = self.trees[0].value[:, 0, :][self._leaves(self._float32(X))[:, 0] - self.offsets[0]]
        return self.step.classes_.take(np.argmax(raw, axis=1), axis=0), proba
