"""``tierlm keys``: API keys for ``tierlm serve``.

``tierlm keys hash`` reads a key from stdin (or makes a new one with ``--generate``, or when
stdin is a terminal) and prints the sha256 hex digest to put in ``server.api_keys[].hash``.
Only the digest goes into the config; the key itself is shown once and never stored.
"""

from __future__ import annotations

import hashlib
import secrets
import sys

import typer


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="API keys for `tierlm serve`.", no_args_is_help=True)
    keys.command("hash")(hash_key)
    app.add_typer(keys, name="keys")


def hash_key(
    generate: bool = typer.Option(
        False, "--generate", "-g", help="Make a new random key instead of reading one."
    ),
    name: str = typer.Option("my-key", "--name", help="Key name for the printed config."),
) -> None:
    """Print the sha256 of a key (read from stdin, or newly generated) for the config."""
    if generate or sys.stdin.isatty():
        key = "tlm-" + secrets.token_urlsafe(32)
        typer.echo(f"key (shown once, give it to the client): {key}", err=True)
    else:
        key = sys.stdin.read().strip()
        if not key:
            typer.echo("error: no key on stdin", err=True)
            raise typer.Exit(2)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    if generate or sys.stdin.isatty():
        typer.echo(f"server:\n  api_keys:\n    - name: {name}\n      hash: {digest}", err=True)
    typer.echo(digest)
