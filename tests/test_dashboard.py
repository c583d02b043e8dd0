"""Issue 14: the dashboard, in a real headless Chromium (Debian's ``chromium`` driven by
Playwright) over a real gateway with a ledger, the fake OpenAI-wire upstream, a rule, the
answer cache and a budget.

The page signs in with the admin key, loads with no console error, no page error and no
dialog (a backend, a model and a key are named with markup that would run if it were
parsed), asks nothing of any host but the gateway, shows the numbers ``/admin/report``
answers, and follows new traffic without a reload. Without a browser: the routes' auth
(401 without a key, 403 for a user key), content types, the security policy, and that the
HTML carries no data.

Chromium missing: skipped with the reason, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest

from server_util import (
    ADMIN_KEY,
    USER_KEY,
    fake_openai_upstream,
    serve_gateway,
    settings,
    sha,
    upstream_backend,
)

XSS_BACKEND = "<img src=x onerror=alert(1)>"
XSS_MODEL = '"><svg onload=alert(2)>'
XSS_KEY = "<script>alert(3)</script>"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
USER = {"authorization": f"Bearer {USER_KEY}"}
SVG_NS = "http://www.w3.org/2000/svg"  # a namespace name in the script, never fetched


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Debian's chromium is missing in CI: scripts/test installs it")
        pytest.skip("no chromium here (apt-get install chromium; scripts/test installs it)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module (starting one costs about a second)."""
    path = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        b = p.chromium.launch(executable_path=path, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """local: a backend that always answers 503, then one named with markup (fallbacks);
    cloud: a paid external backend under a $5 monthly budget; a rule; the answer cache."""
    ledger = Path(tmp_path_factory.mktemp("ledger")) / "ledger.sqlite3"
    with fake_openai_upstream() as up:
        s = settings(
            [
                upstream_backend("edge", up.state.url, "unavailable"),
                upstream_backend(XSS_BACKEND, up.state.url, XSS_MODEL),
                upstream_backend(
                    "cloud",
                    up.state.url,
                    "plain",
                    boundary="external",
                    api_key="sk-test",
                    price={"input": 1.0, "output": 2.0},
                ),
            ],
            [
                {"name": "local", "backends": ["edge", XSS_BACKEND]},
                {"name": "cloud", "backends": ["cloud"]},
            ],
            server={
                "api_keys": [
                    {"name": XSS_KEY, "hash": sha(USER_KEY)},
                    {"name": "ops", "hash": sha(ADMIN_KEY), "admin": True},
                ]
            },
            ledger={"url": f"sqlite:///{ledger}"},
            budgets={"limits": [{"usd": 5.0}]},
            # deferred lines wait: the only off-peak hour is twelve hours away
            batch={"window": {"off_peak_hours": [(time.gmtime().tm_hour + 12) % 24]}},
            rules=[
                {
                    "name": "ping",
                    "match": {"regex": "(?i)^ping$"},
                    "action": {"kind": "template", "text": "pong"},
                }
            ],
        )
        with serve_gateway(s) as url:
            yield url


def _send(c: httpx.Client, text: str, **kw: Any) -> httpx.Response:
    headers = {**USER, **kw.pop("headers", {})}
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], **kw}
    r = c.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r


def _traffic(c: httpx.Client, tag: str) -> int:
    """Requests over every path the page shows; how many were sent."""
    sent = [
        _send(c, f"hello {tag}"),  # local, after the 503 backend failed: a fallback
        _send(c, f"what is 2+2 {tag}", temperature=0),
        _send(c, f"what is 2+2 {tag}", temperature=0),  # the answer cache
        _send(c, "ping"),  # the rule
        _send(c, f"summarise this {tag}", model="cloud"),  # paid, external
        _send(c, f"keep it here {tag}", headers={"x-tierlm-privacy": "private"}),
    ]
    assert sent[2].headers["x-tierlm-cache"] == "hit-exact"
    assert sent[3].headers["x-tierlm-tier"] == "rules"
    assert sent[4].headers["x-tierlm-tier"] == "cloud"
    return len(sent)


def _defer(c: httpx.Client, n: int) -> None:
    """A batch of ``n`` lines through the Batch API; they wait for their window."""
    lines = [
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "auto", "messages": [{"role": "user", "content": f"later {i}"}]},
            }
        )
        for i in range(n)
    ]
    f = c.post(
        "/v1/files",
        files={"file": ("in.jsonl", "\n".join(lines).encode())},
        data={"purpose": "batch"},
        headers=USER,
    )
    assert f.status_code == 200, f.text
    body = {"input_file_id": f.json()["id"], "endpoint": "/v1/chat/completions"}
    b = c.post("/v1/batches", json={**body, "completion_window": "24h"}, headers=USER)
    assert b.status_code == 200, b.text


