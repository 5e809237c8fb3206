"""Keep sklearn-pandas importable on scikit-learn >= 1.7, in every process.

sklearn-pandas 2.2.0 (its last release) does ``from sklearn.utils import
tosequence``, a helper scikit-learn removed in 1.7. Patching it in the training
script is not enough: the loky workers of a parallel ``GridSearchCV``, the
server and the isolated check are separate interpreters that import
``sklearn_pandas`` while unpickling a ``DataFrameMapper``.

So the fix lives in the environment, not in a process: ``_blackbox_compat.pth``
(installed next to this module in site-packages) calls :func:`install` when any
interpreter of that environment starts. It puts a one-shot finder on
``sys.meta_path`` that, the first time ``sklearn_pandas`` is imported, restores
``sklearn.utils.tosequence`` if it is missing, and then steps aside. It costs
nothing until then, never imports scikit-learn early, and does not copy any
sklearn-pandas code. ``blackbox.load`` also calls :func:`install`, for
interpreters started without site (``python -S``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder


def _tosequence(x):
    """Return ``x`` as a sequence, without copying when it already is one."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return np.asarray(x)
    if isinstance(x, Sequence):
        return x
    return list(x)


class _SklearnPandasShim(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "sklearn_pandas":
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            import sklearn.utils

            if not hasattr(sklearn.utils, "tosequence"):
                sklearn.utils.tosequence = _tosequence
        return None  # let the regular finders import the module


def install() -> None:
    """Arm the shim in this interpreter (idempotent)."""
    if "sklearn_pandas" in sys.modules:
        return
    if not any(isinstance(f, _SklearnPandasShim) for f in sys.meta_path):
        sys.meta_path.insert(0, _SklearnPandasShim())
