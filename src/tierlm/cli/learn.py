"""``tierlm learn``: recalibrate the cascade thresholds on the deployment's recorded outcomes
(see :mod:`tierlm.learn`); shows before/after, writes only with ``--write``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, load, period

if TYPE_CHECKING:
    from tierlm.learn import TierFit


def register(app: typer.Typer) -> None:
    app.command()(learn)


def learn(
    since: str = typer.Option("30d", "--since", help="Period: 30d, 12h, 2w, ... or 'all'."),
    write: bool = typer.Option(False, "--write", help="Store the learned thresholds."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
) -> None:
    """Fit each cascading tier's threshold to the feedback its answers received."""
    import time

    from tierlm import learn as lr
    from tierlm.execute.cascade import threshold_for
    from tierlm.judge.model import load_params
    from tierlm.ledger import open_ledger
    from tierlm.paths import data_dir

    span = period(since)
    settings = load(config, preset)
    learned = lr.read_calibration(data_dir(settings))
    default = float(load_params()["threshold"])
    current = {
        t.name: threshold_for(t.cascade, learned.get(t.name), default) for t in settings.tiers
    }
    with open_ledger(settings) as ledger:
        rated = lr.rated_answers(ledger.store, time.time() - span.total_seconds())
    fits, skipped = lr.fit(rated, current)
    written = lr.write_calibration(data_dir(settings), fits) if write and fits else None
    if json_out:
        out = {
            "tiers": [f.to_dict() for f in fits],
            "skipped": skipped,
            "written": str(written) if written else None,
        }
        typer.echo(json.dumps(out))
        return
    _print(fits, skipped, written)


def _print(fits: list[TierFit], skipped: list[str], written: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not fits:
        console.print("nothing to learn from yet: " + ("; ".join(skipped) or "no rated answers"))
        return
    t = Table(
        title="Cascade thresholds, measured on the later half of the rated answers",
        title_justify="left",
    )
    for col in ("tier", "rated", "threshold", "agreement", "bad accepted", "good escalated"):
        t.add_column(col, justify="left" if col == "tier" else "right")
    for f in fits:
        b, a = f.before, f.after
        t.add_row(
            f.tier,
            f"{f.rated:,}",
            f"{b.threshold:.2f} → {a.threshold:.2f}",
            f"{b.agreement:.0%} → {a.agreement:.0%}",
            f"{b.bad_accepted} → {a.bad_accepted}",
            f"{b.good_escalated} → {a.good_escalated}",
        )
    console.print(t)
    for s in skipped:
        console.print(f"skipped {s}", markup=False)
    console.print(f"wrote {written}" if written else "not written (use --write)", markup=False)
