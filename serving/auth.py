"""Optional API-key authentication with bearer tokens, and the scopes each key is granted.

Scope: reading keys and checking requests. Keys come from ``API_KEYS``
(``{"id": "key"}``, or ``id:key`` entries separated by newlines or commas, e.g.
from ``BLACKBOX_API_KEYS``) and/or ``API_KEYS_FILE`` (the same, with ``#``
comments). With no key configured the server is open (``blackbox serve`` then
binds only to loopback unless told ``--insecure-no-auth``). With keys, every
route but ``/health``, ``/ready``, ``/v2/health/live`` and ``/v2/health/ready`` needs ``Authorization: Bearer <key>``
(401 otherwise), and a key granted the route's scope (403 otherwise, naming it):

- ``predict``: ``POST /predict`` and ``/invocations`` (and their
  ``/models/{name}/...`` forms), ``POST /v2/models/{name}/infer``;
- ``feedback``: ``POST /feedback`` (and ``/models/{name}/feedback``): a label
  replaces the one stored for any request id, so only the system that knows the
  outcomes should hold it, not every client that asks for predictions;
- ``read``: ``GET /models``, ``/model``, ``/schema``, ``/openapi.json``, ``/drift``,
  the ``/v2`` metadata and model-ready routes, and
  ``/metrics`` (it tells who uses the model how much; Prometheus sends the
  header from its ``authorization.credentials_file``);
- ``admin``: ``POST /reload``, and any route not listed here (deny by default).

A key is granted scopes after it on its line (``id:key predict read``), or in the
keys file's JSON as ``{"id": {"key": "...", "scopes": ["read"]}}``. A key
given without scopes (``id:key``, ``{"id": "key"}``: every key written before
scopes existed) gets ``predict``, ``feedback`` and ``read``, what it could use
before, and never ``admin``, which is granted only explicitly. Tokens are compared in
constant time against every key; only the key's id is ever logged.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flask import Flask, g, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from blackbox import UsageError

from .config import Settings
from .http_errors import MissingScope
from .routes import current

OPEN_ENDPOINTS = frozenset({"ops.health", "ops.ready", "v2.server_live", "v2.server_ready"})
SCOPES = ("predict", "feedback", "read", "admin")
DEFAULT_SCOPES = frozenset({"predict", "feedback", "read"})
ENDPOINT_SCOPES = {
    "api.predict": "predict", "api.invocations": "predict", "feedback.feedback": "feedback",
    "ops.model": "read", "ops.schema": "read", "ops.openapi_json": "read", "ops.metrics": "read", "ops.drift_view": "read",
    "ops.reload": "admin",
    "ops.models": "read", "ops.model_ready": "read",
    "v2.infer": "predict", "v2.server_metadata": "read", "v2.model_metadata": "read", "v2.model_ready": "read",
}
"""The scope each route needs; a route not listed needs ``admin``."""
MIN_KEY_LENGTH = 16
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 b64token: what a bearer token may hold


@dataclass(frozen=True)
class ApiKey:
    """A key's secret bytes and the scopes it is granted."""

    secret: bytes
    scopes: frozenset[str]


def init_app(app: Flask) -> None:
    app.before_request(authenticate)


def load_keys(settings: Settings) -> dict[str, ApiKey]:
    """Every configured key, id -> key; UsageError for a malformed, short or repeated key or an unknown scope."""
    entries: list[tuple[str, str, object, str]] = []
    if settings.api_keys is not None:
        entries += _entries(settings.api_keys, "API_KEYS")
    if settings.api_keys_file is not None:
        try:
            text = settings.api_keys_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"Cannot read the API keys file {str(settings.api_keys_file)!r}: {exc}.") from None
        source = str(settings.api_keys_file)
        if text.lstrip().startswith("{"):
            try:
                text = json.loads(text)
            except ValueError as exc:
                raise UsageError(f"The API keys file {source!r} is not valid JSON: {exc}.") from None
        entries += _entries(text, source)
    keys: dict[str, ApiKey] = {}
    for key_id, key, scopes, source in entries:
        where = f"API key {key_id!r} in {source}"
        if not _ID.fullmatch(key_id):
            raise UsageError(f"{where}: ids are 1-64 letters, digits, '.', '_' or '-'.")
        if not _KEY.fullmatch(key) or len(key) < MIN_KEY_LENGTH:
            raise UsageError(
                f"{where}: keys are at least {MIN_KEY_LENGTH} characters among letters, digits and -._~+/= "
                "(e.g. `openssl rand -hex 32`)."
            )
        if key_id in keys or any(k.secret == key.encode() for k in keys.values()):
            raise UsageError(f"{where}: each id and each key may appear only once.")
        keys[key_id] = ApiKey(key.encode(), _scopes(scopes, where))
    return keys


