"""``tierlm doctor``: every configured backend with its state, and what each tier would use.

For each backend: kind, boundary, where it lives (URL without credentials, or the model for
in-process kinds), its price and where the price comes from, and its health right now:
``loaded`` (warm), ``cold`` (reachable or on disk, not in memory), ``ok``, ``unreachable``
or ``error``, with the models it offers, in-flight and queued requests where known, and RAM
needed against RAM free for local models (for an in-process model that is missing, the
whole advice: every way to get it, or that the configured path does not exist), and a local
model's worker process (its ``llama-server``, state, restarts, last exit). Then, for each
tier, the backend it would use (the first healthy one, a warm one first when
``routing.prefer_warm``), and the energy state read once from the configured source. With a
``llama_cpp`` backend it also runs the llama.cpp smoke check (one token through each runtime,
in subprocesses; ``--no-smoke`` skips it). Exit status 1 when some tier has no usable backend
or the smoke check failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, load
from tierlm.config.backends import HttpConfig, LlamaCppConfig
from tierlm.signals import rapl

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig, Settings


def register(app: typer.Typer) -> None:
    app.command()(doctor)


def doctor(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
    json_out: bool = typer.Option(False, "--json", help="One JSON object."),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="Seconds per health check."),
    smoke: bool = typer.Option(True, "--smoke/--no-smoke", help="Run the llama.cpp smoke check."),
) -> None:
    """Check every configured backend and show what each tier would use."""
    settings = load(config, preset)
    report = asyncio.run(gather_report(settings, check_seconds=timeout))
    report["smoke"] = smoke_report(settings) if smoke else []
    if json_out:
        typer.echo(json.dumps(report, ensure_ascii=False))
    else:
        typer.echo(format_report(report))
    if any(t["uses"] is None for t in report["tiers"]) or any(not r["ok"] for r in report["smoke"]):
        raise typer.Exit(1)


def smoke_report(settings: Settings) -> list[dict[str, Any]]:
    """The llama.cpp smoke check on the first ``llama_cpp`` backend's model (if it is found)."""
    from tierlm import models
    from tierlm.errors import ModelError
    from tierlm.llama_runtime import smoke_check
    from tierlm.paths import models_dir

    local = [b for b in settings.backends if isinstance(b, LlamaCppConfig)]
    if not local:
        return []
    try:
        model = models.resolve(local[0].model, models_dir(settings), download=False)
    except ModelError:
        return []  # the backend's own row says the model is missing
    return [dataclasses.asdict(r) for r in smoke_check(model)]


async def gather_report(settings: Settings, *, check_seconds: float = 5.0) -> dict[str, Any]:
    """The doctor's findings as plain data (also used by the admin API and tests)."""
    from tierlm import hostinfo

    host, backends = await asyncio.gather(
        asyncio.to_thread(hostinfo.snapshot),
        asyncio.gather(*(check_backend(b, settings, check_seconds) for b in settings.backends)),
    )
    by_name = {b["name"]: b for b in backends}
    tiers = []
    for tier in settings.tiers:
        members = [by_name[n] for n in tier.backends]
        usable = [m for m in members if m["usable"]]
        warm = [m for m in usable if m["state"] == "loaded"]
        pick = (warm or usable) if settings.routing.prefer_warm else usable
        tiers.append(
            {
                "name": tier.name,
                "backends": tier.backends,
                "strength": settings.tier_strength(tier),
                "uses": pick[0]["name"] if pick else None,
            }
        )
    return {
        "deployment": settings.deployment,
        "air_gapped": settings.air_gapped,
        "host": host.to_dict(),
        "energy": await _energy(settings),
        "backends": backends,
        "tiers": tiers,
    }


async def _energy(settings: Settings) -> dict[str, Any] | None:
    """The energy state read now from the configured source (None: not configured)."""
    if settings.energy is None:
        return None
    from tierlm.signals.energy import EnergyMonitor

    state = await asyncio.to_thread(EnergyMonitor(settings.energy).refresh)
    return state.to_dict()


def _where(cfg: BackendConfig, backend: Any) -> str:
    url = getattr(backend, "base_url", None) or _url(cfg)
    if not url:
        return cfg.model
    import httpx

    return str(httpx.URL(url).copy_with(username=None, password=None, query=None))


def _url(cfg: BackendConfig) -> str | None:
    return cfg.url if isinstance(cfg, HttpConfig) else None


