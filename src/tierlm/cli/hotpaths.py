"""``tierlm hotpaths``: the most frequent request shapes in the ledger, proposed as rules.

Clusters the stored (redacted) prompts of the period (see :mod:`tierlm.layer0.hotpaths`),
prints each cluster's volume, cost, model calls, the tiers and backends that answered and a
few answers as stored, then the proposed rules as a YAML snippet for the ``rules:`` list.
``--json`` prints ``{..., "clusters": [...], "yaml": "..."}``. When prompts are not stored it
says so, and what to enable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, load, period


def register(app: typer.Typer) -> None:
    app.command()(hotpaths)


def hotpaths(
    since: str = typer.Option("30d", "--since", help="Period: 30d, 12h, 2w, ... or 'all'."),
    json_out: bool = typer.Option(False, "--json", help="Print the clusters as JSON."),
    min_count: int = typer.Option(5, "--min-count", min=1, help="Smallest cluster shown."),
    top: int = typer.Option(10, "--top", min=1, help="How many clusters to show."),
    threshold: float = typer.Option(
        0.9, "--threshold", min=0.01, max=1.0, help="Similarity to merge near shapes."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
) -> None:
    """Cluster the recorded requests and propose rules for the frequent ones."""
    from tierlm.layer0.embed import load_embedder
    from tierlm.layer0.hotpaths import hot_paths, snippet
    from tierlm.ledger import open_ledger
    from tierlm.pricing import format_usd

    span = period(since)
    settings = load(config, preset)
    embedder = load_embedder(settings.cache.semantic.embedder)
    end = time.time()
    with open_ledger(settings) as ledger, ledger.store.transaction("read") as tx:
        hp = hot_paths(
            tx,
            embedder,
            start=end - span.total_seconds(),
            end=end,
            min_count=min_count,
            top=top,
            threshold=threshold,
        )
    yaml_text = snippet(hp)
    if json_out:
        typer.echo(json.dumps({**hp.to_dict(), "yaml": yaml_text}))
        return
    if hp.note:
        typer.echo(hp.note)
        return
    typer.echo(
        f"{hp.scanned:,} requests with stored prompts read ({hp.without_prompt:,} without), "
        f"{len(hp.clusters)} clusters of at least {min_count}, in {hp.seconds:.2f} s"
    )
    for i, c in enumerate(hp.clusters, 1):
        typer.echo(
            f"\n{i}. {c.shape!r}: {c.requests:,} requests, {format_usd(c.cost_usd)}, "
            f"{c.model_calls:,} model calls"
        )
        if len(c.shapes) > 1:
            typer.echo(f"   also: {', '.join(repr(s) for s in c.shapes[1:4])}")
        typer.echo(f"   tiers: {_counts(c.tiers)}; backends: {_counts(c.backends)}")
        for a in c.answers:
            typer.echo(f"   answer: {a[:100]!r}")
    if yaml_text:
        typer.echo("\n" + yaml_text)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