def authenticate() -> None:
    """Before each request: 401 unless the route is open or the bearer token is a known key; 403 without its scope."""
    keys = current().keys
    if not keys or request.endpoint in OPEN_ENDPOINTS:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key_id = match(keys, token.strip().encode("latin-1", "replace")) if scheme.lower() == "bearer" else None
    if key_id is None:
        raise Unauthorized(
            "Send a valid API key as `Authorization: Bearer <key>`.",
            www_authenticate=WWWAuthenticate("bearer", {"realm": "blackbox"}),
        )
    g.key_id = key_id
    if request.endpoint is not None:  # None: no such route, answered 404/405 as for any caller
        scope = ENDPOINT_SCOPES.get(request.endpoint, "admin")
        if scope not in keys[key_id].scopes:
            raise MissingScope(key_id, scope, f"{request.method} {request.path}")


def match(keys: Mapping[str, ApiKey], token: bytes) -> str | None:
    """The id of the key equal to ``token``; compares with every key, so timing tells nothing."""
    found = None
    for key_id, key in keys.items():
        if hmac.compare_digest(key.secret, token):
            found = key_id
    return found


def _scopes(value: object, where: str) -> frozenset[str]:
    """The scopes of one entry: None for the default; else a non-empty list of known scope names."""
    if value is None:
        return DEFAULT_SCOPES
    if not isinstance(value, Iterable) or isinstance(value, (str, Mapping)):
        raise UsageError(f"{where}: scopes are a list of scopes among {', '.join(SCOPES)}, e.g. [\"read\"].")
    scopes = list(value)
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise UsageError(f"{where}: unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}.")
    if not scopes:
        raise UsageError(f"{where}: grant at least one scope among {', '.join(SCOPES)}, or omit scopes for predict, feedback and read.")
    return frozenset(scopes)


def _entries(value: object, source: str) -> list[tuple[str, str, object, str]]:
    """(id, key, scopes or None, source) for each entry of a mapping or of `id:key [scope ...]` lines."""
    if isinstance(value, Mapping):
        return [(str(k), *_entry(v, f"API key {str(k)!r} in {source}"), source) for k, v in value.items()]
    if not isinstance(value, str):
        raise UsageError(f'API keys in {source} must be a JSON object {{"id": "key"}} or "id:key" lines.')
    entries: list[tuple[str, str, object, str]] = []
    for number, line in enumerate(value.splitlines(), 1):
        if line.strip().startswith("#"):
            continue
        for entry in filter(None, (part.strip() for part in line.split(","))):  # keys hold no commas
            key_id, sep, rest = entry.partition(":")
            if not sep or not rest.split():
                raise UsageError(f"Line {number} of the API keys in {source} is not `id:key`, optionally followed by scopes.")
            key, *scopes = rest.split()
            entries.append((key_id.strip(), key, scopes or None, source))
    return entries


def _entry(value: object, where: str) -> tuple[str, object]:
    """A JSON entry's key and scopes: ``"key"`` or ``{"key": "...", "scopes": [...]}``."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, Mapping) and isinstance(value.get("key"), str) and set(value) <= {"key", "scopes"}:
        return value["key"], value.get("scopes")
    raise UsageError(f'{where}: an entry is "key" or {{"key": "...", "scopes": [...]}}.')
