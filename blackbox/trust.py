"""The checks an artifact passes before a single byte of it is unpickled, in order.

Unpickling runs code, so nothing is unpickled until the framing parses, the
manifest is strict JSON of the expected shape, this interpreter matches the
environment the manifest records, and the payload has exactly the recorded
length and sha256. Only then is the payload handed to its serializer.
"""

from __future__ import annotations

from typing import Any

import _blackbox_compat

from . import environment, serializers
from .artifact import FORMAT_VERSION, Artifact
from .errors import ArtifactError, SelfContainmentError

_REQUIRED = ("format_version", "name", "version", "adapter", "serializer", "python", "payload", "schema")


def unpickle(artifact: Artifact, *, strict: bool = False) -> tuple[Any, dict[str, Any]]:
    """Verify ``artifact`` and return its estimator and manifest.

    ``strict`` refuses any package version that differs from the manifest's;
    by default a minor difference only warns (see :func:`environment.check`).
    """
    manifest = artifact.manifest()
    _check_shape(manifest)
    environment.check(manifest, strict=strict)
    artifact.check_payload(manifest)
    _blackbox_compat.install()
    try:
        estimator = serializers.loads(artifact.payload, manifest["serializer"]["name"])
    except ModuleNotFoundError as exc:
        # Requirements were checked above, so this module is one the payload names
        # without declaring: code kept by reference that the serving side lacks.
        missing = str(exc.name)
        references = [i for i in manifest.get("imports", []) if i.partition(".")[0].partition(":")[0] == missing]
        raise SelfContainmentError(
            f"The payload needs module {missing!r}, which is not available here"
            + (f" (it refers to {', '.join(references[:5])})" if references else "")
            + ". It was kept by reference at save time: re-save the model without by_reference="
            f"[{missing!r}] so that blackbox embeds it by value, or install {missing!r} on the serving side.",
            references or [missing],
        ) from exc
    except Exception as exc:  # a verified payload that still fails to load is a broken artifact
        raise ArtifactError(f"The payload passed verification but could not be unpickled: {exc!r}.") from exc
    return estimator, manifest


def _check_shape(manifest: dict[str, Any]) -> None:
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ArtifactError(f"The artifact manifest lacks {', '.join(missing)}; the file is damaged or not an artifact.")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"The manifest says format {manifest['format_version']!r} but the framing says {FORMAT_VERSION}; "
            "the file is damaged."
        )
    serializer = manifest["serializer"].get("name") if isinstance(manifest["serializer"], dict) else None
    if serializer not in serializers.SERIALIZERS:
        raise ArtifactError(f"The artifact names serializer {serializer!r}, which blackbox does not know.")