async def check_backend(
    cfg: BackendConfig, settings: Settings, check_seconds: float
) -> dict[str, Any]:
    """One backend: build it (no network), ask its health in ``check_seconds``, close it."""
    from tierlm.backends import create_backend
    from tierlm.errors import TierlmError
    from tierlm.pricing import price_source

    price, source = price_source(cfg)
    out: dict[str, Any] = {
        "name": cfg.name,
        "kind": cfg.kind,
        "provider": cfg.provider if isinstance(cfg, HttpConfig) else None,
        "model": cfg.model,
        "boundary": cfg.where.label,
        "where": _url(cfg) or cfg.model,
        "price": {
            "input": price.input,
            "output": price.output,
            "per_hour": price.per_hour,
            "source": source,
        },
        "state": "error",
        "usable": False,
        "detail": "",
        "advice": "",
        "health": None,
    }
    try:
        backend = create_backend(cfg, settings)
    except TierlmError as e:
        out["detail"] = e.message
        return out
    out["where"] = _where(cfg, backend)
    try:
        async with asyncio.timeout(check_seconds):
            health = await backend.health()
    except TimeoutError:
        out.update(state="unreachable", detail=f"health check took over {check_seconds:g} s")
        return out
    except TierlmError as e:
        out["detail"] = e.message
        return out
    finally:
        await backend.aclose()
    h = health.to_dict()
    out["health"] = h
    out["detail"] = health.detail
    if health.ok is False:
        out["state"] = "unreachable" if health.detail.startswith("unreachable") else "error"
        out["advice"] = _model_advice(cfg, settings)
    else:
        out["usable"] = True
        out["state"] = "ok" if health.loaded is None else ("loaded" if health.loaded else "cold")
    return out


def _model_advice(cfg: BackendConfig, settings: Settings) -> str:
    """For a llama.cpp backend whose model is missing: every way to get it (never downloads)."""
    if not isinstance(cfg, LlamaCppConfig):
        return ""
    from tierlm import models
    from tierlm.errors import ModelNotFound
    from tierlm.paths import models_dir

    try:
        models.resolve(cfg.model, models_dir(settings), download=False)
    except ModelNotFound as e:
        return e.message.split("\n", 1)[1] if "\n" in e.message else ""
    return ""


def _fmt_health(b: dict[str, Any]) -> str:
    h = b["health"] or {}
    parts = []
    if h.get("memory_needed_gb") is not None and h.get("memory_free_gb") is not None:
        parts.append(
            f"RAM {h['memory_needed_gb']:.2f} GB needed / {h['memory_free_gb']:.2f} GB free"
        )
    if h.get("in_flight") is not None:
        parts.append(f"in flight {h['in_flight']}")
    if h.get("queued") is not None:
        parts.append(f"queued {h['queued']}")
    if h.get("models") and b["kind"] in ("openai", "ollama", "anthropic"):
        shown = ", ".join(h["models"][:4]) + (" ..." if len(h["models"]) > 4 else "")
        parts.append(f"models: {shown}")
    if h.get("latency_ms") is not None:
        parts.append(f"{h['latency_ms']:.0f} ms")
    if h.get("worker"):
        parts.append(_fmt_worker(h["worker"]))
    if h.get("energy"):
        parts.append(rapl.describe(h["energy"]))
    if b["detail"] and b["detail"] not in ("ok", "loaded"):
        parts.insert(0, b["detail"])
    return "; ".join(parts)


def _fmt_worker(w: dict[str, Any]) -> str:
    out = f"worker {w['state']}"
    if w.get("pid"):
        out += f" (pid {w['pid']}, port {w['port']})"
    if w.get("binary"):
        out += f" [{w['binary']}]"
    out += f", restarts {w['restarts']}, crashes {w['crashes']}"
    if w.get("last_exit"):
        out += f", last exit {w['last_exit']}"
    return out


def format_report(report: dict[str, Any]) -> str:
    from tierlm.signals.energy import describe

    host = report["host"]
    gpus = host.get("gpus") or []
    gpu = (
        ", ".join(
            f"{g['name']} {g['memory_free_bytes'] / 1024**3:.1f}/"
            f"{g['memory_total_bytes'] / 1024**3:.1f} GB free"
            for g in gpus
        )
        or "no GPU"
    )
    lines = [
        f"deployment {report['deployment']}" + (" (air-gapped)" if report["air_gapped"] else ""),
        f"host: {host['memory_available_gb']:.1f} GB RAM free of "
        f"{host['memory_total_gb']:.1f} GB, {host['cpu_count']} CPUs, {gpu}",
        "energy: " + (describe(report["energy"]) if report.get("energy") else "not configured"),
        "",
        "backends:",
    ]
    rows = [("NAME", "KIND", "BOUNDARY", "STATE", "PRICE $/1M in/out", "WHERE")]
    for b in report["backends"]:
        p = b["price"]
        price = f"{p['input']:g}/{p['output']:g} ({p['source']})"
        rows.append((b["name"], b["kind"], b["boundary"], b["state"], price, b["where"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for i, r in enumerate(rows):
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
        )
        if i > 0:
            b = report["backends"][i - 1]
            detail = _fmt_health(b)
            if detail:
                lines.append(f"    {detail}")
            lines += [f"    {line.strip()}" for line in b.get("advice", "").splitlines()]
    if report.get("smoke"):
        lines += ["", "llama.cpp smoke check (one token, in a subprocess):"]
        from tierlm.llama_runtime import SmokeResult

        lines += [f"  {SmokeResult(**r).line()}" for r in report["smoke"]]
    lines += ["", "tiers:"]
    for t in report["tiers"]:
        uses = t["uses"] or "NOTHING (no usable backend)"
        lines.append(
            f"  {t['name']} (strength {t['strength']:g}): "
            f"{' > '.join(t['backends'])}  ->  uses {uses}"
        )
    return "\n".join(lines)
