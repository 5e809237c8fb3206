"""Server settings: the defaults, how they are layered, and one typed, validated view of them.

Scope: configuration only. Values come, lowest priority first, from
:data:`DEFAULTS`, from ``BLACKBOX_``-prefixed environment variables (JSON-decoded
by Flask, nested with ``__``: ``BLACKBOX_LOAD_OPTIONS__strict=true``) and from
the mapping given to ``create_app``. :class:`Settings` checks them once, at
start-up, so a typo fails the start with a :class:`blackbox.UsageError` and the
request path never reads the environment or a raw config key.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import URL

import blackbox
from blackbox import UsageError
from blackbox.monitoring.predlog import database_url

if TYPE_CHECKING:
    from flask import Config  # layer() fills the app's; Settings is read by the worker core, which never imports flask

DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        # Artifact(s) to serve: a path or a file:// URI, a directory (its *.bbx files), a list of
        # those, or {"name": path}. Each is served under its manifest name (/models/{name}/...).
        "ARTIFACT": None,
        # Or follow releases in a model store (blackbox.store): its URI, and NAME@ALIAS (or a list).
        "STORE": None,
        "MODEL": None,
        # Set by blackbox serve: {"name": reason} for artifacts that failed their checks in the
        # master; the workers report them not ready and serve the others.
        "UNAVAILABLE": {},
        # Seconds between checks of the followed alias (0: only on POST /reload).
        "POLL_INTERVAL": 30,
        # Seconds the first load and self-test of a new artifact may take in its isolated child
        # (serving/holder.py: vet); past that it is refused like a crash.
        "LOAD_TIMEOUT": 120,
        # Accept an older pointer than the one accepted last (recorded in CACHE_DIR across restarts)
        # or an older version that the pointer does not call a rollback: for an operator going back.
        "ALLOW_DOWNGRADE": False,
        # Where releases pulled from the store are kept; the last good one serves while the
        # store is unreachable. None: $XDG_CACHE_HOME/blackbox/serve (~/.cache/blackbox/serve).
        "CACHE_DIR": None,
        # Keyword arguments for blackbox.load (e.g. {"strict": true}); trust options
        # that blackbox.load gains later pass through here unchanged.
        "LOAD_OPTIONS": {},
        # Reject records with fields the schema does not know (422) instead of warning.
        "STRICT_FIELDS": False,
        # Largest batch one request may carry, checked before any validation work.
        "MAX_RECORDS": 10_000,
        # Largest request body in bytes (Flask's own key: 413 before the body is read).
        "MAX_CONTENT_LENGTH": 8 * 1024 * 1024,
        # API keys as {"id": "key"} or "id:key" lines; and/or a file of them. None: no auth.
        "API_KEYS": None,
        "API_KEYS_FILE": None,
        # One line per request as "json" or "text" (key=value).
        "LOG_FORMAT": "json",
        # Micro-batching: concurrent requests of a worker share one model call (serving/inference.py).
        # A request alone never waits; a batch waits at most BATCH_MAX_WAIT_MS for requests still
        # being validated, and holds at most BATCH_MAX_RECORDS records; a request that large is its
        # own call (bench/bench_server.py on 2 cores: pairing 100-record requests was slower than
        # predicting them one by one, while 16 single records per worker share a call well).
        # With the fast path a call costs ~0.3 ms for 1 record and ~0.8 ms for 64 (LogisticRegression;
        # a 100-tree forest ~0.5 / 6 ms), so a batch waits at most about one call: c=32, single
        # records, 3 interleaved rounds, req/s against the trivial Flask app 0.41-0.51 at 0.5 ms,
        # 0.35-0.48 at 2 ms, 0.30-0.51 at 0, and 0.28-0.33 with batching off (load average 2-7).
        "BATCHING": True,
        "BATCH_MAX_WAIT_MS": 0.5,
        "BATCH_MAX_RECORDS": 64,
        # Drift (serving/monitor.py): each worker keeps its last DRIFT_WINDOW scored records (0: off)
        # for GET /drift, and refreshes the drift gauges at most every DRIFT_INTERVAL seconds.
        "DRIFT_WINDOW": 5_000,
        "DRIFT_INTERVAL": 15,
        # Prediction log (blackbox/monitoring/predlog.py): a SQLAlchemy URL or a SQLite file path; None: off.
        "PREDICTION_LOG": None,
        # Seconds a request may wait for the model (queue and call); past that it is a 504 and the
        # call's answer is dropped (serving/inference.py). Below gunicorn's --timeout (30).
        "REQUEST_TIMEOUT": 20,
        # Seconds a client has to send a whole request, headers and body, from its first byte
        # (serving/worker.py); past that it gets a 408 and the connection is closed.
        "READ_TIMEOUT": 15,
        # After each model load, keep the process's objects out of full garbage collections (serving/heap.py):
        # a ~100 ms stall every few seconds per worker otherwise. It freezes the whole process, so it is off for an
        # app built inside another program; blackbox serve turns it on for its workers unless this is set.
        "SETTLE_HEAP": False,
    }
)

LOG_FORMATS = ("json", "text")


def layer(target: Config, overrides: Mapping[str, Any] | None = None) -> Config:
    """Fill ``target`` with the defaults, then the environment, then ``overrides``."""
    target.from_mapping(copy.deepcopy(dict(DEFAULTS)))
    target.from_prefixed_env("BLACKBOX")
    if overrides:
        target.update(overrides)
    return target


@dataclass(frozen=True)
class Settings:
    """The checked settings the server runs with (see :data:`DEFAULTS` for their meaning)."""

    artifacts: Mapping[str, Path]
    store: str | None
    model_refs: tuple[str, ...]
    unavailable: Mapping[str, str]
    poll_interval: float
    allow_downgrade: bool
    load_timeout: float
    cache_dir: Path
    load_options: Mapping[str, Any]
    strict_fields: bool
    max_records: int
    max_content_length: int
    api_keys: Mapping[str, str] | str | None
    api_keys_file: Path | None
    log_format: str
    batching: bool
    batch_max_wait_ms: float
    batch_max_records: int
    drift_window: int
    drift_interval: float
    prediction_log: URL | None
    request_timeout: float
    read_timeout: float
    settle_heap: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Validate a layered config; raise UsageError naming the key (and its env variable)."""
        store = None if config["STORE"] in (None, "") else str(config["STORE"])
        model_refs = _model_refs(config["MODEL"])
        if (store is None) != (not model_refs) or (store is not None and config["ARTIFACT"] not in (None, "", [])):
            raise UsageError(
                "Serve either ARTIFACT (env BLACKBOX_ARTIFACT), or STORE together with MODEL "
                "(env BLACKBOX_STORE, BLACKBOX_MODEL=NAME@ALIAS), not a mix."
            )
        artifacts = _artifacts(config["ARTIFACT"])
        unavailable = config["UNAVAILABLE"]
        if not isinstance(unavailable, Mapping) or not all(isinstance(v, str) for v in unavailable.values()):
            raise _bad("UNAVAILABLE", 'a mapping {"name": "reason"}', unavailable)
        _unique([*artifacts, *unavailable], "ARTIFACT")
        return cls(
            artifacts=artifacts,
            store=store,
            model_refs=model_refs,
            unavailable=MappingProxyType(dict(unavailable)),
            poll_interval=_number(config, "POLL_INTERVAL", "seconds"),
            allow_downgrade=_bool(config, "ALLOW_DOWNGRADE"),
            load_timeout=_positive(config, "LOAD_TIMEOUT"),
            cache_dir=_cache_dir(config["CACHE_DIR"]),
            load_options=_load_options(config["LOAD_OPTIONS"]),
            strict_fields=_bool(config, "STRICT_FIELDS"),
            max_records=_integer(config, "MAX_RECORDS", 1),
            max_content_length=_integer(config, "MAX_CONTENT_LENGTH", 1),
            api_keys=_api_keys(config["API_KEYS"]),
            api_keys_file=None if config["API_KEYS_FILE"] in (None, "") else Path(str(config["API_KEYS_FILE"])),
            log_format=_choice(config, "LOG_FORMAT", LOG_FORMATS),
            batching=_bool(config, "BATCHING"),
            batch_max_wait_ms=_number(config, "BATCH_MAX_WAIT_MS", "milliseconds", 1000),
            batch_max_records=_integer(config, "BATCH_MAX_RECORDS", 1),
            drift_window=_integer(config, "DRIFT_WINDOW", 0),
            drift_interval=_number(config, "DRIFT_INTERVAL", "seconds"),
            prediction_log=_prediction_log(config["PREDICTION_LOG"]),
            request_timeout=_positive(config, "REQUEST_TIMEOUT"),
            read_timeout=_positive(config, "READ_TIMEOUT"),
            settle_heap=_bool(config, "SETTLE_HEAP"),
        )


