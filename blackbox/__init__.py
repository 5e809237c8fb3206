"""Blackbox: a trained scikit-learn pipeline, custom feature code and all, as one artifact.

``save`` writes a fitted estimator (signed with an Ed25519 key) to a single file with the user's own code
embedded by value and a manifest that describes it; ``load`` verifies the file
before unpickling anything and returns a :class:`Model`; ``inspect`` reads the
manifest without unpickling.
"""

from .errors import (
    ArtifactError,
    AuthenticityError,
    BlackboxError,
    EnvironmentMismatchError,
    IntegrityError,
    SchemaError,
    SelfContainmentError,
    SelfTestError,
    StoreError,
    UsageError,
    VersionMismatchWarning,
)
from .isolation import Verification, verify
from .model import Model, SklearnModel
from .persist import inspect, load, save, sign
from .schema import Schema, infer_schema
from .store import Release, Store

__all__ = [
    "ArtifactError",
    "AuthenticityError",
    "BlackboxError",
    "EnvironmentMismatchError",
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
    "infer_schema",
    "inspect",
    "load",
    "save",
    "sign",
    "verify",
]
