"""MLflow export: an MLflow pyfunc model directory that carries a signed artifact, written without mlflow.

:func:`export` writes plain files (MLflow is never imported here, so exporting
needs no MLflow install), published atomically and never over an existing path::

    DIR/MLmodel            python_function flavor: loader_module blackbox.mlflow_export, data blackbox
    DIR/requirements.txt   the artifact's exact pins and blackbox (as `blackbox requirements` prints)
    DIR/python_env.yaml, DIR/conda.yaml   the same, for MLflow's virtualenv and conda env managers
    DIR/blackbox/model.bbx the signed artifact, byte for byte
    DIR/blackbox/trusted_keys/KEYID.pub   only with embed_trusted_keys

The loader is this module (``_load_pyfunc``, MLflow's loader-module protocol),
installed with blackbox: the directory holds no pickle of its own, so the
artifact's payload is the only pickle and it is unpickled only by
:func:`blackbox.load`, after every check (signature, environment, integrity).
The wrapper's ``predict`` takes a DataFrame (or records) and returns the
model's predictions, validated by the artifact's schema.

Which keys the MLflow side trusts: the serving environment's
BLACKBOX_TRUSTED_KEYS (and BLACKBOX_REVOKED_KEYS), as for every blackbox
loader, so the trust decision stays with the deployment, not with whoever can
write the registry. Only where that variable is unset are keys embedded at
export used; embedding is opt-in because anyone who can replace the model in
the registry can replace those keys too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import signing
from .containment import environment
from .errors import AuthenticityError, UsageError
from .model import Model
from .persist import load
from .signing import TRUSTED_KEYS_ENV, Keyring
from .trust import TrustedKeys

DATA = "blackbox"  # the MLmodel's data directory, handed to _load_pyfunc
ARTIFACT = "model.bbx"
KEYS = "trusted_keys"


def export(
    artifact: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    trusted_keys: TrustedKeys = None,
    embed_trusted_keys: bool = False,
    blackbox: str | None = None,
) -> Path:
    """Write the MLflow pyfunc model directory ``directory`` for ``artifact``; return it.

    The artifact is loaded first with ``trusted_keys`` (default: BLACKBOX_TRUSTED_KEYS), so
    nothing is exported that would not load. ``embed_trusted_keys`` copies the signer's public
    key into the directory; ``blackbox`` is the requirement line that installs blackbox
    (default: as ``blackbox requirements``).
    """
    directory = Path(directory)
    if directory.exists():
        raise UsageError(f"{str(directory)!r} already exists; export into a new directory (exports are never overwritten).")
    model = load(artifact, trusted_keys=trusted_keys)
    manifest = model.manifest
    requirements = environment.requirements_file(manifest, blackbox=blackbox)
    python = manifest.python.version
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        data = scratch / DATA
        data.mkdir()
        (data / ARTIFACT).write_bytes(model.serialize())
        if embed_trusted_keys:
            signer = Keyring.resolve(trusted_keys).keys[str(model.signer)]
            (data / KEYS).mkdir()
            (data / KEYS / f"{model.signer}.pub").write_bytes(signing.public_pem(signer))
        (scratch / "requirements.txt").write_text(requirements)
        pins = [line for line in requirements.splitlines() if line and not line.startswith("#")]
        (scratch / "python_env.yaml").write_text(_yaml({
            "python": python, "build_dependencies": ["pip", "setuptools", "wheel"], "dependencies": ["-r requirements.txt"],
        }))
        (scratch / "conda.yaml").write_text(_yaml({
            "name": "mlflow-env", "channels": ["conda-forge"], "dependencies": [f"python={python}", "pip", {"pip": pins}],
        }))
        (scratch / "MLmodel").write_text(_yaml({
            "flavors": {"python_function": {
                "loader_module": __name__, "data": DATA, "python_version": python,
                "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
            }},
            "metadata": {"blackbox": {
                "name": model.name, "version": model.version, "payload_sha256": model.sha256, "key_id": model.signer,
                "trusted_keys": "embedded, used where BLACKBOX_TRUSTED_KEYS is unset" if embed_trusted_keys
                else "BLACKBOX_TRUSTED_KEYS of the serving environment",
            }},
            "model_uuid": uuid.uuid4().hex,
            "utc_time_created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
        }))
        os.rename(scratch, directory)  # published whole, or not at all
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return directory


class PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` wraps: a verified blackbox model behind MLflow's ``predict``."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Predictions for a DataFrame (or a list of records, or one record); missing values may be NaN or None."""
        if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
            model_input = model_input.astype(object).where(model_input.notna(), None).to_dict("records")
        elif isinstance(model_input, Mapping):
            model_input = [model_input]
        return self.model.predict_batch(model_input)


def _load_pyfunc(data_path: str) -> PyfuncModel:
    """MLflow's loader-module entry point: load ``DATA/model.bbx`` with every blackbox check."""
    data = Path(data_path)
    trusted: TrustedKeys = None  # BLACKBOX_TRUSTED_KEYS
    if not os.environ.get(TRUSTED_KEYS_ENV):
        if not (data / KEYS).is_dir():
            raise AuthenticityError(
                f"No trusted keys for the blackbox model in {str(data.parent)!r}: set {TRUSTED_KEYS_ENV} in the "
                "serving environment to the signer's public key(s), or export it with --embed-trusted-keys."
            )
        trusted = Keyring.from_paths([data / KEYS])  # BLACKBOX_REVOKED_KEYS still applies: every keyring adds it
    return PyfuncModel(load(data / ARTIFACT, trusted_keys=trusted))


def _yaml(value: Any, indent: str = "") -> str:
    """Block YAML for nested dicts and lists of scalars; scalars as JSON, which YAML reads as they are."""
    lines = []
    items = value.items() if isinstance(value, dict) else ((None, item) for item in value)
    for key, item in items:
        head = f"{indent}{key}:" if key is not None else f"{indent}-"
        if isinstance(item, (dict, list)) and item:
            if key is None:  # a mapping or list inside a list: its first line follows the dash
                nested = _yaml(item, indent + "  ")
                lines.append(f"{head} {nested[len(indent) + 2:]}".rstrip("\n"))
            else:
                lines.append(head)
                lines.append(_yaml(item, indent + "  ").rstrip("\n"))
        else:
            lines.append(f"{head} {json.dumps(item)}")
    return "\n".join(lines) + "\n"
