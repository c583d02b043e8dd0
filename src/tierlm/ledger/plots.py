"""PNG charts of a :class:`~tierlm.ledger.reports.Report` (``tierlm report --plot DIR``).

matplotlib (the ``plot`` extra) is imported only here, with the non-interactive Agg backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlm.errors import MissingDependency

if TYPE_CHECKING:
    from tierlm.ledger.reports import Report


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise MissingDependency("report charts (--plot)", "plot") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _daily(rep: Report, value: str) -> tuple[list[datetime], dict[str, list[float]]]:
    days = sorted({d["day"] for d in rep.daily})
    tiers = sorted({d["tier"] for d in rep.daily})
    index = {d: i for i, d in enumerate(days)}
    series = {t: [0.0] * len(days) for t in tiers}
    for d in rep.daily:
        series[d["tier"]][index[d["day"]]] = float(d[value])
    return [datetime.fromtimestamp(d * 86400, UTC) for d in days], series


def _stacked(plt: Any, rep: Report, value: str, title: str, ylabel: str, path: Path) -> None:
    x, series = _daily(rep, value)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bottom = [0.0] * len(x)
    for tier, ys in series.items():
        ax.bar(x, ys, bottom=bottom, label=tier, width=0.8)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(title="tier")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bars(
    plt: Any, names: list[str], groups: dict[str, list[float]], title: str, ylabel: str, path: Path
) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(groups), 1)
    for i, (label, ys) in enumerate(groups.items()):
        ax.bar([j + i * width for j in range(len(names))], ys, width=width, label=label)
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(names))], names)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if len(groups) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(rep: Report, directory: Path) -> list[Path]:
    """Write the report's charts as PNG files into ``directory``; return their paths."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    if rep.daily:
        out.append(directory / "requests_per_day.png")
        _stacked(plt, rep, "requests", "Requests per day by tier", "requests", out[-1])
        out.append(directory / "spend_per_day.png")
        _stacked(plt, rep, "cost_usd", "Spend per day by tier", "USD", out[-1])
    lat = [x for x in rep.latency if x.name != "all"]
    if lat:
        out.append(directory / "latency.png")
        _bars(
            plt,
            [x.name for x in lat],
            {p: [getattr(x, f"{p}_ms") or 0.0 for x in lat] for p in ("p50", "p90", "p99")},
            "Latency by tier",
            "ms",
            out[-1],
        )
    if rep.quality:
        out.append(directory / "quality.png")
        _bars(
            plt,
            [q.tier for q in rep.quality],
            {"mean score": [q.mean for q in rep.quality]},
            "Feedback quality by tier",
            "mean score (0-1)",
            out[-1],
        )
    return out
