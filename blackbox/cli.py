"""The ``blackbox`` command line. Each command is a thin shell over the public API.

Every error blackbox raises on purpose ends the command with one line on stderr
and the error class's exit code (see blackbox.errors); never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

from . import isolation, persist
from .artifact import read_bytes, unpack
from .errors import BlackboxError
from .imports import pickle_globals
from .isolation import DEFAULT_BLOCK


@click.group()
@click.version_option(package_name="blackbox")
def cli() -> None:
    """Self-contained, verified artifacts for scikit-learn pipelines."""


@cli.command()
@click.argument("path", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@click.option("--imports", is_flag=True, help="List the globals the payload would import, read from its opcodes.")
def inspect(path: str, as_json: bool, imports: bool) -> None:
    """Show what an artifact is, without unpickling it."""
    manifest = persist.inspect(path)
    if imports:
        manifest = {**manifest, "payload_imports": [str(g) for g in pickle_globals(unpack(read_bytes(path)).payload)]}
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        click.echo(_summary(manifest))


@cli.command()
@click.argument("path", type=click.Path(dir_okay=True))
@click.option("--block", multiple=True, default=DEFAULT_BLOCK, show_default=True, metavar="MODULE",
              help="Top-level module to make unimportable (repeatable); by-value modules are always blocked.")
@click.option("--python", "python", default=None, help="Interpreter to load it with (default: this one).")
@click.option("--strict", is_flag=True, help="Refuse any package version that differs from the manifest's.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def verify(path: str, block: tuple[str, ...], python: str | None, strict: bool, as_json: bool) -> None:
    """Load an artifact where its training code cannot be imported, and re-run its golden sample.

    Exit 0 when self-contained; 11 when it needs a module the serving side won't have;
    7 when it loads but predicts differently; 3 when it cannot be read.
    """
    outcome = isolation.verify(path, block=block, python=python, strict=strict)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(outcome), indent=2, default=str))
    else:
        head = "self-contained" if outcome.ok else f"FAILED ({outcome.status})"
        click.echo(f"{path}: {head} in {outcome.seconds:.2f} s, with {', '.join(outcome.blocked)} blocked")
        click.echo(f"  {outcome.message}" if outcome.ok else "  " + outcome.message.replace("\n", "\n  "))
    if not outcome.ok:
        raise click.exceptions.Exit(outcome.exit_code)


def _summary(m: dict[str, Any]) -> str:
    search = (m.get("metrics") or {}).get("search") or {}
    git = m.get("git") or {}
    data = m.get("data") or {}
    output = m.get("output") or {}
    lines = [
        f"{m['name']} {m['version']}  (created {m.get('created_at')}, format {m['format_version']})",
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

