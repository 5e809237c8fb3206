"""The public persistence API: ``save``, ``load``, ``inspect`` and ``sign``; the one place artifacts are loaded.

``save`` turns a fitted estimator (or a fitted search, whose best estimator is
stored) into one artifact file: the payload with user code embedded by value,
and a manifest that describes it, written atomically and only after the bytes
have been loaded back and have reproduced the golden sample.

The input schema holds the columns of ``train_data`` the fitted pipeline reads
(every column only where the pipeline cannot say; the schema's ``inputs``
records which), and a field is nullable when the fitted model, probed with it
missing on a few rows of ``train_data``, still predicts finite values.

``load`` (a file) and :func:`loads` (bytes) verify through :mod:`blackbox.trust`
and build the :class:`Model`; Model itself never reads or verifies an artifact.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import importlib.metadata
import inspect as inspect_
import os
import tempfile
import warnings
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import signing, trust
from .artifact import FORMAT_VERSION, Artifact, dump_manifest, pack, read_bytes, read_header, read_manifest, unpack
from .atomic import atomic_write
from .containment import isolation, serializers
from .containment.embedding import embed
from .errors import AuthenticityError, SchemaError, SelfTestError, UsageError
from .fastpath import ATTRIBUTE as FAST_PATH_ATTRIBUTE
from .manifest import Manifest, data_summary, git_info, jsonable, python_info, search_metrics, source_snapshot, utc_now
from .model import Model
from .rebuild import recipe_section
from .schema import Schema, infer_schema
from .signing import SIGNING_KEY_ENV
from .store.releases import check_names
from .trust import TrustedKeys

GOLDEN_ROWS = 5
PROBE_ROWS = 3
"""Rows of train_data (complete ones first) that each field's missing-value probe predicts."""


def save(
    estimator: Any,
    path: str | os.PathLike[str],
    *,
    serializer: str = "dill",
    sample: pd.DataFrame | None = None,
    train_data: pd.DataFrame | None = None,
    name: str | None = None,
    version: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    data_source: str | None = None,
    by_value: Collection[str] = (),
    by_reference: Collection[str] = (),
    verify: bool = False,
    block: Collection[str] = (),
    signing_key: str | os.PathLike[str] | None = None,
    recipe: Mapping[str, Any] | None = None,
    fast_path: bool = True,
    metadata: Mapping[str, Any] | None = None,
    **unknown: Any,
) -> Path:
    """Write ``estimator`` to ``path`` as one self-contained artifact; return the path.

    :param train_data: the frame the model was fit on: the columns the pipeline reads
        become the input schema, and it is fingerprinted (it is not stored).
    :param sample: a few input rows for the golden sample (default: rows of ``train_data``).
    :param metrics: extra scores, e.g. ``{"holdout": {"accuracy": 0.8}}``.
    :param by_value: modules to embed by value beyond those blackbox detects.
    :param by_reference: modules the serving side installs itself (kept by reference).
    :param signing_key: an Ed25519 private key file (``blackbox keygen``) to sign with;
        default: the file named by BLACKBOX_SIGNING_KEY, if set. Loaders refuse unsigned artifacts,
        so without a key ``save`` warns (UserWarning) what loading it will need.
    :param recipe: how to train it again (``blackbox rebuild``): ``entry_point`` (module run
        with ``python -m``), ``args``, ``seed`` and ``data`` (the training data file).
    :param fast_path: build the fast path (:mod:`blackbox.fastpath`): the pipeline's
        arithmetic on plain arrays, proved equal to it on ``train_data`` and edge rows,
        stored beside the estimator and recorded in ``manifest["fast_path"]``.
    :param verify: before publishing at ``path``, load the artifact in an isolated
        interpreter with ``block`` (e.g. your training package) and the by-value modules unimportable
        (:func:`blackbox.verify`); raise if it fails.
    :param metadata: anything else to record, as JSON, in ``manifest["metadata"]``
        (e.g. ``{"seed": 42}``). Any other keyword is refused (UsageError): a typo
        such as ``verfy=True`` must not skip a check silently.
    """
    if unknown:
        raise _unknown_arguments(unknown)
    check_names(name, version)  # they become paths in a model store: validated where they are made
    signing_key = signing_key or os.environ.get(SIGNING_KEY_ENV) or None
    model = build(
        estimator,
        serializer=serializer,
        sample=sample,
        train_data=train_data,
        name=name,
        version=version,
        metrics=metrics,
        data_source=data_source,
        by_value=by_value,
        by_reference=by_reference,
        signing_key=signing_key,
        recipe=recipe,
        metadata=metadata or {},
        fast_path=fast_path,
    )
    data = model.serialize()
    if verify:
        _verify_candidate(data, block, signing_key)
    written = atomic_write(path, data)
    if not signing_key:
        warnings.warn(
            f"Saved {str(path)!r} UNSIGNED (no signing_key, {SIGNING_KEY_ENV} unset), and loaders refuse unsigned "
            "artifacts: load it with trusted_keys= after `blackbox sign PATH --key KEY`, or with "
            "allow_unsigned=True (--allow-unsigned) for a model you trust; or save with signing_key= "
            "(a key from `blackbox keygen`).",
            UserWarning, stacklevel=2,
        )
    return written


