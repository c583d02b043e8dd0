"""``tierlm serve``: the OpenAI- and Ollama-compatible gateway.

It logs to stderr for its operator (:mod:`tierlm.server.oplog`): a start-up summary (tiers,
backends with boundary and reachability, missing keys, the bind address) with warnings for
what will fail, one access line per request, and tierlm's own records (failed attempts,
retries, circuit-breaker changes). ``--log-level`` (``TIERLM_LOG_LEVEL``) and
``--log-format json`` (``TIERLM_LOG_FORMAT``: one JSON object per line) for log collectors.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from tierlm.cli.common import CONFIG_HELP, PRESET_HELP, load


class Level(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class Format(StrEnum):
    text = "text"
    json = "json"


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    preset: str | None = typer.Option(None, "--preset", "-p", help=PRESET_HELP),
    host: str | None = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default 8080)."),
    log_level: Level = typer.Option(
        Level.info, "--log-level", envvar="TIERLM_LOG_LEVEL", case_sensitive=False
    ),
    log_format: Format = typer.Option(
        Format.text,
        "--log-format",
        envvar="TIERLM_LOG_FORMAT",
        help="json: one JSON object per line, for log collectors.",
    ),
) -> None:
    """Serve /v1/chat/completions, /v1/models, the Ollama API, /health and /metrics.

    SIGHUP (or POST /admin/reload) reloads the configuration without a restart."""
    from tierlm.server import serve as run

    server: dict[str, object] = {}
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    overrides = {"server": server} if server else {}
    run(
        load(config, preset, **overrides),
        log_level=log_level.lower(),
        log_format="json" if log_format == "json" else "text",
        reload=lambda: load(config, preset, **overrides),
    )
