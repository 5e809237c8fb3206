"""Keep sklearn-pandas importable on scikit-learn >= 1.7, in every process.

sklearn-pandas 2.2.0 (its last release) does ``from sklearn.utils import
tosequence``, a helper scikit-learn removed in 1.7. Patching it in the training
script is not enough: the loky workers of a parallel ``GridSearchCV``, the
server and the isolated check are separate interpreters that import
``sklearn_pandas`` while unpickling a ``DataFrameMapper``.

So the fix lives in the environment, not in a process: ``_blackbox_compat.pth``
(installed next to this module in site-packages) calls :func:`install` when any
interpreter of that environment starts. It puts a one-shot finder on
``sys.meta_path`` that wraps the loader of ``sklearn_pandas``: just before the
package's code runs, ``sklearn.utils.tosequence`` is restored if it is missing,
and the finder steps aside. Looking the package up (``find_spec``) has no side
effect; nothing is imported early, and no sklearn-pandas code is copied. ``blackbox.load`` also calls :func:`install`, for
interpreters started without site (``python -S``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import Loader, MetaPathFinder


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
        if fullname != "sklearn_pandas":
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None and spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, self)
                    return spec
        return None


class _PatchingLoader(Loader):
    """The real loader of sklearn_pandas, preceded by the patch."""

    def __init__(self, loader, finder):
        self._loader = loader
        self._finder = finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self._finder]
        import sklearn.utils

        if not hasattr(sklearn.utils, "tosequence"):
            sklearn.utils.tosequence = _tosequence
        self._loader.exec_module(module)

    def __getattr__(self, name):  # resources, get_source, ... come from the real loader
        return getattr(self._loader, name)


def install() -> None:
    """Arm the shim in this interpreter (idempotent)."""
    if "sklearn_pandas" in sys.modules:
        return
    if not any(isinstance(f, _SklearnPandasShim) for f in sys.meta_path):
        sys.meta_path.insert(0, _SklearnPandasShim())