def _unknown_arguments(unknown: Mapping[str, Any]) -> UsageError:
    """save()'s refusal of keywords it does not take, each with the accepted one it is closest to."""
    accepted = [p.name for p in inspect_.signature(save).parameters.values() if p.kind is p.KEYWORD_ONLY]
    lines = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, accepted, n=1)
        lines.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return UsageError(
        f"save() got unknown keyword argument(s) {', '.join(lines)}; it takes {', '.join(accepted)}. "
        'Anything else to record in the manifest goes in metadata={...}.'
    )


def _verify_candidate(data: bytes, block: Collection[str], signing_key: str | os.PathLike[str] | None) -> None:
    """Isolated check of bytes about to be published, trusting the key they were just signed with."""
    with tempfile.TemporaryDirectory(prefix="blackbox-save-") as scratch:
        candidate = Path(scratch) / "candidate.bbx"
        candidate.write_bytes(data)
        trusted = None
        if signing_key:
            trusted = [Path(scratch) / "signer.pub"]
            trusted[0].write_bytes(signing.public_pem(signing.load_private_key(signing_key).public_key()))
        isolation.verify(candidate, block=block, trusted_keys=trusted, allow_unsigned=not signing_key).raise_for_status()


def load(
    path: str | os.PathLike[str],
    *,
    trusted_keys: TrustedKeys = None,
    allow_unsigned: bool = False,
    strict: bool = False,
    oms_bundle: str | os.PathLike[str] | None = None,
    fast_path: bool = True,
) -> Model:
    """Verify and load an artifact; nothing is unpickled before every check passes.

    :param trusted_keys: whose signatures are accepted: a ``.pub`` file or a directory of
        them (str or Path), an Ed25519 or P-256 public key, a :class:`~blackbox.signing.Keyring`,
        or a list of those; default: BLACKBOX_TRUSTED_KEYS. Key ids in BLACKBOX_REVOKED_KEYS
        are refused whichever way the keys are given.
    :param allow_unsigned: also load an unsigned artifact (logged loudly). A present
        but invalid signature is refused whatever this says.
    :param strict: refuse any package version that differs from the manifest's.
    :param oms_bundle: an OpenSSF model signing bundle (``PATH.sig``) over the file, by a trusted P-256 key,
        as the proof of authenticity instead of the header signature (needs ``blackbox[oms]``);
        every other check still runs.
    :param fast_path: predict through the artifact's fast path when it has one; False: through
        the estimator itself (``model.plan`` is None). The load-time self-test checks both either way.
    """
    return loads(
        read_bytes(path), source=str(path), trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, strict=strict,
        oms_bundle=oms_bundle, fast_path=fast_path,
    )


def loads(data: bytes, *, source: str = "artifact", fast_path: bool = True, **policy: Any) -> Model:
    """Verify and load artifact bytes (``Model.serialize()``'s); ``source`` names them in errors, the rest as for :func:`load`."""
    artifact = unpack(data, source)
    estimator, manifest = trust.unpickle(artifact, **policy)
    model = Model.named(manifest.adapter)(estimator, manifest, artifact)
    if not fast_path:
        model.plan = None
    model.check_plan()
    return model


def inspect(path: str | os.PathLike[str], *, trusted_keys: TrustedKeys = None) -> dict[str, Any]:
    """The artifact's manifest as JSON, read without unpickling (or even reading) the payload.

    A ``signature`` key is added: the signer's key id and claims, and whether the
    signature verifies against ``trusted_keys`` (default: BLACKBOX_TRUSTED_KEYS).
    """
    manifest, status = read(path, trusted_keys=trusted_keys)
    return {**manifest.to_json(), "signature": status}


def read(path: str | os.PathLike[str], *, trusted_keys: TrustedKeys = None) -> tuple[Manifest, dict[str, Any]]:
    """What :func:`inspect` shows, typed: the manifest, and the signature's status (as inspect's ``signature``)."""
    manifest_bytes, block = read_header(path)
    manifest = read_manifest(manifest_bytes)
    status: dict[str, Any] = {"signed": bool(block), "valid": False}
    if block:
        try:
            status.update(signing.read_block(block))
            status.pop("signature", None)
            trust.authenticate(Artifact(manifest_bytes, block, b""), trusted_keys, allow_unsigned=False)
            status["valid"] = True
        except AuthenticityError as exc:
            status["reason"] = exc.message
    else:
        status["reason"] = "unsigned"
    return manifest, status


