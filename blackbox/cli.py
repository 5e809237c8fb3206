"""The ``blackbox`` command line. Each command is a thin shell over the public API.

Every error blackbox raises on purpose ends the command with one line on stderr
and the error class's exit code (:class:`~blackbox.errors.ExitCode`); never a
traceback. The library's messages name its parameters (``overwrite=True``);
here each is followed by the flags for the parameters the error names
(``options``), e.g. ``On the command line: --overwrite.``

``serve`` lives with the server (:mod:`serving.cli`) and is imported only when
it runs or help lists it: importing this module loads neither Flask nor ``serving``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib
import importlib.util
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click

from . import persist, scoring, signing, trust
from . import rebuild as rebuild_
from .artifact import Artifact, read_bytes, read_header, read_manifest, unpack
from .containment import environment, isolation
from .containment.imports import pickle_globals
from .errors import AuthenticityError, BlackboxError, ExitCode, SchemaError
from .manifest import Data, FastPath, Git, Manifest, Output
from .signing import TRUSTED_KEYS_ENV
from .store import Pointer, Release, Store
from .store.pointers import resign_command

MAX_EXPIRY_DAYS = 36_500
"""The longest --expires-in: a hundred years (beyond a few million days the date cannot be written)."""


class _Command(click.Command):
    """A command whose blackbox errors end with the flags for the parameters their message names."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BlackboxError as exc:
            flags = [flag for name, value in exc.options.items() if (flag := _flag(self, name, value))]
            if flags:
                exc.message += f"\nOn the command line: {', '.join(flags)}."
            raise


def _flag(command: click.Command, name: str, value: Any) -> str | None:
    """``--on-error skip`` for the parameter ``on_error`` and the value ``skip``; None if the command has no such option."""
    option = next((p for p in command.params if isinstance(p, click.Option) and p.name == name), None)
    if option is None:
        return None
    flag = max(option.opts, key=len)
    return flag if option.is_flag or value is None or isinstance(value, bool) else f"{flag} {value}"


class _Group(click.Group):
    """The commands, and the lazy ones of other packages: imported when run or listed, not with this module."""

    command_class = _Command
    lazy = {"serve": "serving.cli:serve"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(name for name in self.lazy if self._installed(name))})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.lazy or not self._installed(cmd_name):
            return command
        module, _, attribute = self.lazy[cmd_name].partition(":")
        loaded: click.Command = getattr(importlib.import_module(module), attribute)
        self.add_command(loaded)
        return loaded

    def _installed(self, name: str) -> bool:  # blackbox may be installed without its server package
        return importlib.util.find_spec(self.lazy[name].partition(".")[0]) is not None


@click.group(cls=_Group)
@click.version_option(package_name="blackbox")
def cli() -> None:
    """Self-contained, verified artifacts for scikit-learn pipelines."""


