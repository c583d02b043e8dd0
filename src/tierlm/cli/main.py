"""``tierlm``: the entry point."""

from __future__ import annotations

import importlib
import sys

import typer

from tierlm import __version__

app = typer.Typer(
    name="tierlm",
    help="A local-first, tiered LLM router: answer close to the data, escalate what needs it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command-group modules; each has register(app). Missing ones (optional parts) are skipped.
_GROUPS = (
    "chat",
    "route",
    "models",
    "serve",
    "eval_cmd",
    "doctor",
    "report",
    "audit",
    "keys",
    "judge",
    "learn",
    "cache",
    "hotpaths",
    "batch",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tierlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """tierlm"""


for _name in _GROUPS:
    try:
        _mod = importlib.import_module(f"tierlm.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"tierlm.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    from tierlm.cli.common import run_app

    sys.exit(run_app(app))