def sign(
    path: str | os.PathLike[str], key: str | os.PathLike[str], *, expires_at: str | None = None
) -> dict[str, Any]:
    """Sign an existing artifact in place (atomically), replacing any signature; return the claims.

    The payload is checked against the manifest first: a signature never vouches for damaged bytes.
    """
    parts = unpack(read_bytes(path), str(path))
    parts.check_payload(parts.read_manifest().payload)
    block = signing.sign(parts.manifest_bytes, signing.load_private_key(key), expires_at=expires_at)
    atomic_write(path, pack(parts.manifest_bytes, parts.payload, block))
    return signing.read_block(block)


def build(
    estimator: Any,
    *,
    serializer: str,
    sample: pd.DataFrame | None,
    train_data: pd.DataFrame | None,
    name: str | None,
    version: str | None,
    metrics: Mapping[str, Any] | None,
    data_source: str | None,
    by_value: Collection[str],
    by_reference: Collection[str],
    signing_key: str | os.PathLike[str] | None,
    recipe: Mapping[str, Any] | None,
    metadata: Mapping[str, Any],
    fast_path: bool = True,
) -> Model:
    """Package a fitted estimator as a verified, in-memory artifact (see :func:`save`)."""
    from .monitoring import drift  # the training profile: saving needs it, loading never does

    serializers.check_serializer(serializer)
    fitted, search = _fitted_estimator(estimator)
    frame = train_data if train_data is not None else sample
    if not isinstance(frame, pd.DataFrame):
        raise UsageError(
            "blackbox.save needs train_data (the DataFrame the model was fit on) to record the input "
            "schema and the golden sample; pass train_data=X_train."
        )
    adapter = Model.adapter_for(fitted)
    columns, inputs = _inputs(adapter, fitted, frame)
    schema = replace(infer_schema(frame[columns], limit=adapter.numeric_limit(fitted)), inputs=inputs)
    schema = _probe_missing(adapter, fitted, schema, frame)
    if sample is None:
        sample = frame.sample(n=min(GOLDEN_ROWS, len(frame)), random_state=0)
    records = jsonable(sample[schema.columns].to_dict("records"))
    plan, plan_record = _fast_path(fitted, train_data, schema) if fast_path else (None, {"enabled": False, "reason": "fast_path=False"})
    try:
        if plan is not None:
            setattr(fitted, FAST_PATH_ATTRIBUTE, plan)  # pickled beside the estimator, sharing its fitted objects
        payload = embed(fitted, serializer=serializer, by_value=by_value, by_reference=by_reference)
    finally:
        if plan is not None:
            delattr(fitted, FAST_PATH_ATTRIBUTE)
    created_at = utc_now()
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name or type(fitted).__name__.lower(),
        "version": version or dt.datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%SZ").strftime("%Y%m%d.%H%M%S"),
        "created_at": created_at,
        "adapter": adapter.adapter,
        "estimator": f"{type(fitted).__module__}.{type(fitted).__qualname__}",
        "serializer": {"name": serializer, "version": serializers.version(serializer)},
        "python": python_info(),
        "blackbox_version": importlib.metadata.version("blackbox"),
        "requirements": payload.requirements,
        "by_value": list(payload.by_value),
        "imports": [g.key for g in payload.imports],
        "payload": {"sha256": hashlib.sha256(payload.data).hexdigest(), "size": len(payload.data)},
        "git": git_info(payload.by_value),
        "data": data_summary(train_data, data_source) if train_data is not None else None,
        "schema": schema.to_dict(),
        "features": {"input": schema.columns, "transformed": _transformed_names(fitted)},
        "output": adapter.describe_output(fitted),
        "metrics": jsonable({**({"search": search_metrics(search)} if search is not None else {}), **(metrics or {})}),
        "source": source_snapshot(payload.by_value),
        "profile": drift.profile(train_data, schema) if train_data is not None else None,
        "recipe": recipe_section(recipe, search) if recipe is not None else None,
        "metadata": jsonable(metadata),
        "fast_path": jsonable(plan_record),
    }
    # The golden sample is the model's own answers: predicted by a Model of the manifest without them.
    without_golden = Manifest.from_json({**manifest, "golden": {"records": records, "predictions": []}})
    manifest["golden"] = _golden(adapter(fitted, without_golden), records)
    manifest_bytes = dump_manifest(Manifest.from_json(manifest).to_json())
    signature = signing.sign(manifest_bytes, signing.load_private_key(signing_key)) if signing_key else b""
    artifact = Artifact(manifest_bytes, signature, payload.data)
    estimator, _ = trust.unpickle_own(artifact)
    reloaded = adapter(estimator, artifact.read_manifest(), artifact)
    try:
        reloaded.self_test()
    except SelfTestError as exc:
        raise SelfTestError(
            "Refusing to save: the pickled model, loaded back, does not reproduce the predictions of the "
            f"model in memory; the serializer lost something.\n{exc.message}",
            exc.differences,
        ) from exc
    return reloaded


