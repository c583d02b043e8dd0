"""What the gateway tells its operator: log set-up, the start-up summary and the access log.

- :func:`log_config`: the logging configuration ``tierlm serve`` hands to uvicorn, covering
  uvicorn's loggers and tierlm's own (``tierlm.*``: failed attempts, retries, circuit-breaker
  changes, privacy refusals, and ``tierlm.access``), all to stderr at one level; repeated
  messages are rate-limited (:mod:`tierlm.server.limits`), access lines never. Format
  ``text`` (one readable line per record) or ``json`` (one JSON object per line: ``ts``,
  ``level``, ``logger``, ``message`` and the record's fields, for log collectors).
- :func:`startup`: once, before the first request: the bind address, the deployment, each
  tier with its backends, each backend with its boundary and whether it answers now, and
  warnings for what will fail: an API key variable that is not set, a backend that is
  unreachable (or whose model is missing), a non-loopback bind without API keys. Backends
  are checked concurrently, each for at most :data:`STARTUP_CHECK_S` seconds, and the results
  seed the health cache routing reads.
- :func:`access`: one line per finished request: request id, route, tier, backend, status,
  latency and tokens, and the client's own ``x-request-id`` (``client_id=``, when it sent a
  sane one: :func:`tierlm.server.gateway.client_request_id`) to join with its logs. Never
  prompt or answer text.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import TYPE_CHECKING, Any, Literal

from tierlm import __version__

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig
    from tierlm.server.gateway import Gateway
    from tierlm.types import Usage

LogFormat = Literal["text", "json"]
STARTUP_CHECK_S = 1.0  # the longest one backend's check may delay start-up
log = logging.getLogger("tierlm.server")
access_log = logging.getLogger("tierlm.access")
# attributes every LogRecord has; anything else on a record is a field it carries
_STANDARD = {*logging.makeLogRecord({}).__dict__, "message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def log_config(level: str = "info", fmt: LogFormat = "text") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for uvicorn's loggers and tierlm's."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    lvl = level.upper()
    mine = {"handlers": ["stderr"], "level": lvl, "propagate": False}
    stream = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "tierlm"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tierlm": formatter},
        # the access log has a handler of its own, which the rate limit on the shared one
        # (tierlm.server.limits.rate_limit_logs) does not hold back: one line per request
        "handlers": {"stderr": stream, "access": dict(stream)},
        "loggers": {
            "tierlm": mine,
            "tierlm.access": {"handlers": ["access"], "level": lvl, "propagate": False},
            "uvicorn": mine,
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def missing_key(cfg: BackendConfig) -> str | None:
    """The variable to set when an external backend has no API key, else ``None``."""
    from tierlm.backends.http_common import resolve_api_key
    from tierlm.config.backends import HttpConfig
    from tierlm.config.providers import PROVIDERS

    if not isinstance(cfg, HttpConfig):
        return None  # no key to miss: nothing goes over the network
    provider = PROVIDERS.get(cfg.provider_name() or "")
    var = cfg.api_key_env or (provider.key_env if provider else None)
    if cfg.where.label != "external" or resolve_api_key(cfg, var) is not None:
        return None
    return var or "api_key_env"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def startup(gw: Gateway) -> None:
    """Check every backend (concurrently, briefly) and log the summary and its warnings."""
    s = gw.settings
    checks = await gw.health.refresh(STARTUP_CHECK_S)
    where = f"http://{s.server.host}:{s.server.port}"
    log.info(
        "tierlm %s serving %s on %s (OpenAI /v1, Ollama /api)",
        __version__,
        s.deployment,
        where,
        extra={"event": "startup", "bind": where, "deployment": s.deployment},
    )
    for t in s.tiers:
        log.info("tier %s: %s", t.name, ", ".join(t.backends), extra={"tier": t.name})
    for cfg in s.backends:
        h = checks.get(cfg.name)
        state = "ok" if h is None or h.ok is not False else "down"
        loaded = "" if h is None or h.loaded is None else (", loaded" if h.loaded else ", cold")
        detail = f": {h.detail}" if h is not None and h.detail else ""
        fields = {"backend": cfg.name, "boundary": cfg.where.label, "state": state}
        if state == "down":
            log.warning(
                "backend %s (%s) is not usable%s; requests routed to it will fail over",
                cfg.name,
                cfg.where.label,
                detail,
                extra=fields,
            )
        else:
            log.info(
                "backend %s (%s): %s%s", cfg.name, cfg.where.label, state, loaded, extra=fields
            )
        var = missing_key(cfg)
        if var is not None:
            log.warning(
                "backend %s has no API key: %s is not set; every call to it will fail",
                cfg.name,
                var,
                extra={"backend": cfg.name, "missing_key": var},
            )
    if not s.server.api_keys and not _loopback(s.server.host):
        log.warning(
            "listening on %s without API keys: anyone who reaches this port may use every "
            "backend; add server.api_keys (`tierlm keys hash --generate`)",
            s.server.host,
            extra={"event": "open_bind", "bind": where},
        )


def access(
    route: str,
    request_id: str | None,
    tier: str,
    backend: str,
    status: int,
    seconds: float,
    usage: Usage | None,
    client_id: str | None = None,
) -> None:
    """The access log line of one finished request (counts and names, never text);
    ``client_id``: the client's ``x-request-id``, already checked by the gateway."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    pt = usage.prompt_tokens if usage is not None else 0
    ct = usage.completion_tokens if usage is not None else 0
    ms = round(seconds * 1000.0, 1)
    access_log.info(
        "%s %s tier=%s backend=%s status=%d %.1f ms tokens=%d+%d client_id=%s",
        request_id or "-",
        route,
        tier or "-",
        backend or "-",
        status,
        ms,
        pt,
        ct,
        client_id or "-",
        extra={
            "request_id": request_id,
            "client_request_id": client_id,
            "route": route,
            "tier": tier or None,
            "backend": backend or None,
            "status": status,
            "latency_ms": ms,
            "prompt_tokens": pt,
            "completion_tokens": ct,
        },
    )
