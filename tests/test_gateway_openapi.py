"""Issue 15: the gateway publishes its OpenAPI document, and schemathesis fuzzes every route
of it against a live gateway (API keys on, in front of the recording upstream): no input
gets a 5xx, none hangs. Bounded: a few examples an operation, a short timeout a call
(about a minute in all on a busy machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from fakes import serve
from fakes.metered_server import make_app
from server_util import ADMIN_KEY, serve_gateway, sha, upstream_backend
from server_util import settings as gateway_settings
from tierlm.server.openapi import openapi_document

schema = schemathesis.openapi.from_dict(openapi_document(keys=True))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ledger = Path(tmp_path_factory.mktemp("ledger")) / "ledger.sqlite3"
    with serve(make_app()) as up:
        s = gateway_settings(
            [upstream_backend("site", up, "metered")],
            [{"name": "site", "backends": ["site"]}],
            server={
                "max_body_bytes": 256 * 1024,
                "api_keys": [{"name": "admin", "hash": sha(ADMIN_KEY), "admin": True}],
            },
            ledger={"url": f"sqlite:///{ledger}"},
        )
        with serve_gateway(s) as url:
            yield url


def test_openapi_document_is_served(gateway: str) -> None:
    r = httpx.get(gateway + "/openapi.json", timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.") and "/v1/chat/completions" in doc["paths"]
    routes = {"/api/chat", "/api/generate", "/api/show", "/v1/feedback", "/admin/report"}
    assert routes <= set(doc["paths"])


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_fuzz_every_route(case: schemathesis.Case, gateway: str) -> None:
    case.call_and_validate(
        base_url=gateway,
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        checks=[not_a_server_error],
        timeout=10,
    )
