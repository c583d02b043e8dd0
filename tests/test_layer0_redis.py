"""The answer cache shared through Redis by two gateway processes (``tierlm serve`` twice, one
config, a real ``redis-server``): an answer one replica stored is served by the other; a
private answer stays in the process that produced it; clearing one clears the shared store."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fakes import serve
from fakes.openai_server import make_app
from server_util import start_serve, upstream_backend


@pytest.fixture(scope="module")
def replicas(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    tmp = tmp_path_factory.mktemp("redis")
    with serve(make_app()) as upstream:
        cfg = {
            "backends": [upstream_backend("site", upstream, "plain")],
            "tiers": [{"name": "site", "backends": ["site"]}],
            "routing": {"complexity_method": "length"},
            "ledger": {"url": "off"},
            "data_dir": str(tmp),
            "cache": {"store": "redis", "redis_url": redis_url},
        }
        procs = [start_serve(cfg, tmp) for _ in range(2)]
        try:
            yield [url for _, url in procs]
        finally:
            for p, _ in procs:
                p.terminate()
                p.wait(timeout=20)


def _ask(url: str, text: str, **headers: str) -> str:
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"temperature": 0, "messages": [{"role": "user", "content": text}]},
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-tierlm-cache"]


def test_one_replica_serves_what_the_other_stored(replicas: list[str]) -> None:
    a, b = replicas
    assert _ask(a, "What is the melting point of iron?") == "miss"
    assert _ask(b, "What is the melting point of iron?") == "hit-exact"
    assert _ask(a, "What is the melting point of iron?") == "hit-exact"


def test_private_answers_stay_in_their_replica(replicas: list[str]) -> None:
    a, b = replicas
    hint = {"x-tierlm-privacy": "private"}
    assert _ask(a, "What is the melting point of lead?", **hint) == "miss"
    assert _ask(a, "What is the melting point of lead?", **hint) == "hit-exact"
    assert _ask(b, "What is the melting point of lead?", **hint) == "miss"


def test_clearing_one_replica_clears_the_shared_store(replicas: list[str]) -> None:
    a, b = replicas
    _ask(a, "What is the melting point of tin?")
    stats = httpx.get(b + "/admin/cache", timeout=5).json()
    assert stats["stores"][1]["store"] == "redis" and stats["stores"][1]["entries"] >= 1
    assert httpx.delete(b + "/admin/cache", timeout=5).json()["cleared"] >= 1
    assert _ask(a, "What is the melting point of tin?") == "miss"
