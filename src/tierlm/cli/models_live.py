"""``tierlm models ps|load|unload`` (a running gateway's local models, as ``ollama ps``) and
``tierlm models recommend`` (which GGUF sizes fit this machine, and for which tier).

``ps``, ``load`` and ``unload`` talk to a running gateway's ``/admin/models`` routes
(``--url``, default ``http://127.0.0.1:8080``; the admin key from ``--key`` or
``$TIERLM_ADMIN_KEY``); a gateway that is not running, or an error it answers, is one line
and exit status 1 (2 for a bad request).

``recommend`` estimates each size's memory as the GGUF file (parameters x bits per weight of
the quantization) plus a 4096-token context and runtime overhead, and compares it with the
RAM available now and each GPU's free memory (:mod:`tierlm.hostinfo`).
"""

from __future__ import annotations

from typing import Any

import typer

from tierlm.cli.common import fail

URL_HELP = "The gateway's base URL."
KEY_HELP = "An admin API key (when the gateway has keys configured)."
DEFAULT_URL = "http://127.0.0.1:8080"
_GB = 1024**3
# quantization -> bits per weight (llama.cpp's averages for these types)
QUANTS = {"Q4_K_M": 4.85, "Q8_0": 8.5}
# parameters (billions) -> the tier such a model suits, and what for
SIZES: list[tuple[float, str, str]] = [
    (0.5, "tiny", "classify, extract, short answers"),
    (1.5, "tiny", "short answers, simple tool calls"),
    (3.0, "tiny", "everyday questions, summaries"),
    (7.0, "site", "general chat, drafting, code help"),
    (14.0, "site", "harder reasoning, longer documents, code"),
    (32.0, "site", "close to hosted models on most tasks"),
    (70.0, "site", "the strongest local tier"),
]
CONTEXT_GB_PER_B = 0.04  # KV cache of a 4096-token context, per billion parameters (about)
OVERHEAD_GB = 0.3  # runtime buffers


def register(models_app: typer.Typer) -> None:
    models_app.command("ps")(ps)
    models_app.command("load")(load_model)
    models_app.command("unload")(unload_model)
    models_app.command("recommend")(recommend)


def _call(method: str, url: str, path: str, key: str | None, body: Any = None) -> Any:
    """One admin request; every failure is one line (``fail``)."""
    import httpx

    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(method, url.rstrip("/") + path, json=body, headers=headers, timeout=600)
    except httpx.TransportError as e:
        raise fail(f"no gateway at {url}: {e} (start one with `tierlm serve`)") from None
    try:
        data = r.json()
    except ValueError:
        raise fail(f"{url}{path} answered {r.status_code} without JSON (is it tierlm?)") from None
    if r.status_code >= 400:
        err = data.get("error") if isinstance(data, dict) else None
        message = err.get("message") if isinstance(err, dict) else str(err or data)
        raise fail(f"{message} (HTTP {r.status_code})", 2 if r.status_code < 500 else 1)
    return data


def _row(m: dict[str, Any]) -> str:
    mem = f"{m['memory_gb']:.2f} GB" if m.get("memory_gb") is not None else "-"
    idle = f"{m['idle_s']:.0f}s" if m.get("idle_s") is not None else "-"
    keep = m.get("keep_alive_s")
    until = "never unloads" if not keep or keep <= 0 else f"{keep:g}s"
    state = "loaded" if m["loaded"] else "not loaded"
    return f"{m['backend']:<16} {m['model'][:40]:<40} {state:<11} {mem:>9} {idle:>6} {until}"


def ps(
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_ADMIN_KEY", help=KEY_HELP),
) -> None:
    """The running gateway's local models: loaded or not, memory, idle time, keep_alive."""
    models = _call("GET", url, "/admin/models", key)["models"]
    typer.echo(f"{'BACKEND':<16} {'MODEL':<40} {'STATE':<11} {'MEMORY':>9} {'IDLE':>6} KEEP_ALIVE")
    for m in models:
        typer.echo(_row(m))
    if not models:
        typer.echo("(no local model backends in this gateway's configuration)")


def load_model(
    backend: str = typer.Argument(..., help="The local model backend to load."),
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_ADMIN_KEY", help=KEY_HELP),
) -> None:
    """Load a local model in the running gateway now (it answers a one-token request)."""
    m = _call("POST", url, "/admin/models/load", key, {"backend": backend})
    typer.echo(f"loaded {m['backend']} ({m['model']}) in {m['load_ms'] / 1000:.1f} s")


def unload_model(
    backend: str = typer.Argument(..., help="The local model backend to unload."),
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
    key: str | None = typer.Option(None, "--key", envvar="TIERLM_ADMIN_KEY", help=KEY_HELP),
) -> None:
    """Free a local model's memory in the running gateway now."""
    m = _call("POST", url, "/admin/models/unload", key, {"backend": backend})
    freed = m["unloaded"]
    typer.echo(f"unloaded {m['backend']}" if freed else f"{m['backend']} was not loaded")


def estimate_gb(params_b: float, bits: float) -> float:
    """About how much memory a GGUF of ``params_b`` billion weights needs to serve."""
    return params_b * bits / 8 + params_b * CONTEXT_GB_PER_B + OVERHEAD_GB


def recommend() -> None:
    """Which GGUF sizes fit this machine's RAM (and GPU memory), and which tier each suits."""
    from tierlm import hostinfo

    host = hostinfo.snapshot()
    ram = host.memory_available_bytes / _GB
    vram = max((g.memory_free_bytes for g in host.gpus), default=0) / _GB
    where = f"{ram:.1f} GB RAM available" + (
        f", {vram:.1f} GB free on the best GPU" if vram else ""
    )
    typer.echo(f"this machine: {where}, {host.cpu_count} CPU cores")
    typer.echo(f"{'SIZE':>5} {'QUANT':<7} {'NEEDS':>8}  {'FITS':<10} {'TIER':<5} GOOD FOR")
    for params, tier, good_for in SIZES:
        for quant, bits in QUANTS.items():
            need = estimate_gb(params, bits)
            fits = "GPU" if need <= vram * 0.9 else ("RAM" if need <= ram * 0.9 else "no")
            typer.echo(f"{params:>4g}B {quant:<7} {need:>5.1f} GB  {fits:<10} {tier:<5} {good_for}")
    typer.echo("estimates: weights at the quantization's bits per weight, a 4096-token context")
