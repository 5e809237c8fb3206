"""``blackbox serve PATH...``: verify artifacts, then serve them under gunicorn.

Scope: the command line. Only click and the standard library are imported at
module level, so ``blackbox``'s CLI can register :func:`serve` without loading
Flask or a model. The command resolves the settings once (defaults,
``BLACKBOX_*`` environment, then its options), refuses a non-loopback bind
without API keys, vets each artifact (load and self-test in an isolated child
interpreter, killed after ``--load-timeout`` seconds), then forks the workers,
each of which loads the vetted copies in the background. Several PATHs (or a
directory of ``.bbx``, or several ``--model``) serve several models, each under
its name; one that fails its checks is reported not ready while the others
serve. When none passes (one model alone: when it fails), the command ends with
the error's exit code (7 for a crash or a timeout) and one line. The master never runs model code. Following a store
that cannot be reached at start, or whose target is refused (a bad release,
a replayed pointer), it starts anyway on the last good cached release (or, the
store unreachable, on none: live, not ready), and the workers keep following.
A port already in use is a usage error (exit 2) before anything is vetted.
``--debug`` runs Flask's development server instead, in one process.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_THREADS = 16
"""Threads per gunicorn worker; the measurements behind it are in serving/gunicorn_app.py."""


@click.command()
@click.argument("paths", metavar="[PATH]...", nargs=-1, type=click.Path(dir_okay=True))
@click.option("--store", default=None, metavar="URI", help="Follow releases in this model store instead of serving PATHs.")
@click.option("--model", "model_refs", multiple=True, metavar="NAME@ALIAS",
              help="A store reference to follow, e.g. titanic@production; repeatable (one model each).")
@click.option("--allow-downgrade", is_flag=True,
              help="Accept an older store pointer than the one accepted last (even before a restart: it is recorded "
                   "in --cache-dir), or an older version not marked a rollback.")
@click.option("--poll-interval", type=click.FloatRange(min=0), default=None,
              help="Seconds between checks of the followed alias (0: only POST /reload) [default: 30].")
@click.option("--load-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a new artifact's first load and self-test may take (in an isolated child) [default: 120].")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where releases pulled from --store are kept; the last good one serves while the store is down "
                   "[default: ~/.cache/blackbox/serve].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; non-loopback needs API keys.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes [default: one per core].")
@click.option("--threads", type=click.IntRange(min=1), default=DEFAULT_THREADS, show_default=True,
              help="Threads per worker (1: gunicorn's sync worker).")
@click.option("--timeout", type=click.IntRange(min=1), default=30, show_default=True,
              help="gunicorn's worker timeout: a worker silent this long is restarted.")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a request may wait for the model; then 504 (below --timeout) [default: 20].")
@click.option("--read-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a client has to send a whole request from its first byte; then 408 [default: 15].")
@click.option("--trusted-keys", "trusted_keys", multiple=True, type=click.Path(exists=True), metavar="PATH",
              help="Trusted public key (.pub) or directory of them; repeatable. Default: $BLACKBOX_TRUSTED_KEYS.")
@click.option("--allow-unsigned", is_flag=True, help="Also serve an unsigned artifact: loading it RUNS ITS CODE; only a signature is a trust boundary.")
@click.option("--no-fast-path", is_flag=True,
              help="Predict through the estimator itself, not the artifact's fast path (LOAD_OPTIONS fast_path=false).")
@click.option("--strict", is_flag=True, help="Refuse any package version that differs from the manifest's.")
@click.option("--strict-fields", is_flag=True, help="Reject records with unknown fields (422) instead of warning.")
@click.option("--api-keys-file", type=click.Path(exists=True, dir_okay=False),
              help="File of `id:key` lines (or a JSON object); clients send `Authorization: Bearer KEY`.")
@click.option("--insecure-no-auth", is_flag=True, help="Allow a non-loopback bind without API keys.")
@click.option("--max-records", type=click.IntRange(min=1), default=None, help="Records per request [default: 10000].")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=None, help="Request body size [default: 8 MiB].")
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None, help="Request log lines [default: json].")
@click.option("--batching/--no-batching", default=None,
              help="Let concurrent requests of a worker share one model call [default: on].")
@click.option("--batch-max-wait-ms", type=click.FloatRange(0, 1000), default=None,
              help="Longest a batch waits for requests still being validated [default: 0.5].")
@click.option("--batch-max-records", type=click.IntRange(min=1), default=None,
              help="Records per model call; a request this large is its own call [default: 64].")
@click.option("--prediction-log", default=None, metavar="URL",
              help="Log every prediction to this SQLAlchemy URL or SQLite file (POST /feedback adds labels) [default: off].")
@click.option("--debug", is_flag=True, help="Flask's development server (one process, reloader off) instead of gunicorn.")
def serve(
    paths: tuple[str, ...],
    store: str | None,
    model_refs: tuple[str, ...],
    allow_downgrade: bool,
    poll_interval: float | None,
    load_timeout: float | None,
    cache_dir: str | None,
    host: str,
    port: int,
    workers: int | None,
    threads: int,
    timeout: int,
    request_timeout: float | None,
    read_timeout: float | None,
    trusted_keys: tuple[str, ...],
    allow_unsigned: bool,
    no_fast_path: bool,
    strict: bool,
    strict_fields: bool,
    api_keys_file: str | None,
    insecure_no_auth: bool,
    max_records: int | None,
    max_body_bytes: int | None,
    log_format: str | None,
    batching: bool | None,
    batch_max_wait_ms: float | None,
    batch_max_records: int | None,
    prediction_log: str | None,
    debug: bool,
) -> None:
    """Serve the artifacts at PATHs (files or directories of .bbx; or follow --store/--model) over HTTP.

    POST /predict, /invocations, /feedback, /reload; GET /health, /ready, /model, /schema, /openapi.json, /metrics, /drift.
    Each model also answers as /models/NAME/... (GET /models lists them; with several, that is how to address
    one), and over the Open Inference Protocol v2 (/v2/models/NAME/infer).
    """
    metrics_dir = None if debug else tempfile.mkdtemp(prefix="blackbox-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    if metrics_dir:  # before prometheus_client is imported: it picks its mode once, at import
        os.environ[MULTIPROC_ENV] = metrics_dir
    master = os.getpid()
    try:
        config, settings = _config(
            list(paths) or None,
            load={"trusted_keys": list(trusted_keys) or None, "allow_unsigned": allow_unsigned or None, "strict": strict or None,
                  "fast_path": False if no_fast_path else None},
            STORE=store,
            MODEL=list(model_refs) or None,
            ALLOW_DOWNGRADE=allow_downgrade or None,
            POLL_INTERVAL=poll_interval,
            LOAD_TIMEOUT=load_timeout,
            CACHE_DIR=cache_dir,
            STRICT_FIELDS=strict_fields or None,
            API_KEYS_FILE=api_keys_file,
            MAX_RECORDS=max_records,
            MAX_CONTENT_LENGTH=max_body_bytes,
            LOG_FORMAT=log_format,
            PREDICTION_LOG=prediction_log,
            BATCHING=batching,
            BATCH_MAX_WAIT_MS=batch_max_wait_ms,
            BATCH_MAX_RECORDS=batch_max_records,
            REQUEST_TIMEOUT=request_timeout,
            READ_TIMEOUT=read_timeout,
            SETTLE_HEAP=None if "BLACKBOX_SETTLE_HEAP" in os.environ else True,  # its own workers: on, unless told
        )
        _check_exposure(host, settings, insecure_no_auth)
        _check_timeouts(settings, timeout)
        _check_port(host, port)  # before the slow part (vetting), and before gunicorn's retries and "Can't connect"
        if debug:
            from . import create_app

            create_app(config).run(host=host, port=port, debug=True, use_reloader=False, threaded=True)
            return
        _run(config, settings, host, port, workers, threads, timeout)
    finally:
        if metrics_dir and os.getpid() == master:  # forked workers unwind through here too
            shutil.rmtree(metrics_dir, ignore_errors=True)
            _restore(MULTIPROC_ENV, previous)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _config(path: list[str] | None, load: dict[str, Any], **overrides: Any) -> tuple[dict[str, Any], Settings]:
    """The config every worker gets (defaults, then BLACKBOX_* env, then the options given), checked."""
    from flask import Config

    from .config import DEFAULTS, Settings, layer

    config = layer(Config("."), {"ARTIFACT": path, **{k: v for k, v in overrides.items() if v is not None}})
    config["LOAD_OPTIONS"] = {**config["LOAD_OPTIONS"], **{k: v for k, v in load.items() if v is not None}}
    settings = Settings.from_config(config)  # fail here, once, rather than in every worker
    return {key: config[key] for key in DEFAULTS}, settings


def _check_exposure(host: str, settings: Settings, insecure_no_auth: bool) -> None:
    """Refuse to serve beyond this machine without API keys, unless told to."""
    from blackbox import UsageError

    from .auth import load_keys

    if load_keys(settings) or insecure_no_auth or _is_loopback(host):
        return
    raise UsageError(
        f"Refusing to serve on {host} without authentication: anyone who can reach it could use the model. "
        "Pass --api-keys-file (or set BLACKBOX_API_KEYS), bind to 127.0.0.1, or pass --insecure-no-auth."
    )


def _check_timeouts(settings: Settings, timeout: int) -> None:
    """A request must time out (JSON 504) before gunicorn's sync worker is killed for it (HTML 500)."""
    from blackbox import UsageError

    if settings.request_timeout >= timeout:
        raise UsageError(
            f"--request-timeout ({settings.request_timeout:g} s, env BLACKBOX_REQUEST_TIMEOUT) must be below "
            f"--timeout ({timeout} s), gunicorn's worker timeout: lower the first or raise the second."
        )