def _bad(key: str, what: str, value: Any) -> UsageError:
    return UsageError(f"Setting {key} (env BLACKBOX_{key}) must be {what}, got {value!r}.")


def _bool(config: Mapping[str, Any], key: str) -> bool:
    value = config[key]
    if value in (True, False):  # also 1 and 0, as the environment gives them
        return bool(value)
    raise _bad(key, "true or false", value)


def _integer(config: Mapping[str, Any], key: str, minimum: int) -> int:
    value = config[key]
    if type(value) is not int or value < minimum:  # type(): True is an int to Python, not a count
        raise _bad(key, f"a whole number, {minimum} or more", value)
    return value


def _number(config: Mapping[str, Any], key: str, unit: str, maximum: float = math.inf) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= maximum:
        bounds = "0 or more" if maximum == math.inf else f"between 0 and {maximum:g}"
        raise _bad(key, f"a number of {unit}, {bounds}", value)
    return float(value)


def _positive(config: Mapping[str, Any], key: str) -> float:
    value = _number(config, key, "seconds")
    if value == 0:
        raise _bad(key, "a number of seconds above 0", config[key])
    return value


def _cache_dir(value: Any) -> Path:
    if value in (None, ""):
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blackbox" / "serve"
    if not isinstance(value, (str, Path)):
        raise _bad("CACHE_DIR", "a directory path", value)
    return Path(value)


