"""Shared fixtures: the real Titanic data, a small fitted search, and artifacts of both serializers."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
from sklearn.model_selection import train_test_split

import blackbox

SERIALIZERS = ["dill", "cloudpickle"]
# The Kaggle Titanic CSV from shared/ beside the checkout: "a user's own CSV" with other columns.
KAGGLE_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "titanic_kaggle.csv"


@pytest.fixture(scope="session", autouse=True)
def keys(tmp_path_factory) -> dict[str, Path]:
    """A test key pair: every save signs with it and every load trusts it (as a deployment would)."""
    from blackbox.signing import SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, keygen

    private, public = keygen(tmp_path_factory.mktemp("keys"), "test")
    patch = pytest.MonkeyPatch()
    patch.setenv(SIGNING_KEY_ENV, str(private))
    patch.setenv(TRUSTED_KEYS_ENV, str(public))
    yield {"private": private, "public": public}
    patch.undo()


def resign(data: bytes, manifest: dict | None = None, payload: bytes | None = None) -> bytes:
    """Artifact bytes with the manifest and/or payload replaced, signed again with the test key."""
    import os

    from blackbox.artifact import dump_manifest, pack, unpack
    from blackbox.signing import SIGNING_KEY_ENV, load_private_key, sign

    parts = unpack(data)
    manifest_bytes = parts.manifest_bytes if manifest is None else dump_manifest(manifest)
    block = sign(manifest_bytes, load_private_key(os.environ[SIGNING_KEY_ENV]))
    return pack(manifest_bytes, parts.payload if payload is None else payload, block)


@pytest.fixture(scope="session")
def titanic():
    from training.data import load_titanic

    X, y = load_titanic()
    return train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)


@pytest.fixture(scope="session")
def search(titanic):
    """A fitted GridSearchCV over the training package's pipeline (two families, small grid)."""
    from training.pipeline import search

    X_train, _, y_train, _ = titanic
    return search(X_train, y_train, seed=0, n_jobs=1, cv_folds=3, small=True)


@pytest.fixture(scope="session", params=SERIALIZERS)
def saved(request, search, titanic, tmp_path_factory) -> Path:
    """An artifact of the fitted search, saved with each serializer."""
    X_train, X_test, _, _ = titanic
    path = tmp_path_factory.mktemp("artifacts") / f"titanic-{request.param}.bbx"
    return blackbox.save(
        search,
        path,
        serializer=request.param,
        train_data=X_train,
        name="titanic",
        version="1.0.0",
        metrics={"holdout": {"accuracy": 0.8}},
        data_source="test-split",
        metadata={"seed": 0},
    )


def marker_payload(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when (and only when) it is unpickled."""

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Exploit(), protocol=5)


def child_env() -> dict[str, str]:
    """The environment for a child interpreter (no PYTHON* variables)."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


PYTHON = sys.executable
