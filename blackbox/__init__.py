"""Blackbox: a trained scikit-learn pipeline, custom feature code and all, as one artifact.

``save`` writes a fitted estimator (signed with an Ed25519 key) to a single file with the user's own code
embedded by value and a manifest that describes it; ``load`` verifies the file
before unpickling anything and returns a :class:`Model`; ``inspect`` reads the
manifest without unpickling. ``__version__`` is the installed distribution's version.

Public: the names in ``__all__``; what the ``__all__`` of :mod:`blackbox.store` (the model
store), :mod:`blackbox.scoring` (batch scoring) and :mod:`blackbox.monitoring` (``read_log``,
the prediction log as a DataFrame) names; and :mod:`blackbox.mlflow_export`, the loader module
an exported MLflow model names.
The rest is internal and may move between releases: :mod:`blackbox.containment`
(serializers, the pickle scan, environment checks, embedding, the isolated check),
:mod:`blackbox.fastpath`, and the modules of the format and trust (``artifact``,
``manifest``, ``trust``, ``signing``, ``persist``, ``model``, ``schema``, ``cli``).
"""

import importlib.metadata

from .containment.isolation import Verification, verify
from .errors import (
    ArtifactError,
    AuthenticityError,
    BlackboxError,
    EnvironmentMismatchError,
    ExitCode,
    IntegrityError,
    SchemaError,
    SelfContainmentError,
    SelfTestError,
    StoreError,
    UsageError,
    VersionMismatchWarning,
)
from .model import Model, SklearnModel
from .persist import inspect, load, save, sign
from .schema import Schema, infer_schema
from .store import Release, Store

try:
    __version__ = importlib.metadata.version("blackbox")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ArtifactError",
    "AuthenticityError",
    "BlackboxError",
    "EnvironmentMismatchError",
    "ExitCode",
    "IntegrityError",
    "Model",
    "Release",
    "Schema",
    "SchemaError",
    "SelfContainmentError",
    "SelfTestError",
    "SklearnModel",
    "Store",
    "StoreError",
    "UsageError",
    "Verification",
    "VersionMismatchWarning",
    "__version__",
    "infer_schema",
    "inspect",
    "load",
    "save",
    "sign",
    "verify",
]
