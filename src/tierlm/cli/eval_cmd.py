"""``tierlm eval``: route a per-model outcomes file and report quality against cost.

Reads a RouterBench-format CSV (or an AlpacaEval long ``.csv.gz`` with its
``instructions.csv``), scores every prompt with a complexity method, and prints APGR,
CPT(50%) and CPT(80%) beside the random and oracle routers, the quality-vs-cost curve
(share of strong-tier calls and dollars), optionally a PNG plot, and with ``--calibrate``
the ``quality`` setting that escalates a chosen share of requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tierlm.cli.common import fail

if TYPE_CHECKING:
    from tierlm.evaluation import Curve, Metrics, Outcomes
    from tierlm.signals.complexity import ComplexityScorer, LlmRate

SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Outcomes file."),
    method: str = typer.Option("model", "--method", "-m", help="model, length or llm."),
    weak: str | None = typer.Option(None, "--weak", help="Column/generator of the weak model."),
    strong: str | None = typer.Option(
        None, "--strong", help="Column/generator of the strong model."
    ),
    instructions: Path | None = typer.Option(
        None, "--instructions", help="AlpacaEval instructions.csv (default: beside FILE)."
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Write a quality-vs-cost PNG here."),
    calibrate: float | None = typer.Option(
        None, "--calibrate", min=0.0, max=1.0, help="Target share of escalations (0..1)."
    ),
    tier_strength: float = typer.Option(
        0.35, "--tier-strength", help="Strength of the tier escalated from (for --calibrate)."
    ),
    llm_model: Path | None = typer.Option(
        None, "--llm-model", help="GGUF model that rates prompts for --method llm."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object instead of tables."),
) -> None:
    """Route a per-model outcomes file; print APGR, CPT and quality against cost."""
    from tierlm import evaluation as ev

    try:
        data = ev.load_outcomes(file, instructions=instructions, weak=weak, strong=strong)
    except (ValueError, KeyError, OSError) as e:
        raise fail(f"cannot read {file}: {e}", 2) from e
    if limit is not None:
        data = data.subset(_first(len(data), limit))
    if len(data) == 0:
        raise fail(f"{file}: no usable rows", 2)
    scorer = _scorer(method, llm_model)
    report = build_report(data, scorer, calibrate, tier_strength)
    if plot is not None:
        write_plot(plot, data, report["_curves"], method)
        report["plot"] = str(plot)
    report.pop("_curves")
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)


def _first(n: int, limit: int) -> Any:
    import numpy as np

    return np.arange(n) < limit


def _scorer(method: str, llm_model: Path | None) -> ComplexityScorer:
    from tierlm.signals.complexity import METHODS, load_scorer

    if method not in METHODS:
        raise fail(f"unknown --method {method!r} (expected one of: {', '.join(METHODS)})", 2)
    rate = _llama_rate(llm_model) if method == "llm" else None
    if method == "llm" and rate is None:
        raise fail("--method llm needs --llm-model PATH (a GGUF model)", 2)
    return load_scorer(method, llm_rate=rate)


def _llama_rate(path: Path | None) -> LlmRate | None:
    if path is None:
        return None
    try:
        from llama_cpp import Llama
    except ImportError as e:
        from tierlm.errors import MissingDependency

        raise MissingDependency("--method llm", "local") from e
    llm: Any = Llama(model_path=str(path), n_ctx=2048, verbose=False)

    def rate(messages: list[dict[str, str]]) -> str:
        out = llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0.0)
        return str(out["choices"][0]["message"]["content"] or "")

    return rate


def build_report(
    data: Outcomes, scorer: ComplexityScorer, calibrate: float | None, tier_strength: float
) -> dict[str, Any]:
    """Everything ``eval`` prints, as plain data (plus the curves under ``_curves``)."""
    import numpy as np

    from tierlm import evaluation as ev
    from tierlm.types import ChatRequest

    scores = np.asarray([scorer.score(ChatRequest.from_prompt(t or " ")) for t in data.texts])
    oracle = ev.oracle_scores(data.weak, data.strong)
    costs = (data.weak_cost, data.strong_cost)
    curves = {
        scorer.name: ev.quality_cost_curve(scores, data.weak, data.strong, *costs),
        "random": ev.random_curve(data.weak, data.strong, *costs),  # exact expectation
        "oracle": ev.quality_cost_curve(oracle, data.weak, data.strong, *costs),
    }
    metrics = {
        scorer.name: ev.evaluate_scores(scores, data.weak, data.strong),
        "random": ev.random_metrics(data.weak, data.strong),
        "oracle": ev.evaluate_scores(oracle, data.weak, data.strong),
    }
    report: dict[str, Any] = {
        "file_rows": len(data),
        "weak": data.weak_name,
        "strong": data.strong_name,
        "method": scorer.name,
        "weak_quality": float(np.mean(data.weak)),
        "strong_quality": float(np.mean(data.strong)),
        "dollars_known": data.weak_cost is not None,
        "metrics": {name: _metrics_dict(m) for name, m in metrics.items()},
        "curve": _curve_points(curves[scorer.name], data),
        "_curves": curves,
    }
    if calibrate is not None:
        threshold = ev.calibrate_threshold(scores, calibrate)
        report["calibration"] = {
            "target_share": calibrate,
            "threshold": threshold,
            "measured_share": float(np.mean(scores > threshold)),
            "tier_strength": tier_strength,
            "quality": ev.quality_for_threshold(threshold, tier_strength),
        }
    return report


def _metrics_dict(m: Metrics) -> dict[str, float]:
    return {"apgr": m.apgr, "cpt50": m.cpt50, "cpt80": m.cpt80}


def _curve_points(curve: Curve, data: Outcomes) -> list[dict[str, float | None]]:
    import numpy as np

    points: list[dict[str, float | None]] = []
    for share in SHARES:
        quality = float(np.interp(share, curve.share, curve.quality))
        dollars = float(np.interp(share, curve.share, curve.cost))
        points.append(
            {
                "strong_share": share,
                "quality": quality,
                "dollars": dollars if data.weak_cost is not None else None,
            }
        )
    return points


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(
        f"{report['file_rows']} prompts; weak [bold]{report['weak']}[/] "
        f"(quality {report['weak_quality']:.3f}), strong [bold]{report['strong']}[/] "
        f"(quality {report['strong_quality']:.3f})"
    )
    summary = Table(title="Routers")
    for col in ("router", "APGR", "CPT(50%)", "CPT(80%)"):
        summary.add_column(col, justify="left" if col == "router" else "right")
    for name, m in report["metrics"].items():
        summary.add_row(name, _fmt(m["apgr"]), _fmt(m["cpt50"]), _fmt(m["cpt80"]))
    console.print(summary)
    curve = Table(title=f"Quality against cost ({report['method']})")
    for col in ("strong calls", "quality", "dollars"):
        curve.add_column(col, justify="right")
    for p in report["curve"]:
        dollars = "n/a" if p["dollars"] is None else f"${p['dollars']:.4f}"
        curve.add_row(f"{p['strong_share']:.0%}", f"{p['quality']:.3f}", dollars)
    console.print(curve)
    if "calibration" in report:
        c = report["calibration"]
        console.print(
            f"To escalate {c['target_share']:.0%} of these requests past a tier of strength "
            f"{c['tier_strength']:.2f}: set quality = [bold]{c['quality']:.3f}[/] "
            f"(complexity threshold {c['threshold']:.3f}; measured share "
            f"{c['measured_share']:.1%})"
        )
    if "plot" in report:
        console.print(f"plot written to {report['plot']}")


def write_plot(path: Path, data: Outcomes, curves: dict[str, Curve], method: str) -> None:
    """A PNG of quality against the share of strong-model calls, one line per router."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        from tierlm.errors import MissingDependency

        raise MissingDependency("--plot", "plot") from e
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves.items():
        style = {"random": ":", "oracle": "--"}.get(name, "-")
        ax.plot(100 * c.share, c.quality, style, label=name)
    ax.axhline(float(data.weak.mean()), color="grey", lw=0.8, label=f"weak: {data.weak_name}")
    ax.axhline(float(data.strong.mean()), color="red", lw=0.8, label=f"strong: {data.strong_name}")
    ax.set_xlabel("strong-model calls (%)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"tierlm eval: {method} router, {len(data)} prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
