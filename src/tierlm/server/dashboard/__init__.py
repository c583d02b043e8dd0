"""The operations dashboard: one small page, its two assets, and the JSON it polls.

``GET /dashboard`` answers the page: static HTML (``index.html`` here, shipped in the
package with ``dashboard.js`` and ``dashboard.css``, served at ``/dashboard/NAME``) that holds
no data at all, only whether the gateway asks for a key. No URL in it leaves the gateway, and
its ``Content-Security-Policy`` lets the browser load nothing from elsewhere, nor run inline
script.

``GET /admin/dashboard?since=24h`` (an admin key when keys are configured, like every
``/admin/*`` route) answers what the page draws: ``report``, the ledger's report over the
period exactly as ``/admin/report?since=...`` answers it (``null`` when the ledger is off),
and ``live``, this process's state now: the tiers in order, each backend's health and circuit
breaker, the answer cache's stats (as ``/admin/cache``), the requests in flight.

A browser cannot put a bearer key on a navigation, so the key is asked once by the page, kept
in the tab's ``sessionStorage`` and sent as ``Authorization: Bearer`` on each poll; a missing
or wrong key is 401 and a key that is not an admin key 403, in OpenAI's error shape. The page
writes every name (tier, backend, key, bucket) as text, never as markup.
"""

from __future__ import annotations

import asyncio
import time
from functools import cache
from importlib.resources import files
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tierlm.errors import InvalidRequest
from tierlm.ledger.reports import parse_since
from tierlm.server.gateway import Gateway, json_response

ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
DEFAULT_SINCE = "24h"
# the page and its assets load nothing from anywhere else, and run no inline script
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@cache
def asset(name: str) -> str:
    """A file of the dashboard, from the installed package (read once)."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


async def page(request: Request) -> Response:
    """``GET /dashboard``: the page, which carries no data (its script asks for it)."""
    gw: Gateway = request.app.state.gateway
    html = asset("index.html").replace("{{auth}}", "key" if gw.keys.enabled else "off")
    return Response(html, media_type="text/html; charset=utf-8", headers=_HEADERS)


async def static(request: Request) -> Response:
    """``GET /dashboard/NAME``: the page's script and style sheet."""
    name = request.path_params["name"]
    if name not in ASSETS:
        raise HTTPException(404)
    return Response(asset(name), media_type=ASSETS[name], headers=_HEADERS)


async def data(request: Request) -> Response:
    """``GET /admin/dashboard?since=24h``: the report and the live state (admin)."""
    from tierlm.ledger.http import report_json  # the ledger's modules load with a ledger

    gw: Gateway = request.app.state.gateway
    gw.keys.require_admin(request.headers)
    since = request.query_params.get("since", DEFAULT_SINCE)
    try:
        parse_since(since)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    now = time.time()
    if gw.ledger is None:
        report, state = None, await live(gw)
    else:  # the report (in a thread) while the health checks are out
        report, state = await asyncio.gather(report_json(gw.ledger, since), live(gw))
    body = {"since": since, "now": now, "report": report, "live": state}
    return json_response(body, headers={"cache-control": "no-store"})


async def live(gw: Gateway) -> dict[str, Any]:
    """This process's state now: tiers, backends (health, breaker), cache, in flight."""
    checks = await gw.health.current()
    breakers = gw.router.executor.breakers.states()
    tiers_of: dict[str, list[str]] = {}
    for t in gw.settings.tiers:
        for b in t.backends:
            tiers_of.setdefault(b, []).append(t.name)
    backends = []
    for name, cfg in gw.backend_configs.items():
        h = checks.get(name)
        backends.append(
            {
                "name": name,
                "model": cfg.model,
                "tiers": tiers_of.get(name, []),
                "boundary": gw.boundary[name],
                "ok": None if h is None else h.ok,
                "detail": None if h is None else h.detail,
                "latency_ms": None if h is None else h.latency_ms,
                "breaker": breakers.get(name, "closed"),
            }
        )
    return {
        "tiers": gw.tiers,
        "backends": backends,
        "cache": await gw.cache_stats(),
        "in_flight": gw.metrics.in_flight,
        "ledger": gw.ledger is not None,
        "started": gw.started,
    }
