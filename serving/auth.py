"""Optional API-key authentication with bearer tokens.

Scope: reading keys and checking requests. Keys come from ``API_KEYS``
(``{"id": "key"}``, or ``id:key`` entries separated by newlines or commas, e.g.
from ``BLACKBOX_API_KEYS``) and/or ``API_KEYS_FILE`` (the same, with ``#``
comments). With no
key configured the server is open (``blackbox serve`` then binds only to
loopback unless told ``--insecure-no-auth``). With keys, every route but
``/health`` and ``/ready`` needs ``Authorization: Bearer <key>``; ``/metrics``
too, since it tells who uses the model how much (Prometheus sends the header
from its ``authorization.credentials_file``). Tokens are compared in constant
time against every key; only the key's id is ever logged.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping

from blackbox import UsageError
from flask import Flask, g, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from . import state
from .config import Settings

OPEN_ENDPOINTS = frozenset({"ops.health", "ops.ready"})
MIN_KEY_LENGTH = 16
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 b64token: what a bearer token may hold


def init_app(app: Flask) -> None:
    app.before_request(authenticate)


def load_keys(settings: Settings) -> dict[str, bytes]:
    """Every configured key, id -> key bytes; UsageError for a malformed, short or repeated one."""
    entries: list[tuple[str, str, str]] = []
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
    keys: dict[str, bytes] = {}
    for key_id, key, source in entries:
        where = f"API key {key_id!r} in {source}"
        if not _ID.fullmatch(key_id):
            raise UsageError(f"{where}: ids are 1-64 letters, digits, '.', '_' or '-'.")
        if not _KEY.fullmatch(key) or len(key) < MIN_KEY_LENGTH:
            raise UsageError(
                f"{where}: keys are at least {MIN_KEY_LENGTH} characters among letters, digits and -._~+/= "
                "(e.g. `openssl rand -hex 32`)."
            )
        if key_id in keys or key.encode() in keys.values():
            raise UsageError(f"{where}: each id and each key may appear only once.")
        keys[key_id] = key.encode()
    return keys


def authenticate() -> None:
    """Before each request: 401 unless the route is open or the bearer token is a known key."""
    keys = state.current().keys
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


def match(keys: Mapping[str, bytes], token: bytes) -> str | None:
    """The id of the key equal to ``token``; compares with every key, so timing tells nothing."""
    found = None
    for key_id, key in keys.items():
        if hmac.compare_digest(key, token):
            found = key_id
    return found


def _entries(value: object, source: str) -> list[tuple[str, str, str]]:
    if isinstance(value, Mapping):
        return [(str(k), v if isinstance(v, str) else "", source) for k, v in value.items()]
    if not isinstance(value, str):
        raise UsageError(f'API keys in {source} must be a JSON object {{"id": "key"}} or "id:key" lines.')
    entries = []
    for number, line in enumerate(value.replace(",", "\n").splitlines(), 1):  # keys hold no commas
        line = line.strip()
        if line and not line.startswith("#"):
            key_id, sep, key = line.partition(":")
            if not sep:
                raise UsageError(f"Line {number} of the API keys in {source} is not `id:key`.")
            entries.append((key_id.strip(), key.strip(), source))
    return entries