def _report(c: httpx.Client, at_least: int) -> dict[str, Any]:
    """``/admin/report`` once the ledger's writer has stored ``at_least`` requests."""
    deadline = time.monotonic() + 30
    while True:
        rep: dict[str, Any] = c.get("/admin/report", params={"since": "24h"}, headers=ADMIN).json()
        if rep["requests"] >= at_least:
            return rep
        assert time.monotonic() < deadline, f"ledger holds {rep['requests']} of {at_least}"
        time.sleep(0.1)  # the writer commits behind the answers: poll for it


def _value(page: Any, selector: str) -> str:
    value = page.locator(selector).get_attribute("data-value")
    assert value is not None, selector
    return str(value)


def _shows(page: Any, rep: dict[str, Any]) -> None:
    """The page shows ``rep``'s numbers."""
    assert int(_value(page, '[data-k="requests"]')) == rep["requests"]
    for k in ("cost_usd", "fallback_rate", "escalation_rate", "error_rate"):
        assert float(_value(page, f'[data-k="{k}"]')) == pytest.approx(rep[k]), k
    for k in ("privacy_kept_local", "budget_kept_local"):
        assert int(_value(page, f'[data-k="{k}"]')) == rep[k], k
    tiers = {g["name"]: g for g in rep["by_tier"]}
    for pseudo in ("cache", "rules"):
        assert int(_value(page, f'[data-k="{pseudo}"]')) == tiers[pseudo]["requests"]
    rows = page.locator("#tiers tbody tr")
    assert [rows.nth(i).get_attribute("data-tier") for i in range(rows.count())] == list(tiers)
    latency = {lat["name"]: lat for lat in rep["latency"]}
    for name, g in tiers.items():
        row = f'#tiers tr[data-tier="{name}"]'
        assert int(_value(page, f'{row} [data-f="requests"]')) == g["requests"]
        assert float(_value(page, f'{row} [data-f="share"]')) == pytest.approx(g["share"])
        assert float(_value(page, f'{row} [data-f="cost_usd"]')) == pytest.approx(g["cost_usd"])
        for q in ("p50_ms", "p90_ms", "p99_ms"):
            assert float(_value(page, f'{row} [data-f="{q}"]')) == latency[name][q], (name, q)
    want: dict[str, float] = {}
    for k, v in rep["deferred"].items():  # the queue, shown once anything is in it
        want.update({f"{k}.{s}": n for s, n in v.items()} if isinstance(v, dict) else {k: v})
    if not rep["deferred"]["batches"] and not any(
        v for k, v in want.items() if not k.endswith("_usd")
    ):
        want = {}
    shown = page.locator("#deferred [data-d]")
    got = {
        shown.nth(i).get_attribute("data-d"): float(shown.nth(i).get_attribute("data-value"))
        for i in range(shown.count())
    }
    assert got == pytest.approx(want)
    (bucket,) = rep["budgets"]
    shown = page.locator(f'#budgets [data-bucket="{bucket["bucket"]}"]')
    assert float(shown.get_attribute("data-spent") or "nan") == pytest.approx(bucket["spent_usd"])
    assert float(shown.get_attribute("data-limit") or "nan") == bucket["limit_usd"]


def test_dashboard_in_chromium_matches_the_report_and_follows_traffic(
    browser: Any, gateway: str
) -> None:
    page = browser.new_page()
    errors: list[str] = []
    dialogs: list[str] = []
    urls: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: urls.append(r.url))
    with httpx.Client(base_url=gateway, timeout=30) as c:
        n = _traffic(c, "first")
        rep = _report(c, n)
        assert rep["privacy_kept_local"] >= 1 and rep["fallback_rate"] > 0  # not vacuous

        page.goto(gateway + "/dashboard?poll=300")
        page.wait_for_selector("#login:not([hidden])")
        assert page.locator("#main").is_hidden()
        page.fill("#key", ADMIN_KEY)
        page.click("#login button[type=submit]")
        page.wait_for_function(
            "n => document.querySelector('[data-k=requests]').dataset.value == n", arg=n
        )
        _shows(page, _report(c, n))
        page.evaluate("window.stillTheSamePage = true")
        renders = int(page.evaluate("document.body.dataset.renders"))

        assert page.locator('[data-deferred="none"]').count() == 1
        m = n + _traffic(c, "second")
        _defer(c, 3)
        rep = _report(c, m)
        assert rep["deferred"]["waiting"] == 3
        page.wait_for_function(
            "m => document.querySelector('[data-k=requests]').dataset.value == m"
            " && document.querySelector('#deferred [data-d=waiting]')?.dataset.value == 3",
            arg=m,
        )
        _shows(page, rep)
        assert page.evaluate("window.stillTheSamePage") is True  # updated without a reload
        assert int(page.evaluate("document.body.dataset.renders")) > renders

        # the names with markup are text on the page, and ran nothing
        backend = page.locator("#backends tbody tr").filter(has_text=XSS_BACKEND)
        assert backend.get_attribute("data-backend") == XSS_BACKEND
        assert backend.locator("td").nth(1).inner_text() == XSS_MODEL
        assert page.locator("#keys").inner_text().count(XSS_KEY) == 1
        assert page.evaluate("document.querySelectorAll('main img, main script').length") == 0
        edge = page.locator('#backends tr[data-backend="edge"]')
        assert edge.get_attribute("data-breaker") == "open"  # five 503s in a row
    assert errors == [] and dialogs == []
    assert urls and all(u.startswith((gateway + "/", "data:")) for u in urls), urls
    page.close()