def _fast_path(fitted: Any, train_data: pd.DataFrame | None, schema: Any) -> tuple[Any, dict[str, Any]]:
    """The proved plan and its manifest record; a plan that cannot be built is recorded, never fatal."""
    if train_data is None:
        return None, {"enabled": False, "reason": "no train_data to prove it on"}
    from .fastpath import build_plan

    try:
        return build_plan(fitted, train_data, schema)
    except Exception as exc:  # noqa: BLE001 - the reference path stays; say why there is no plan
        return None, {"enabled": False, "reason": f"building the plan failed: {exc!r}"[:500]}


def _fitted_estimator(estimator: Any) -> tuple[Any, Any]:
    """The estimator to store, and the search it came from (or None)."""
    # Imported here: loading and inspecting must not import scikit-learn before verification.
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise UsageError(
            f"This {type(estimator).__name__} is not fitted, and only fitted models can be saved; "
            "call fit first."
        ) from None
    except TypeError as exc:
        raise UsageError(f"blackbox.save takes a fitted scikit-learn estimator: {exc}") from None
    if hasattr(estimator, "cv_results_"):
        if not hasattr(estimator, "best_estimator_"):
            raise UsageError(
                f"This {type(estimator).__name__} was fitted with refit=False, so it holds no model to save; "
                "fit it with refit=True (the default)."
            )
        return estimator.best_estimator_, estimator
    return estimator, None


def _inputs(adapter: type[Model], fitted: Any, frame: pd.DataFrame) -> tuple[list[Any], tuple[str, str]]:
    """The columns of ``frame`` the schema holds, and how they were chosen (the schema's ``inputs``)."""
    columns, detail = adapter.input_columns(fitted, frame)
    if columns is None:
        return list(frame.columns), ("train_data", detail)
    lacking = [name for name in columns if name not in frame.columns]
    if lacking:
        raise UsageError(
            f"train_data lacks the column(s) {lacking} that the model reads ({detail}); "
            "pass the frame the model was fit on as train_data."
        )
    return columns, ("pipeline", detail)


def _probe_missing(adapter: type[Model], fitted: Any, schema: Schema, frame: pd.DataFrame) -> Schema:
    """``schema`` with each field nullable where the fitted model predicts without it (:meth:`Schema.probe_missing`)."""
    rows = frame[schema.columns]
    complete = rows.dropna()
    records = jsonable((complete if len(complete) else rows).head(PROBE_ROWS).to_dict("records"))
    draft = Manifest.from_json({  # what a Model reads to predict: the schema and the output; the rest is not known yet
        "format_version": FORMAT_VERSION, "name": "draft", "version": "0", "adapter": adapter.adapter,
        "serializer": {"name": "none"}, "python": python_info(), "payload": {"sha256": "none", "size": 0},
        "schema": schema.to_dict(), "output": adapter.describe_output(fitted), "golden": {"records": [], "predictions": []},
    })
    model = adapter(fitted, draft)

    def predict(probe: pd.DataFrame) -> None:
        with warnings.catch_warnings():  # a probe's warnings (an all-missing column) are no news to the user
            warnings.simplefilter("ignore")
            model.predict_and_proba_frame(probe)

    return schema.probe_missing(records, predict)


def _golden(model: Model, records: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        frame, _ = model.prepare(records)
    except SchemaError as exc:
        raise UsageError(
            f"The golden sample does not fit the schema inferred from train_data:\n{exc.message}\n"
            "Pass sample rows drawn from the same data as train_data."
        ) from None
    predictions, probabilities = model.predict_and_proba_frame(frame)
    return {"records": records, "predictions": predictions, "probabilities": probabilities}


def _transformed_names(estimator: Any) -> list[str] | None:
    """Names of the features the final step sees, when the pipeline can tell."""
    steps = getattr(estimator, "steps", None)
    if not steps:
        return None
    try:
        return list(jsonable(estimator[:-1].get_feature_names_out()))
    except (AttributeError, ValueError, TypeError, IndexError):
        pass
    for _, step in steps[:-1]:
        names = getattr(step, "transformed_names_", None)
        if names is not None:
            return list(jsonable(names))
    return None