def trust_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The load policy options every command that loads an artifact takes."""
    command = click.option(
        "--allow-unsigned", is_flag=True,
        help="Also load unsigned artifacts. Loading one RUNS ITS CODE (by-value code is code; no scan can prove it "
        "harmless): the signature is the only trust boundary. A bad signature is refused regardless.",
    )(command)
    return click.option(
        "--trusted-keys", "trusted_keys", multiple=True, type=click.Path(exists=True), metavar="PATH",
        help=f"Trusted public key (.pub) or directory of them; repeatable. Default: ${TRUSTED_KEYS_ENV}.",
    )(command)


def _keys(trusted_keys: tuple[str, ...]) -> list[str] | None:
    return list(trusted_keys) or None


@cli.command()
@click.argument("path", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@click.option("--imports", is_flag=True, help="List the globals the payload would import, read from its opcodes.")
@click.option("--trusted-keys", "trusted_keys", multiple=True, type=click.Path(exists=True), metavar="PATH",
              help=f"Public keys to check the signature against. Default: ${TRUSTED_KEYS_ENV}.")
@click.option("--require-valid", is_flag=True, help="Exit 4 unless the signature verifies.")
def inspect(path: str, as_json: bool, imports: bool, trusted_keys: tuple[str, ...], require_valid: bool) -> None:
    """Show what an artifact is and who signed it, without unpickling it."""
    manifest, signature = persist.read(path, trusted_keys=_keys(trusted_keys))
    payload_imports = [str(g) for g in pickle_globals(unpack(read_bytes(path)).payload)] if imports else None
    if as_json:
        shown = {**manifest.to_json(), "signature": signature}
        click.echo(json.dumps(shown if payload_imports is None else {**shown, "payload_imports": payload_imports},
                              indent=2, sort_keys=True))
    else:
        click.echo(_summary(manifest, signature, file=_file_digest(path)))
        if payload_imports is not None:
            click.echo("  payload imports\n" + "\n".join(f"    {g}" for g in payload_imports))
    if require_valid and not signature["valid"]:
        raise click.exceptions.Exit(AuthenticityError.exit_code)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=True))
@click.option("--blackbox", "blackbox_spec", metavar="REQUIREMENT",
              help="The requirement line that installs blackbox, e.g. 'blackbox @ git+https://HOST/blackbox@v0.1.0'. "
                   "Default: where this blackbox was installed from (a checkout, a wheel, a commit), or "
                   "blackbox==VERSION if it came from a package index.")
@click.option("-o", "--out", default="-", show_default=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write the file (atomically); - is stdout.")
@trust_options
def requirements(
    path: str, blackbox_spec: str | None, out: str, trusted_keys: tuple[str, ...], allow_unsigned: bool
) -> None:
    """Print a pip requirements file for a server: the exact versions the artifact was saved with, and blackbox.

    Read from the manifest once its signature verifies; nothing is unpickled.
    `blackbox requirements model.bbx -o requirements.txt`, then
    `python3.X -m venv srv && srv/bin/pip install -r requirements.txt`.
    """
    manifest_bytes, block = read_header(path)
    trust.authenticate(Artifact(manifest_bytes, block, b""), _keys(trusted_keys), allow_unsigned=allow_unsigned)
    text = environment.requirements_file(read_manifest(manifest_bytes), blackbox=blackbox_spec)
    with click.open_file(out, "w", atomic=out != "-") as stream:
        stream.write(text)


@cli.command()
@click.option("--out", "directory", required=True, type=click.Path(file_okay=False), help="Directory for the key pair.")
@click.option("--name", default="blackbox", show_default=True, help="File name stem: NAME.key and NAME.pub.")
@click.option("--type", "key_type", type=click.Choice(signing.KEY_TYPES), default="ed25519", show_default=True,
              help="ec-p256: an ECDSA P-256 key, which also signs OpenSSF model signing bundles (sign --oms).")
def keygen(directory: str, name: str, key_type: str) -> None:
    """Create a key pair (Ed25519, or ECDSA P-256) for signing artifacts."""
    private, public = signing.keygen(directory, name, key_type)
    kid = signing.key_id(signing.load_private_key(private).public_key())
    click.echo(f"{key_type} key id {kid}\n  private {private} (keep it secret; sign with --key)\n  public  {public} (give it to servers: --trusted-keys)")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option("--key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Private key from keygen (with --oms: a P-256 key, keygen --type ec-p256).")
@click.option("--expires-in", type=click.IntRange(min=1, max=MAX_EXPIRY_DAYS), default=None, metavar="DAYS",
              help="Make the signature expire after this many days.")
@click.option("--oms", is_flag=True,
              help="Write a detached OpenSSF model signing bundle over the whole file (PATH.sig) instead; the artifact "
                   "is not changed, so sign its header first. Needs blackbox[oms].")
@click.option("--sigstore", is_flag=True, help="With --oms: sign keyless with the CI's ambient OIDC credentials (network).")
@click.option("--oms-bundle", "oms_bundle", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="With --oms: where to write the bundle (default: PATH.sig).")
def sign(path: str, key: str | None, expires_in: int | None, oms: bool, sigstore: bool, oms_bundle: str | None) -> None:
    """Sign an existing artifact in place (replacing any signature), or write an OMS bundle beside it (--oms)."""
    if oms:
        if expires_in:
            raise click.UsageError("--expires-in sets the header signature's expiry; OpenSSF model signing has none.")
        from . import oms as oms_

        bundle = oms_.sign(path, key=key, sigstore=sigstore, bundle=oms_bundle)
        click.echo(f"{path}: OpenSSF model signing bundle {bundle} ({'sigstore' if sigstore else 'key'} mode)")
        return
    if key is None or sigstore or oms_bundle:
        raise click.UsageError("Sign the header with --key KEY; --sigstore and --oms-bundle go with --oms.")
    expires_at = None
    if expires_in:
        expires_at = (dt.datetime.now(dt.UTC) + dt.timedelta(days=expires_in)).strftime("%Y-%m-%dT%H:%M:%SZ")
    claims = persist.sign(path, key, expires_at=expires_at)
    click.echo(f"{path}: signed by key {claims['key_id']}" + (f", expires {expires_at}" if expires_at else ""))


@cli.command()
@click.argument("path", type=click.Path(dir_okay=True))
@click.option("--block", multiple=True, metavar="MODULE",
              help="Top-level module to make unimportable, such as your training package (repeatable); "
                   "by-value modules are always blocked.")
@click.option("--python", "python", default=None, help="Interpreter to load it with (default: this one).")
@click.option("--strict", is_flag=True, help="Refuse any package version that differs from the manifest's.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("--oms-bundle", "oms_bundle", type=click.Path(dir_okay=False, exists=True), default=None, metavar="FILE",
              help="An OpenSSF model signing bundle over the file (by a trusted P-256 key) as the proof instead of "
                   "the header signature; every other check still runs. Needs blackbox[oms].")
@trust_options
def verify(
    path: str, block: tuple[str, ...], python: str | None, strict: bool, as_json: bool, oms_bundle: str | None,
    trusted_keys: tuple[str, ...], allow_unsigned: bool,
) -> None:
    """Load an artifact where its training code cannot be imported, and re-run its golden sample.

    Exit 0 when self-contained; 11 when it needs a module the serving side won't have;
    7 when it loads but predicts differently; 3 when it cannot be read; 4 when its
    signature is missing or not trusted; 5 when its payload is damaged; 6 when this
    environment cannot load it.
    """
    outcome = isolation.verify(
        path, block=block, python=python, strict=strict,
        trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned, oms_bundle=oms_bundle,
    )
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(outcome), indent=2, default=str))
    else:
        head = "self-contained" if outcome.ok else f"FAILED ({outcome.status})"
        click.echo(f"{path}: {head} in {outcome.seconds:.2f} s, with {', '.join(outcome.blocked)} blocked")
        click.echo(f"  {outcome.message}" if outcome.ok else "  " + outcome.message.replace("\n", "\n  "))
    if not outcome.ok:
        raise click.exceptions.Exit(outcome.exit_code)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option("--data", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The training data snapshot (default: the file the recipe recorded).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the rebuilt artifact (default: NAME.rebuilt.bbx beside PATH).")
@click.option("--allow-data-change", is_flag=True, help="Rebuild even if the data's sha256 differs from the recorded one.")
@click.option("--signing-key", type=click.Path(dir_okay=False, exists=True), default=None, metavar="KEY",
              help=f"Private key to sign the rebuilt artifact with (blackbox keygen). Default: ${signing.SIGNING_KEY_ENV}; "
                   "without either the rebuild is refused, unless --allow-unsigned.")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Where to write the JSON report, in every outcome (default: the rebuilt artifact's path + .report.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@trust_options
def rebuild(
    path: str, data: str | None, out: str | None, allow_data_change: bool, signing_key: str | None,
    report: str | None, as_json: bool, trusted_keys: tuple[str, ...], allow_unsigned: bool,
) -> None:
    """Train the model again from the recipe recorded in its artifact, sign the result, and compare.

    Exit 0 when reproduced (same CV score, same golden predictions), 12 when it drifted,
    13 when the rebuild failed or was refused (no signing key, changed data snapshot);
    nothing is written at --out then, but the report is. 4 when PATH's signature is not trusted.
    """
    try:
        result = rebuild_.rebuild(
            path, data=data, out=out, report=report, allow_data_change=allow_data_change, signing_key=signing_key,
            trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned,
        )
    except BlackboxError as exc:
        exc.message += f"\nThe report is in {rebuild_.output_paths(path, out, report)[1]}."
        raise
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else rebuild_.format_report(result))
    if result.exit_code:
        raise click.exceptions.Exit(result.exit_code)


@cli.command("export")
@click.argument("artifact", type=click.Path(dir_okay=False, exists=True))
@click.option("--mlflow", "mlflow_dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Write an MLflow pyfunc model directory (new) that loads the signed artifact through blackbox.load.")
@click.option("--trusted-keys", "trusted_keys", multiple=True, type=click.Path(exists=True), metavar="PATH",
              help=f"Public keys the artifact must verify with before it is exported. Default: ${TRUSTED_KEYS_ENV}.")
@click.option("--embed-trusted-keys", is_flag=True,
              help=f"Copy the signer's public key into DIR, trusted where the server's ${TRUSTED_KEYS_ENV} is unset "
                   "(then whoever can write the registry can swap both).")
@click.option("--blackbox", "blackbox_spec", metavar="REQUIREMENT", default=None,
              help="The requirement line that installs blackbox (default: as `blackbox requirements`).")
def export(
    artifact: str, mlflow_dir: str, trusted_keys: tuple[str, ...], embed_trusted_keys: bool, blackbox_spec: str | None,
) -> None:
    """Export a verified artifact for MLflow: a pyfunc model directory for a registry and `mlflow models serve`.

    Plain files (mlflow is not needed here). At load, MLflow's side verifies the artifact with
    its own BLACKBOX_TRUSTED_KEYS, as every blackbox loader does.
    """
    from .mlflow_export import export as export_mlflow

    out = export_mlflow(artifact, mlflow_dir, trusted_keys=_keys(trusted_keys), embed_trusted_keys=embed_trusted_keys,
                        blackbox=blackbox_spec)
    click.echo(f"{out}: MLflow pyfunc model of {artifact} (mlflow.pyfunc.load_model({str(out)!r}))")


def _file_digest(path: str) -> tuple[int, str] | None:
    """The size and sha256 of the whole artifact file (what sha256sum and a store record say); None for a directory."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()


