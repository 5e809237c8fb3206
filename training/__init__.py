"""Example training package: Titanic survival, the way a data scientist would write it.

It exists to exercise blackbox on a realistic pipeline: a sklearn-pandas
``DataFrameMapper`` with custom transformer classes and module-level feature
functions (``functools.partial``, no lambdas), tuned with a parallel
``GridSearchCV`` across two model families, then saved with ``blackbox.save``.

Modules, one concept each: :mod:`training.data` (loading and the input schema),
:mod:`training.transforms` (custom transformers), :mod:`training.features`
(feature functions and the mapper), :mod:`training.pipeline` (model, grid and
search) and :mod:`training.__main__` (the ``blackbox-train`` command).
"""
