"""``tierlm report``: spend, latency, fallbacks, savings and quality from the ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, load, period

if TYPE_CHECKING:
    from rich.console import Console

    from tierlm.ledger.reports import Group, Report


def register(app: typer.Typer) -> None:
    app.command()(report)


def report(
    since: str = typer.Option("30d", "--since", help="Period: 30d, 12h, 2w, ... or 'all'."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    plot: Path | None = typer.Option(None, "--plot", help="Write PNG charts into DIR."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
) -> None:
    """Summarize the recorded requests: where they went, what they cost, how they did."""
    from tierlm.ledger import open_ledger

    span = period(since)
    with open_ledger(load(config, preset)) as ledger:
        rep = ledger.report(span)
    charts: list[Path] = []
    if plot is not None:
        from tierlm.ledger.plots import write_plots

        charts = write_plots(rep, plot)
    if json_out:
        typer.echo(json.dumps({**rep.to_dict(), "charts": [str(c) for c in charts]}))
        return
    _print(rep, charts)


def _group_table(console: Console, title: str, groups: list[Group]) -> None:
    from rich.table import Table

    from tierlm.pricing import format_usd

    t = Table(title=title, title_justify="left")
    for col in ("name", "requests", "share", "cost", "tokens in", "tokens out", "fallback"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for g in groups:
        t.add_row(
            g.name,
            f"{g.requests:,}",
            f"{g.share:.1%}",
            format_usd(g.cost_usd),
            f"{g.prompt_tokens:,}",
            f"{g.completion_tokens:,}",
            f"{g.fallback_rate:.1%}",
        )
    console.print(t)


def _print(rep: Report, charts: list[Path]) -> None:
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from tierlm.pricing import format_usd

    console = Console(highlight=False)
    day = "%Y-%m-%d %H:%M"
    console.print(
        f"[bold]tierlm report[/] {datetime.fromtimestamp(rep.since, UTC).strftime(day)} .. "
        f"{datetime.fromtimestamp(rep.until, UTC).strftime(day)} UTC: "
        f"{rep.requests:,} requests, {format_usd(rep.cost_usd)}; fallback "
        f"{rep.fallback_rate:.1%} (answered after a failed attempt), escalated "
        f"{rep.escalation_rate:.1%} (above the cheapest eligible tier), errors "
        f"{rep.error_rate:.1%}"
    )
    _deferred(console, rep)
    if rep.requests == 0:
        return
    _group_table(console, "Spend by tier", rep.by_tier)
    _group_table(console, "Spend by backend", rep.by_backend)
    _group_table(console, "Spend by key", rep.by_key)
    t = Table(title="Latency (ms)", title_justify="left")
    for col in ("tier", "n", "p50", "p90", "p99", "ttft p50"):
        t.add_column(col, justify="left" if col == "tier" else "right")
    for x in rep.latency:
        t.add_row(
            x.name,
            f"{x.n:,}",
            *(
                f"{v:,.0f}" if v is not None else "-"
                for v in (x.p50_ms, x.p90_ms, x.p99_ms, x.ttft_p50_ms)
            ),
        )
    console.print(t)
    if rep.quality:
        t = Table(title="Quality from feedback", title_justify="left")
        for col in ("tier", "ratings", "mean", "scored well"):
            t.add_column(col, justify="left" if col == "tier" else "right")
        for q in rep.quality:
            t.add_row(q.tier, f"{q.ratings:,}", f"{q.mean:.2f}", f"{q.well_scored:.0%}")
        console.print(t)
    if rep.cascade:
        _cascade_table(console, rep)
    if rep.savings is not None:
        s = rep.savings
        console.print(
            f"Savings: {format_usd(s.saved_usd)} ({s.saved_share:.0%}) against "
            f"{format_usd(s.baseline_usd)} for sending everything to {s.strongest_tier} "
            f"({'configured price' if s.method == 'price' else 'observed cost per token'})"
        )
    if rep.hot_paths:
        _hot_paths_table(console, rep)
    console.print("[bold]Recommendations[/]")
    for r in rep.recommendations:
        console.print(f"- {r}", soft_wrap=True)
    for c in charts:
        console.print(f"chart: {c}")


def _cascade_table(console: Console, rep: Report) -> None:
    from rich.table import Table

    from tierlm.pricing import format_usd

    t = Table(
        title="Cascade: judged answers per tier (cost, wait: of the escalations)",
        title_justify="left",
    )
    for col in (
        "tier",
        "judged",
        "accepted",
        "escalated",
        "kept",
        "late",
        "cost",
        "wait",
    ):
        t.add_column(col, justify="left" if col == "tier" else "right")
    for c in rep.cascade:
        wait = "-" if c.escalated_wait_ms is None else f"{c.escalated_wait_ms:,.0f} ms"
        t.add_row(
            c.tier,
            f"{c.judged:,}",
            f"{c.accepted:,} ({c.acceptance_rate:.0%})",
            f"{c.escalated:,}",
            f"{c.kept:,}",
            f"{c.late_fail:,}",
            format_usd(c.escalation_cost_usd),
            wait,
        )
    console.print(t)


def _hot_paths_table(console: Console, rep: Report) -> None:
    from rich.table import Table

    from tierlm.pricing import format_usd

    t = Table(
        title="Hot paths: what a rule or pinned answer would save (tierlm hotpaths proposes them)",
        title_justify="left",
    )
    for col in ("shape", "requests", "cost", "model calls"):
        t.add_column(col, justify="left" if col == "shape" else "right")
    for h in rep.hot_paths:
        t.add_row(
            h["shape"], f"{h['requests']:,}", format_usd(h["cost_usd"]), f"{h['model_calls']:,}"
        )
    console.print(t)


def _deferred(console: Console, rep: Report) -> None:
    """The deferred queue (Batch API), when there is one."""
    from tierlm.pricing import format_usd

    d = rep.deferred
    states = ("done", "waiting", "running", "failed", "expired", "cancelled")
    if not any(d.get(s) for s in states):
        return
    console.print(
        "deferred: " + ", ".join(f"{d[s]:,} {s}" for s in states) + f"; cost "
        f"{format_usd(d['cost_usd'])}, saved {format_usd(d['saved_usd'])} against running "
        f"each line when it was submitted ({format_usd(d['at_submission_usd'])})",
        soft_wrap=True,
    )