def test_dashboard_routes_auth_and_content(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=30) as c:
        page = c.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert 'data-auth="key"' in page.text
        for name in (XSS_BACKEND, XSS_MODEL, XSS_KEY, "cloud", "unavailable", "ops"):
            assert name not in page.text  # no configuration, no data before a key
        js = c.get("/dashboard/dashboard.js")
        assert js.headers["content-type"].startswith("text/javascript")
        css = c.get("/dashboard/dashboard.css")
        assert css.headers["content-type"].startswith("text/css")
        missing = c.get("/dashboard/secrets.txt")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
        for text in (page.text, js.text, css.text):
            assert re.findall(r"https?://[^\s\"'`)]*", text.replace(SVG_NS, "")) == []

        none = c.get("/admin/dashboard")
        assert none.status_code == 401 and none.json()["error"]["type"] == "authentication_error"
        user = c.get("/admin/dashboard", headers=USER)
        assert user.status_code == 403 and user.json()["error"]["type"] == "permission_error"
        bad = c.get("/admin/dashboard", params={"since": "soon"}, headers=ADMIN)
        assert bad.status_code == 400 and "expected a span" in bad.json()["error"]["message"]

        before = _report(c, 0)["requests"]
        _send(c, "hello routes")
        rep = _report(c, before + 1)
        data = c.get("/admin/dashboard", params={"since": "24h"}, headers=ADMIN)
        assert data.status_code == 200 and data.headers["cache-control"] == "no-store"
        body = data.json()
        same = {k: v for k, v in body["report"].items() if k not in ("since", "until", "seconds")}
        assert same == {k: v for k, v in rep.items() if k not in ("since", "until", "seconds")}
        live = body["live"]
        assert live["tiers"] == ["local", "cloud"] and live["ledger"] is True
        assert [b["name"] for b in live["backends"]] == ["edge", XSS_BACKEND, "cloud"]
        assert live["cache"]["enabled"] is True


def test_assets_ship_in_the_package() -> None:
    shipped = files("tierlm.server.dashboard")
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert shipped.joinpath(name).is_file(), name


def test_dashboard_sign_in_refusals_and_sign_out(browser: Any, gateway: str) -> None:
    """A wrong key and a user key are refused with the gateway's own message, the page shows
    no data, and signing out forgets the key."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(gateway + "/dashboard?poll=300")
    for key, message in (("wrong", "invalid API key"), (USER_KEY, "is not an admin key")):
        page.fill("#key", key)
        page.click("#login button[type=submit]")
        page.wait_for_function(
            "m => document.querySelector('#login-error').textContent.includes(m)", arg=message
        )
        assert page.locator("#main").is_hidden()
        assert page.evaluate("sessionStorage.length") == 0
    page.fill("#key", ADMIN_KEY)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#main:not([hidden])")
    page.click("#signout")
    page.wait_for_selector("#login:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()  # nothing kept: the form again, no data asked for
    page.wait_for_selector("#login:not([hidden])")
    assert errors == []
    page.close()


def test_dashboard_without_keys_or_ledger(browser: Any) -> None:
    """No keys: no sign-in; no ledger: the live state alone, and no error in the page."""
    with fake_openai_upstream() as up:
        s = settings(
            [upstream_backend("site", up.state.url, "plain")],
            [{"name": "site", "backends": ["site"]}],
        )
        with serve_gateway(s) as url:
            assert httpx.get(url + "/admin/dashboard", timeout=30).json()["report"] is None
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/dashboard?poll=300")
            page.wait_for_function("() => document.body.dataset.renders >= 2")
            assert page.locator("#login").is_hidden() and page.locator("#signout").is_hidden()
            assert page.locator("#ledger-off").is_visible()
            assert page.locator('#backends tr[data-backend="site"]').count() == 1
            assert page.locator('[data-deferred="none"]').count() == 1
            assert errors == []
            page.close()
