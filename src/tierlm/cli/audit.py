"""``tierlm audit``: verify and list the audit trail of calls that left the site, and print
its head (the newest row's hash) for the operator to keep outside the ledger as an anchor.

- ``verify [--anchor HASH] [--json]``: the chain, the cross-check against the recorded
  requests and, with ``--anchor``, that the chain still holds that hash; exit 1 if not.
- ``head [--json]``: ``SEQ HASH`` of the newest row (exit 1 when the trail is empty).
- ``list``: the latest audit rows (calls that left the site).
- ``sent [--request ID] [--body FILE] [--json]``: every attempt that sent a body to a site or
  external backend: when, request, backend, boundary, outcome and the SHA-256 of the exact
  bytes sent; ``--body`` keeps those that sent exactly the bytes of FILE (a body kept
  elsewhere, such as a provider's request log, is checked against the ledger this way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, fail, load, period

if TYPE_CHECKING:
    from tierlm.ledger.records import SentAttempt


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The audit trail of every call that crossed the site boundary.", no_args_is_help=True
    )
    group.command("verify")(verify)
    group.command("head")(head)
    group.command("list")(list_rows)
    group.command("sent")(sent)
    app.add_typer(group, name="audit")


def verify(
    anchor: str | None = typer.Option(
        None, "--anchor", help="A head hash kept elsewhere (`tierlm audit head`): must be in it."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
) -> None:
    """Recompute the hash chain and cross-check it with the requests; exit 1 saying why not."""
    import re

    from tierlm.ledger import open_ledger

    if anchor is not None and not re.fullmatch(r"[0-9a-f]{64}", anchor.strip().lower()):
        raise fail("--anchor must be a head hash: 64 hex digits (`tierlm audit head`)", 2)
    with open_ledger(load(config, preset)) as ledger:
        result = ledger.audit_verify(anchor.strip().lower() if anchor else None)
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    elif result.ok:
        head = f"; head {result.head_seq} {result.head}" if result.head else ""
        typer.echo(f"audit chain OK: {result.rows} rows verified{head}")
    if not result.ok:
        if json_out:
            raise typer.Exit(1)
        where = f"broken at row {result.first_bad}" if result.first_bad else "check failed"
        raise fail(f"audit {where}: {result.reason}")


def head(
    json_out: bool = typer.Option(False, "--json", help="Print {seq, hash} as JSON."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
) -> None:
    """Print the newest audit row's SEQ and HASH: keep it elsewhere, check with --anchor."""
    from tierlm.ledger import open_ledger

    with open_ledger(load(config, preset)) as ledger:
        found = ledger.audit_head()
    if found is None:
        raise fail("the audit trail is empty: no call has left the site yet")
    seq, digest = found
    typer.echo(json.dumps({"seq": seq, "hash": digest}) if json_out else f"{seq} {digest}")


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

    start = time.time() - period(since).total_seconds()
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


def sent(
    since: str = typer.Option("30d", "--since", help="Period: 30d, 12h, 2w, ... or 'all'."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many rows, newest first."),
    request_id: str | None = typer.Option(None, "--request", help="Only this request's."),
    body: Path | None = typer.Option(
        None, "--body", help="Only attempts that sent exactly the bytes of this file."
    ),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
) -> None:
    """Show what left the host: each attempt sent to a site or external backend, with the
    SHA-256 of the exact bytes sent."""
    import time

    from tierlm.ledger import digest, open_ledger

    start = time.time() - period(since).total_seconds()
    try:
        wanted = digest(body.read_bytes()) if body is not None else None
    except OSError as e:
        raise fail(f"--body: cannot read {body}: {e.strerror or e}", 2) from None
    with open_ledger(load(config, preset)) as ledger:
        rows = ledger.audit_sent(since=start, limit=limit, request_id=request_id, digest=wanted)
    if body is not None and not rows:
        raise fail(f"no attempt in the ledger sent the bytes of {body} (sha256 {wanted})")
    if json_out:
        for r in rows:
            typer.echo(json.dumps(r.to_dict()))
    else:
        _sent_table(rows)


def _sent_table(rows: list[SentAttempt]) -> None:
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    title = f"Bodies sent beyond the host ({len(rows)}, newest first)"
    t = Table(title=title, title_justify="left")
    for col in ("time (UTC)", "request", "#", "backend", "boundary", "outcome", "sha256"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            datetime.fromtimestamp(r.ts, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            r.request_id,
            str(r.n),
            r.backend,
            r.boundary,
            r.outcome,
            r.digest,
        )
    Console(highlight=False, width=200).print(t)
