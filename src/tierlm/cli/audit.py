"""``tierlm audit``: verify and list the audit trail of calls that left the site."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, fail, load


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The audit trail of every call that crossed the site boundary.", no_args_is_help=True
    )
    group.command("verify")(verify)
    group.command("list")(list_rows)
    app.add_typer(group, name="audit")


def verify(
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
) -> None:
    """Recompute the hash chain; exit 1 naming the first row that does not verify."""
    from tierlm.ledger import open_ledger

    with open_ledger(load(config, preset)) as ledger:
        result = ledger.audit_verify()
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    elif result.ok:
        typer.echo(f"audit chain OK: {result.rows} rows verified")
    if not result.ok:
        if json_out:
            raise typer.Exit(1)
        raise fail(f"audit chain broken at row {result.first_bad}: {result.reason}")


def list_rows(
    since: str = typer.Option("30d", "--since", help="Period: 30d, 12h, 2w, ... or 'all'."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many rows, newest first."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
) -> None:
    """Show the latest calls that left the site: when, key, backend, privacy, digest."""
    import time
    from datetime import UTC, datetime

    from tierlm.ledger import open_ledger
    from tierlm.ledger.reports import parse_since

    try:
        start = time.time() - parse_since(since).total_seconds()
    except ValueError as e:
        raise fail(str(e), 2) from None
    with open_ledger(load(config, preset)) as ledger:
        rows = ledger.audit_list(since=start, limit=limit)
    if json_out:
        for r in rows:
            typer.echo(json.dumps(r.to_dict()))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Audit trail ({len(rows)} rows, newest first)", title_justify="left")
    for col in ("seq", "time (UTC)", "key", "backend", "tier", "privacy", "digest"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r.seq),
            datetime.fromtimestamp(r.ts, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            r.api_key or "-",
            r.backend,
            r.tier,
            r.privacy or "-",
            (r.digest or "-")[:16],
        )
    Console(highlight=False).print(t)