def _choice(config: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = config[key]
    if value not in choices:
        raise _bad(key, f"one of {', '.join(choices)}", value)
    return str(value)


def _artifacts(value: Any) -> Mapping[str, Path]:
    """Name -> local path of every artifact to serve (directories expanded to their ``*.bbx``, sorted).

    The name is the manifest's (read from the header, nothing unpickled), or the
    file's stem when the header cannot be read: that artifact then fails its load
    and is reported under that name. Two artifacts with one name are refused.
    """
    if value in (None, "", []):
        return MappingProxyType({})
    if isinstance(value, Mapping):
        given = {str(name): _artifact(path) for name, path in value.items()}
        return MappingProxyType({name: path for name, path in given.items() if path is not None})
    paths: list[Path] = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        path = _artifact(item)
        if path is not None and path.is_dir():
            found = sorted(path.glob("*.bbx"))
            if not found:
                raise UsageError(f"The directory {str(path)!r} (ARTIFACT) holds no .bbx artifact to serve.")
            paths += found
        elif path is not None:
            paths.append(path)
    named: dict[str, Path] = {}
    for path in paths:
        name = _manifest_name(path)
        if name in named:
            raise UsageError(
                f"Two artifacts are named {name!r}: {str(named[name])!r} and {str(path)!r}; a server serves each "
                "name once (/models/{name}), so serve them from two servers or save one under another name."
            )
        named[name] = path
    return MappingProxyType(named)


def _manifest_name(path: Path) -> str:
    try:
        name = blackbox.inspect(path).get("name")
    except (blackbox.BlackboxError, OSError):
        name = None
    return name if isinstance(name, str) and name else path.stem


def _model_refs(value: Any) -> tuple[str, ...]:
    """``NAME@ALIAS`` references (one or a list); each is served under its NAME."""
    if value in (None, "", []):
        return ()
    refs = tuple(str(ref) for ref in (value if isinstance(value, (list, tuple)) else [value]))
    _unique([ref.partition("@")[0] for ref in refs], "MODEL")
    return refs


def _unique(names: list[str], key: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"Setting {key} (env BLACKBOX_{key}) names model {repeated[0]!r} twice; each name is served once.")


def _artifact(value: Any) -> Path | None:
    """A local path from a path or a ``file://`` URI (other stores are not served yet)."""
    if value in (None, ""):
        return None
    if not isinstance(value, (str, Path)):
        raise _bad("ARTIFACT", "a path or a file:// URI", value)
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise _bad("ARTIFACT", "a file:// URI on this host", value)
        return Path(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # "C:\..." is a Windows path, not a scheme
        raise UsageError(f"Cannot serve {text!r}: only local paths and file:// URIs are supported.")
    return Path(text)


def _prediction_log(value: Any) -> URL | None:
    if value in (None, ""):
        return None
    if not isinstance(value, (str, Path)):
        raise _bad("PREDICTION_LOG", "a SQLAlchemy URL or a SQLite file path", value)
    return database_url(value)


def _load_options(value: Any) -> Mapping[str, Any]:
    """Options for blackbox.load, checked against its signature so a typo fails at start."""
    if not isinstance(value, Mapping):
        raise _bad("LOAD_OPTIONS", "a mapping of blackbox.load options", value)
    accepted = [name for name, p in inspect.signature(blackbox.load).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(value) - set(accepted))
    if unknown:
        raise _bad("LOAD_OPTIONS", f"a mapping with keys among {accepted}", dict(value))
    return MappingProxyType(dict(value))


def _api_keys(value: Any) -> Mapping[str, str] | str | None:
    if value in (None, "") or isinstance(value, str):
        return value or None
    if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return MappingProxyType(dict(value))
    raise _bad("API_KEYS", 'a mapping {"id": "key"} or "id:key" lines', "<hidden>")
