"""Shared CLI plumbing: loading settings from options, and errors as clear messages."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer

if TYPE_CHECKING:
    from tierlm.config.settings import Settings

CONFIG_HELP = "YAML config file (default: $TIERLM_CONFIG, else the preset)."
PRESET_HELP = "Deployment preset: edge-only, air-gapped, budget, full-stack."


def load(config: Path | None, preset: str | None, **overrides: Any) -> Settings:
    from tierlm.config import load_settings

    return load_settings(config, preset=preset, overrides=overrides or None)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; return the Exit to raise."""
    _print_error(message)
    return typer.Exit(code)


def run_app(app: typer.Typer) -> int:
    """Run the CLI; turn tierlm errors into a one-line message, never a traceback."""
    from tierlm.errors import TierlmError

    try:
        rc = app(standalone_mode=False)  # click returns an Exit's code instead of raising
    except TierlmError as e:
        _print_error(str(e))
        return 2 if type(e).__name__ in ("ConfigError", "InvalidRequest") else 1
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 130
        raise
    return rc if isinstance(rc, int) else 0


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(
        f"[bold red]error:[/] {escape(message)}", soft_wrap=True
    )


def open_text(path: str) -> TextIO:
    """``path`` opened for reading (``-``: stdin); a clear exit 2 when it cannot be read."""
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8", errors="replace")
    except OSError as e:
        raise fail(f"cannot read {path}: {e.strerror}", 2) from None
