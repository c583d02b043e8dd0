"""Shared CLI plumbing: loading settings from options, and the CLI's one error path.

Every user error ends the same way: one line on stderr, ``error: <what> (<hint>)``, and exit
status 2, never a traceback. That covers unknown commands and options and bad option values
(click's usage errors), configuration errors, and invalid values found while building a
request (pydantic's validation errors, reported with the field, the value and what is
allowed). Other tierlm errors (a backend down, a model missing) are one line too, status 1.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import typer

if TYPE_CHECKING:
    from tierlm.config.settings import Settings

CONFIG_HELP = "YAML config file (default: $TIERLM_CONFIG, else the preset)."
PRESET_HELP = "Deployment preset: edge-only, air-gapped, budget, full-stack."
# tierlm.types.Privacy's values (a test keeps them equal), here so that --help stays fast;
# as an option's type, typer turns any other value into a usage error that lists these
PrivacyLevel = Literal["public", "enhanced", "private"]
PRIVACY_HELP = "public, enhanced or private."


def load(config: Path | None, preset: str | None, **overrides: Any) -> Settings:
    from tierlm.config import load_settings

    return load_settings(config, preset=preset, overrides=overrides or None)


def period(since: str) -> timedelta:
    """``--since`` (30d, 12h, 2w, ... or 'all') as a span; a bad value exits 2 with one line."""
    from tierlm.ledger.reports import parse_since

    try:
        return parse_since(since)
    except ValueError as e:
        raise fail(str(e), 2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; return the Exit to raise."""
    _print_error(message)
    return typer.Exit(code)


def run_app(app: typer.Typer) -> int:
    """Run the CLI; every error becomes one line (see the module doc), never a traceback."""
    from tierlm.errors import TierlmError

    click = _click_exceptions()
    try:
        rc = app(standalone_mode=False)  # click returns an Exit's code instead of raising
    except TierlmError as e:
        advice = local_advice(e)
        _print_error(f"{e} (do one of: {advice})" if advice else str(e))
        return 2 if type(e).__name__ in ("ConfigError", "InvalidRequest") else 1
    except click.NoArgsIsHelpError as e:  # `tierlm` alone: the help, as usual
        e.show()
        return int(e.exit_code)
    except click.UsageError as e:  # unknown command or option, bad option value
        where = e.ctx.command_path if e.ctx is not None else "tierlm"
        message = e.format_message().replace("Value error, ", "")
        _print_error(f"{message} (see `{where} --help`)")
        return 2
    except click.ClickException as e:
        _print_error(e.format_message())
        return int(e.exit_code)
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except (KeyboardInterrupt, typer.Abort):  # typer's vendored click has no Abort
        print(file=sys.stderr)
        return 130
    except Exception as e:
        # pydantic is imported only by commands that need it (--help stays fast); if one
        # raised its ValidationError, the module is loaded
        validation = getattr(sys.modules.get("pydantic"), "ValidationError", None)
        if validation is None or not isinstance(e, validation):
            raise
        _print_error(invalid_value(e))
        return 2
    return rc if isinstance(rc, int) else 0


def _click_exceptions() -> Any:
    """The module of the click exceptions typer raises: its own copy of click (typer >= 0.2x
    vendors it as ``typer._click``) or, for older typer, click itself."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ModuleNotFoundError:
        return importlib.import_module("click.exceptions")


def invalid_value(e: Any) -> str:
    """One line for a pydantic ``ValidationError``: the field, the value, what is allowed."""
    first = e.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "value"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"invalid {field} {first.get('input')!r}: {first.get('msg')}{more}"


def local_advice(e: BaseException) -> str:
    """What to do, for errors that keep it for local faces (``ModelUnavailable.advice``), as
    one hint: the advice's lines after its first (which the message already says)."""
    out = []
    for err in (e, *getattr(e, "errors", ())):
        text = getattr(err, "advice", None)
        if isinstance(text, str) and "\n" in text:
            lines = [ln.strip().removeprefix("- ") for ln in text.splitlines()[1:]]
            out += [ln for ln in lines if ln and ln != "Do one of:"]
    return "; ".join(out)


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
