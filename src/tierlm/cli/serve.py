"""``tierlm serve``: the OpenAI- and Ollama-compatible gateway."""

from __future__ import annotations

from pathlib import Path

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, load


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
    host: str | None = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default 8080)."),
) -> None:
    """Serve /v1/chat/completions, /v1/models, the Ollama API, /health and /metrics."""
    from tierlm.server import serve as run

    server: dict[str, object] = {}
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    settings = load(config, preset, **({"server": server} if server else {}))
    run(settings)