def _check_port(host: str, port: int) -> None:
    """Bind ``host:port`` once (SO_REUSEADDR, as gunicorn binds) and let go: a port in use is a usage error (exit 2)."""
    import errno
    import socket

    from blackbox import UsageError

    address = host.strip("[]")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is already in use: pass --port with a free port, or stop what listens there."
            ) from None
        reason = exc.strerror or str(exc)
        raise UsageError(f"Cannot bind {host}:{port}: {reason}. Pass another --host or --port.") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def _run(config: dict[str, Any], settings: Settings, host: str, port: int, workers: int | None, threads: int, timeout: int) -> None:
    """Vet each artifact in an isolated child, then start gunicorn; its workers load the vetted copies.

    A model that fails its checks is reported not ready by the workers while the
    others serve; when none passes, the first failure ends the command.
    """
    from blackbox import BlackboxError

    from .gunicorn_app import Server, default_workers, options
    from .holder import Vetted

    master = os.getpid()
    vetted = Vetted(tempfile.mkdtemp(prefix="blackbox-serve-"), settings.load_options, settings.load_timeout)
    try:
        lines: list[str] = []
        failures: list[BlackboxError] = []
        if settings.store is not None:
            for ref in settings.model_refs:
                try:
                    lines.append(_follow_once(settings, ref, vetted))
                except BlackboxError as exc:
                    failures.append(exc)
                    lines.append(f"{ref}: NOT READY, {exc.message}")
        else:
            admitted, unavailable = {}, {}
            for name, path in settings.artifacts.items():
                try:
                    admitted[name] = str(vetted.admit(path))
                    lines.append(_describe(admitted[name]))
                except BlackboxError as exc:
                    failures.append(exc)
                    unavailable[name] = exc.message
                    lines.append(f"{name} ({path}): NOT READY, {exc.message}")
            config["ARTIFACT"], config["UNAVAILABLE"] = admitted, unavailable
        if len(failures) == len(lines):
            raise failures[0]
        workers = workers or default_workers()
        bind = f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"
        for line in lines:
            click.echo(f"blackbox serve: {line}", err=True)
        click.echo(f"blackbox serve: starting {workers} worker(s) x {threads} thread(s) on http://{bind}", err=True)
        server = Server(
            config, options(bind=bind, workers=workers, threads=threads, timeout=timeout),
            vetted=vetted, sources=settings.artifacts,
        )
        server.run()
    finally:
        if os.getpid() == master:  # forked workers unwind through here too
            vetted.remove()


def _describe(path: str) -> str:
    from blackbox.persist import read

    manifest, _ = read(path)
    return f"{manifest.name} {manifest.version} (file sha256 {Path(path).stem[:12]}) verified in an isolated child"


def _follow_once(settings: Settings, ref: str, vetted: Any) -> str:
    """Vet, in a child, what a followed reference names now (or its cached copy when the store is down)."""
    from .follow import Follower
    from .holder import ModelHolder
    from .logs import RequestLog
    from .metrics import Metrics

    follower = Follower(settings, ModelHolder(), Metrics(), RequestLog(settings.log_format), vetted, ref=ref)
    admitted = follower.admit_initial()
    where = f"following {ref} in {settings.store}"
    if admitted is None:
        return f"{where}: the store cannot be reached and nothing is cached yet, so the workers start not ready and retry"
    target, source, refused = admitted
    cached = ""
    if source == "cache":
        why = f"the store's target is refused: {refused}" if refused else "the store cannot be reached"
        cached = f" ({why}; its last good copy from the cache, and the workers keep following)"
    return f"{where}: {target.name} {target.version}{cached} (file sha256 {target.sha256[:12]}) verified in an isolated child"