def _summary(m: Manifest, sig: dict[str, Any], *, file: tuple[int, str] | None = None) -> str:
    """What inspect prints, from the typed manifest and the signature's status (:func:`blackbox.persist.read`).

    Two hashes, named apart: the payload's (``payload_sha256``, bound by the manifest, what a
    loaded model, the server and the prediction log say) and ``file``'s (``file_sha256``,
    the whole file, what sha256sum, ``push`` and ``list`` say).
    """
    search = m.metric_group("search")
    git, data, output = m.git or Git(), m.data or Data(), m.output or Output()
    signer = (f"key {sig.get('key_id')}, signed {sig.get('signed_at')}" if sig["signed"] else "unsigned") + (
        ", verified" if sig["valid"] else f", NOT verified: {sig.get('reason')}"
    )
    lines = [
        f"{m.name} {m.version}  (created {m.created_at}, format {m.format_version})",
        f"  signature     {signer}",
        f"  estimator     {m.estimator}",
        f"  serializer    {m.serializer.name} {'?' if 'version' in m.serializer.absent else m.serializer.version}, "
        f"Python {m.python.version}",
        f"  payload       {m.payload.size} bytes, payload_sha256 {m.payload.sha256}",
        *([f"  file          {file[0]} bytes, file_sha256 {file[1]}"] if file else []),
        f"  by value      {', '.join(map(str, m.by_value or [])) or '-'}",
        f"  requires      {', '.join(f'{k}=={v}' for k, v in (m.requirements or {}).items())}",
        f"  git           {git.commit or '-'} ({git.branch or '-'}{', dirty' if git.dirty else ''})",
        f"  data          {'-' if 'rows' in data.absent or m.data is None else data.rows} rows from {data.source or '-'}, "
        f"{'-' if 'fingerprint' in data.absent or m.data is None else data.fingerprint}",
        f"  inputs        {', '.join(map(str, _inputs(m.schema)))}",
        f"  output        {output.kind} {output.classes or ''}",
    ]
    if isinstance(search, dict) and search:
        lines.append(
            f"  cv {_scoring(search.get('scoring'), output.kind)}  {_number(search.get('best_score'))} ± "
            f"{_number(search.get('best_score_std'))}  best {json.dumps(search.get('best_params'))}"
        )
    for group, values in (m.metrics or {}).items():
        if group != "search" and isinstance(values, dict):
            lines.append(f"  {group:<13} " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
    lines.append(f"  golden sample {len(m.golden.records)} rows")
    lines += _fast_path_lines(m.fast_path)
    return "\n".join(lines)


def _scoring(scoring: Any, kind: Any) -> str:
    """The search's scorer by name; a search without ``scoring`` used the estimator's own ``score``
    (recorded as None, or "None" by artifacts saved before): accuracy for a classifier, R² for a regressor."""
    if scoring not in (None, "None"):
        return str(scoring)
    return {"classification": "default (accuracy)", "regression": "default (r2)"}.get(kind, "default (the estimator's score)")


def _fast_path_lines(record: FastPath | None) -> list[str]:
    """The fast path's plan as save recorded it: on or off (why), each step's mode, the speed-up measured then."""
    if record is None:
        return ["  fast path     none (saved before blackbox had one)"]
    if not record.enabled:
        return [f"  fast path     off: {record.reason}"]
    steps = record.steps or []
    counts = {mode: sum(s.get("mode") == mode for s in steps) for mode in ("compiled", "called", "reference")}
    speed = record.speedup or {}
    lines = [f"  fast path     on: {counts['compiled']} compiled, {counts['called']} called as they are, "
             f"{counts['reference']} fallback(s); at save {speed.get('ratio')}x faster per record "
             f"({speed.get('plan_us')} us vs {speed.get('reference_us')} us)"]
    for step in steps:
        reason = f": {step['reason']}" if step.get("reason") else ""
        lines.append(f"    {step.get('mode', '?'):<9} {step.get('path')} ({step.get('step')}){reason}")
    return lines


def _inputs(schema: Mapping[str, Any]) -> list[Any]:
    columns = schema.get("columns")
    if isinstance(columns, list):
        return columns
    fields = schema.get("fields")
    return [f.get("name") for f in fields if isinstance(f, dict)] if isinstance(fields, list) else []


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


@cli.command()
@click.argument("artifact", type=click.Path(dir_okay=False, exists=True))
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the predictions; the output format comes from its extension (.csv, .parquet, "
              ".jsonl; other extensions: the input's format).")
@click.option("--input-format", "input_format", type=click.Choice(["csv", "parquet", "jsonl"]), default=None,
              help="The INPUT's format (default: from its extension); the output format comes from -o's extension.")
@click.option("--format", "deprecated_format", type=click.Choice(["csv", "parquet", "jsonl"]), default=None, hidden=True,
              help="Deprecated spelling of --input-format (it never set the output format).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=scoring.DEFAULT_CHUNK_ROWS, show_default=True,
              metavar="ROWS", help="Rows per chunk; memory grows with this, not with the input.")
@click.option("--id-column", default=None, metavar="NAME", help="Input column copied to the output and the rejects file.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="On an invalid row: stop and write nothing (exit 9), or list it in the rejects file and go on (exit 10).")
@click.option("--rejects", type=click.Path(dir_okay=False), default=None,
              help="Where invalid rows are listed (CSV), written only when a row is rejected. "
              "Default: OUTPUT_STEM.rejects.csv beside the output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output and rejects file.")
@click.option("--no-probabilities", is_flag=True, help="Leave out the proba_<class> columns (less model work).")
@click.option("--no-fast-path", is_flag=True, help="Score through the estimator itself, not the artifact's fast path.")
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="Score in this process, or on Dask workers (pip install 'blackbox[dask]').")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler (with --engine dask); default: a local cluster of worker processes.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Local worker processes scoring chunks side by side, each loading the artifact once (up to the cores).")
@trust_options
def score(
    artifact: str, input_path: str, output: str, input_format: str | None, chunk_size: int, id_column: str | None,
    on_error: str, rejects: str | None, overwrite: bool, no_probabilities: bool, engine: str, scheduler: str | None,
    jobs: int, trusted_keys: tuple[str, ...], allow_unsigned: bool, no_fast_path: bool, deprecated_format: str | None,
) -> None:
    """Score a CSV, Parquet or JSON Lines file in bounded memory; publish the output atomically.

    Exit 0 when every row was scored; 10 when some rows were rejected (--on-error skip),
    by the schema or by the model; 9 when the input cannot be read or scored (a missing
    column, an invalid row with --on-error fail); 14 when the model fails on every row of
    a chunk; 2 for a usage error such as an existing output; 3, 4, 5, 6, 7 (its self-test)
    or 11 when the artifact is refused, as for every command that loads one.
    """
    if deprecated_format is not None:
        click.echo("warning: --format is deprecated and sets the INPUT format; use --input-format "
                   "(the output format comes from -o's extension).", err=True)
        if input_format is not None and input_format != deprecated_format:
            raise click.UsageError(f"--format {deprecated_format} contradicts --input-format {input_format}; pass only --input-format.")
        input_format = deprecated_format
    summary = scoring.score(
        artifact, input_path, output, input_format=input_format, chunk_size=chunk_size, id_column=id_column,
        rejects=rejects, on_error=on_error, overwrite=overwrite, engine=engine, scheduler=scheduler, jobs=jobs,
        trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned, probabilities=not no_probabilities, progress=True,
        fast_path=not no_fast_path,
    )
    click.echo(summary.describe())
    if summary.exit_code:
        raise click.exceptions.Exit(summary.exit_code)


# ---------------------------------------------------------------- model store (blackbox.store)

store_argument = click.argument("store", metavar="STORE")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
pointer_expiry_option = click.option(
    "--expires-in", type=click.IntRange(min=1, max=MAX_EXPIRY_DAYS), default=None, metavar="DAYS",
    help="Readers refuse the signed pointer after DAYS days (a frozen store cannot serve it forever); default: never.")


signing_key_option = click.option(
    "--signing-key", type=click.Path(dir_okay=False, exists=True), default=None, metavar="KEY",
    help=f"Private key (blackbox keygen) that signs the alias pointer this writes. Default: ${signing.SIGNING_KEY_ENV}.",
)


def _show(release: Release, as_json: bool, text: str) -> None:
    click.echo(json.dumps(_release_json(release), indent=2, sort_keys=True) if as_json else text)


def _release_json(release: Release) -> dict[str, Any]:
    """A release as JSON: its record, whose ``sha256`` is the whole file's, also named ``file_sha256``."""
    return {**release.to_dict(), "file_sha256": release.sha256}


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@store_argument
@json_option
@signing_key_option
@trust_options
def push(
    path: str, store: str, as_json: bool, signing_key: str | None, trusted_keys: tuple[str, ...], allow_unsigned: bool
) -> None:
    """Verify an artifact and publish it in STORE (a directory or s3://bucket/prefix) as NAME/VERSION.

    NAME and VERSION come from its manifest. Versions are immutable: the same bytes
    again are a no-op, other bytes under an existing version are refused (exit 8).
    NAME@latest moves to the highest version, in a pointer signed with --signing-key
    (without a key, exit 2; with --allow-unsigned the pointer is written unsigned).
    """
    release = Store.open(store).push(
        path, trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned, signing_key=signing_key
    )
    _show(release, as_json, f"{release.ref} is in {store}  file_sha256 {release.sha256}  key {release.key_id or 'unsigned'}")


@cli.command("list")
@store_argument
@click.argument("name", required=False)
@json_option
@trust_options
def list_releases(
    store: str, name: str | None, as_json: bool, trusted_keys: tuple[str, ...], allow_unsigned: bool
) -> None:
    """List the releases in STORE (of NAME only, if given) in version order, with their aliases.

    Each alias shows its pointer's expiry, if it has one. An alias whose pointer expired
    is shown as EXPIRED, with how to re-sign it (readers refuse it until then); one whose
    pointer does not verify with the trusted keys is left out, with a warning.
    """
    releases = Store.open(store).list(name, trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned)
    if as_json:
        click.echo(json.dumps([_release_json(r) for r in releases], indent=2, sort_keys=True))
    else:
        rows = [("NAME", "VERSION", "CREATED", "FILE_SHA256", "KEY", "ALIASES", "METRICS")] + [
            (r.name, r.version, r.created_at or "-", r.sha256[:12], r.key_id or "unsigned",
             ",".join(map(_alias_text, r.alias_pointers)) or "-", _metrics_text(r.metrics))
            for r in releases
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    for r in releases:
        for p in r.alias_pointers:
            if p.expired:
                click.echo(
                    f"{r.name}@{p.alias} (version {r.version}) expired at {p.expires_at}: readers refuse it (pull, "
                    f"serve; what already serves stays). Re-sign it: "
                    f"{resign_command(r.name, p.alias, store=store, version=r.version)}", err=as_json,
                )


def _alias_text(pointer: Pointer) -> str:
    if pointer.expires_at is None:
        return pointer.alias
    return f"{pointer.alias} ({'EXPIRED' if pointer.expired else 'expires'} {pointer.expires_at})"


def _metrics_text(metrics: dict[str, Any]) -> str:
    search = metrics.get("search") or {}
    parts = [f"cv {search['best_score']:.4f}"] if isinstance(search.get("best_score"), float) else []
    for group, values in metrics.items():
        if group != "search" and isinstance(values, dict):
            parts += [f"{group}.{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)]
    return ", ".join(parts) or "-"


@cli.command()
@store_argument
@click.argument("name")
@click.argument("version")
@click.option("--alias", required=True, help="The alias to move, e.g. production or staging.")
@click.option("--allow-downgrade", is_flag=True,
              help="Allow moving the alias to an older version; the pointer then says it is a rollback.")
@pointer_expiry_option
@json_option
@signing_key_option
@trust_options
def promote(
    store: str, name: str, version: str, alias: str, allow_downgrade: bool, expires_in: int | None, as_json: bool,
    signing_key: str | None, trusted_keys: tuple[str, ...], allow_unsigned: bool,
) -> None:
    """Point NAME@ALIAS at VERSION, after verifying its artifact (the old target is kept for rollback).

    The pointer is signed with --signing-key; an older VERSION than the alias names is
    refused (exit 8) unless --allow-downgrade. With --expires-in, readers refuse the
    pointer after that many days: promote the same VERSION again before then to re-sign it.
    """
    release = Store.open(store).promote(
        name, version, alias, trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned,
        signing_key=signing_key, allow_downgrade=allow_downgrade, expires_in=_days(expires_in),
    )
    _show(release, as_json, f"{name}@{alias} -> {release.version} in {store}  file_sha256 {release.sha256}"
          + _expiring(expires_in))


@cli.command()
@store_argument
@click.argument("name")
@click.option("--alias", required=True, help="The alias to move back to its previous target.")
@pointer_expiry_option
@json_option
@signing_key_option
@trust_options
def rollback(
    store: str, name: str, alias: str, expires_in: int | None, as_json: bool, signing_key: str | None,
    trusted_keys: tuple[str, ...], allow_unsigned: bool,
) -> None:
    """Point NAME@ALIAS back at its previous target (verified); exit 8 if it has none.

    The new pointer is signed with --signing-key and says it is a rollback, which servers following the alias accept.
    """
    release = Store.open(store).rollback(
        name, alias, trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned, signing_key=signing_key,
        expires_in=_days(expires_in),
    )
    _show(release, as_json, f"{name}@{alias} rolled back to {release.version} in {store}  file_sha256 {release.sha256}"
          + _expiring(expires_in))


def _days(days: int | None) -> dt.timedelta | None:
    return None if days is None else dt.timedelta(days=days)


def _expiring(days: int | None) -> str:
    return f"  (the pointer expires in {days} days: promote it again before then)" if days else ""


@cli.command()
@store_argument
@click.argument("ref", metavar="NAME[@ALIAS|@VERSION]")
@click.option("-o", "--out", "dest", required=True, type=click.Path(), help="File (or directory) to write.")
@trust_options
def pull(store: str, ref: str, dest: str, trusted_keys: tuple[str, ...], allow_unsigned: bool) -> None:
    """Download a release from STORE, verify it, and write it atomically (NAME alone means NAME@latest).

    An alias's pointer must verify with the trusted keys (unsigned: only with --allow-unsigned).
    """
    path = Store.open(store).pull(ref, dest, trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned)
    manifest, _ = persist.read(path, trusted_keys=_keys(trusted_keys))
    click.echo(f"{path}: {manifest.name}@{manifest.version} from {store}, verified")


@cli.command()
@store_argument
@click.option("--older-than", type=click.FloatRange(min=0), default=3600, show_default=True, metavar="SECONDS",
              help="Only remove leftovers at least this old (younger ones may be uploads in flight).")
def gc(store: str, older_than: float) -> None:
    """Remove what interrupted pushes and promotes left in STORE: temporary files, unfinished S3 multipart uploads."""
    removed = Store.open(store).gc(older_than)
    click.echo("\n".join(removed) if removed else f"{store}: nothing to remove")


# ---------------------------------------------------------------- prediction log (blackbox.monitoring.predlog)

def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time; e.g. 2026-01-31 or 2026-01-31T12:00:00Z (naive: UTC).") from None


@cli.command("export-log")
@click.argument("database", metavar="DB")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The training set: .parquet or .csv.")
@click.option("--since", callback=_moment, metavar="ISO", help="Only predictions at or after this time (naive: UTC).")
@click.option("--until", callback=_moment, metavar="ISO", help="Only predictions before this time.")
@click.option("--with-feedback", is_flag=True, help="Add each record's latest label (and its time) from POST /feedback.")
@click.option("--labelled-only", is_flag=True, help="Only records that have a label (implies --with-feedback).")
def export_log(
    database: str, output: str, since: dt.datetime | None, until: dt.datetime | None, with_feedback: bool, labelled_only: bool,
) -> None:
    """Write the prediction log at DB (a SQLAlchemy URL or SQLite file) as a training set, atomically.

    One row per logged record: request_id, row, ts, model_version, the input fields, the
    prediction, and with feedback the label and label_ts.
    """
    from .monitoring import predlog  # SQLAlchemy: imported by the commands that use it, not by every command

    rows = predlog.export_log(database, output, since=since, until=until, with_feedback=with_feedback, labelled_only=labelled_only)
    click.echo(f"{output}: {rows} rows from {predlog.database_url(database).render_as_string(hide_password=True)}")


@cli.command("drift")
@click.argument("artifact", type=click.Path(dir_okay=False, exists=True))
@click.argument("database", metavar="DB")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Where to write the HTML report.")
@click.option("--since", callback=_moment, metavar="ISO", help="Only predictions at or after this time (naive: UTC).")
@click.option("--until", callback=_moment, metavar="ISO", help="Only predictions before this time.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-feature numbers as JSON.")
@click.option("--all-versions", is_flag=True,
              help="Count the records of every version with the artifact's name, not only this artifact's (its payload sha256).")
@trust_options
def drift(
    artifact: str, database: str, output: str | None, since: dt.datetime | None, until: dt.datetime | None, as_json: bool,
    all_versions: bool, trusted_keys: tuple[str, ...], allow_unsigned: bool,
) -> None:
    """Compare the inputs logged at DB for this artifact with its training data; write an HTML report.

    The log's records are this artifact's: those whose payload sha256 is its own
    (--all-versions: every version of its name). The artifact is read, never unpickled
    (its signature is checked as for every command). Exit 9 when the log has no such
    records in the period; 2 without -o or --json.
    """
    from .monitoring import predlog
    from .monitoring.drift import worst
    from .monitoring.report import compare_live, drift_report

    if output is None and not as_json:
        raise click.UsageError("Say where the report goes (-o report.html), or ask for --json.")
    manifest, signature = persist.read(artifact, trusted_keys=_keys(trusted_keys))
    if not signature["valid"] and not (allow_unsigned and not signature["signed"]):
        raise AuthenticityError(f"{artifact}: {signature.get('reason')}; pass --trusted-keys (or --allow-unsigned "
                                "for an unsigned artifact) to read its training profile.")
    sha256 = manifest.payload.sha256
    live = predlog.read_log(database, since=since, until=until, with_feedback=True, model_name=manifest.name,
                            model_sha256=None if all_versions else sha256)
    which = f"any version of {manifest.name}" if all_versions else (
        f"{manifest.name} {manifest.version} (payload sha256 {sha256[:12]})")
    if live.empty:
        span = f"from {since or 'the start'} until {until or 'now'}"
        other = "" if all_versions else "; --all-versions counts every version of the name"
        raise SchemaError(f"The log at {database} has no predictions of {which} {span}; widen --since/--until, "
                          f"or check that the server logs with --prediction-log{other}.")
    features = compare_live(manifest, live)
    if output is not None:
        period = (since.isoformat() if since else None, until.isoformat() if until else None)
        path = drift_report(manifest, live, output, period=period, features=features, all_versions=all_versions)
        click.echo(f"{path}: {len(live)} records of {which}, drift {worst(features) or 'not measurable'}", err=as_json)
    if as_json:
        model = {"name": manifest.name, "version": manifest.version, "payload_sha256": sha256,
                 "all_versions": all_versions}
        click.echo(json.dumps({"model": model, "records": len(live), "status": worst(features), "features": features},
                              indent=2))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting (tests pass argv).

    SIGTERM (a ``timeout``, systemd, a cancelled job) unwinds like Ctrl-C does, so
    temporary files are removed and worker processes stopped; the process exits 143.
    """
    with _terminated_unwinds():
        try:
            code = cli.main(args=argv, prog_name="blackbox", standalone_mode=False)
        except BlackboxError as exc:
            click.echo(f"blackbox: {exc.message}", err=True)
            return exc.exit_code
        except click.ClickException as exc:
            exc.show()
            return ExitCode.USAGE
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            return ExitCode.INTERRUPTED
    return code if isinstance(code, int) else ExitCode.OK


@contextlib.contextmanager
def _terminated_unwinds() -> Iterator[None]:
    """While the CLI runs in the main thread: SIGTERM raises SystemExit(143) (Python's default kills at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

