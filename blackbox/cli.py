"""The ``blackbox`` command line. Each command is a thin shell over the public API.

Every error blackbox raises on purpose ends the command with one line on stderr
and the error class's exit code (see blackbox.errors); never a traceback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import isolation, persist, signing
from . import rebuild as rebuild_
from .atomic import atomic_write
from .artifact import read_bytes, unpack
from .errors import AuthenticityError, BlackboxError
from .imports import pickle_globals
from .isolation import DEFAULT_BLOCK
from .signing import TRUSTED_KEYS_ENV


@click.group()
@click.version_option(package_name="blackbox")
def cli() -> None:
    """Self-contained, verified artifacts for scikit-learn pipelines."""


def trust_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The load policy options every command that loads an artifact takes."""
    command = click.option(
        "--allow-unsigned", is_flag=True,
        help="Also load unsigned artifacts (logged loudly). A bad signature is refused regardless.",
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
    manifest = persist.inspect(path, trusted_keys=_keys(trusted_keys))
    if imports:
        manifest = {**manifest, "payload_imports": [str(g) for g in pickle_globals(unpack(read_bytes(path)).payload)]}
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        click.echo(_summary(manifest))
        if imports:
            click.echo("  payload imports\n" + "\n".join(f"    {g}" for g in manifest["payload_imports"]))
    if require_valid and not manifest["signature"]["valid"]:
        raise click.exceptions.Exit(AuthenticityError.exit_code)


@cli.command()
@click.option("--out", "directory", required=True, type=click.Path(file_okay=False), help="Directory for the key pair.")
@click.option("--name", default="blackbox", show_default=True, help="File name stem: NAME.key and NAME.pub.")
def keygen(directory: str, name: str) -> None:
    """Create an Ed25519 key pair for signing artifacts."""
    private, public = signing.keygen(directory, name)
    kid = signing.key_id(signing.load_private_key(private).public_key())
    click.echo(f"key id {kid}\n  private {private} (keep it secret; sign with --key)\n  public  {public} (give it to servers: --trusted-keys)")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option("--key", required=True, type=click.Path(dir_okay=False, exists=True), help="Private key from keygen.")
@click.option("--expires-in", type=click.IntRange(min=1), default=None, metavar="DAYS",
              help="Make the signature expire after this many days.")
def sign(path: str, key: str, expires_in: int | None) -> None:
    """Sign an existing artifact in place (replacing any signature)."""
    expires_at = None
    if expires_in:
        expires_at = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=expires_in)).strftime("%Y-%m-%dT%H:%M:%SZ")
    claims = persist.sign(path, key, expires_at=expires_at)
    click.echo(f"{path}: signed by key {claims['key_id']}" + (f", expires {expires_at}" if expires_at else ""))


@cli.command()
@click.argument("path", type=click.Path(dir_okay=True))
@click.option("--block", multiple=True, default=DEFAULT_BLOCK, show_default=True, metavar="MODULE",
              help="Top-level module to make unimportable (repeatable); by-value modules are always blocked.")
@click.option("--python", "python", default=None, help="Interpreter to load it with (default: this one).")
@click.option("--strict", is_flag=True, help="Refuse any package version that differs from the manifest's.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@trust_options
def verify(
    path: str, block: tuple[str, ...], python: str | None, strict: bool, as_json: bool,
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
        trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned,
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
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Where to write the JSON report (default: the rebuilt artifact's path + .report.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@trust_options
def rebuild(
    path: str, data: str | None, out: str | None, allow_data_change: bool, report: str | None, as_json: bool,
    trusted_keys: tuple[str, ...], allow_unsigned: bool,
) -> None:
    """Train the model again from the recipe recorded in its artifact, and compare.

    Exit 0 when reproduced (same CV score, same golden predictions), 12 when it drifted,
    13 when the rebuild failed or its data snapshot changed.
    """
    result = rebuild_.rebuild(
        path, data=data, out=out, allow_data_change=allow_data_change,
        trusted_keys=_keys(trusted_keys), allow_unsigned=allow_unsigned,
    )
    report_path = Path(report or f"{result.rebuilt}.report.json")
    atomic_write(report_path, json.dumps(result.to_dict(), indent=2).encode())
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else rebuild_.format_report(result))
    if not as_json:
        click.echo(f"  report        {report_path}")
    if result.exit_code:
        raise click.exceptions.Exit(result.exit_code)


def _summary(m: dict[str, Any]) -> str:
    search = (m.get("metrics") or {}).get("search") or {}
    git = m.get("git") or {}
    data = m.get("data") or {}
    output = m.get("output") or {}
    sig = m["signature"]
    signer = (f"key {sig.get('key_id')}, signed {sig.get('signed_at')}" if sig["signed"] else "unsigned") + (
        ", verified" if sig["valid"] else f", NOT verified: {sig.get('reason')}"
    )
    lines = [
        f"{m['name']} {m['version']}  (created {m.get('created_at')}, format {m['format_version']})",
        f"  signature     {signer}",
        f"  estimator     {m.get('estimator')}",
        f"  serializer    {m['serializer']['name']} {m['serializer']['version']}, Python {m['python']['version']}",
        f"  payload       {m['payload']['size']} bytes, sha256 {m['payload']['sha256']}",
        f"  by value      {', '.join(m.get('by_value') or []) or '-'}",
        f"  requires      {', '.join(f'{k}=={v}' for k, v in (m.get('requirements') or {}).items())}",
        f"  git           {git.get('commit') or '-'} ({git.get('branch') or '-'}{', dirty' if git.get('dirty') else ''})",
        f"  data          {data.get('rows', '-')} rows from {data.get('source') or '-'}, {data.get('fingerprint', '-')}",
        f"  inputs        {', '.join(m['schema'].get('columns', [f['name'] for f in m['schema'].get('fields', [])]))}",
        f"  output        {output.get('kind')} {output.get('classes') or ''}",
    ]
    if search:
        lines.append(
            f"  cv {search.get('scoring') or 'score'}  {search.get('best_score'):.4f} ± {search.get('best_score_std'):.4f}"
            f"  best {json.dumps(search.get('best_params'))}"
        )
    for group, values in (m.get("metrics") or {}).items():
        if group != "search" and isinstance(values, dict):
            lines.append(f"  {group:<13} " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
    lines.append(f"  golden sample {len((m.get('golden') or {}).get('records', []))} rows")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting (tests pass argv)."""
    try:
        code = cli.main(args=argv, prog_name="blackbox", standalone_mode=False)
    except BlackboxError as exc:
        click.echo(f"blackbox: {exc.message}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    return code if isinstance(code, int) else 0

