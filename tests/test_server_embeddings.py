"""Routed embeddings through the live gateway: the official ``openai`` SDK on
``/v1/embeddings`` and the ``ollama`` client on ``/api/embed``, answered by the in-process
WordLlama embedder or by a recording fake external upstream, under the privacy, key and
ledger rules of chat.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
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

SITE_KEY = "tlm-test-site-only-key-0123456789"
CLOUD = "cloud-embed"


def _settings(upstream: str, tmp: Path, *, prefer: bool, model: str = "text-embed") -> Any:
    cloud = {
        "name": CLOUD,
        "kind": "openai",
        "url": upstream + "/v1",
        "model": model,
        "api_key": "sk-test",
        "boundary": "external",
        "embeddings": True,
        "price": {"input": 100.0, "output": 0.0},
    }
    keys = [
        {"name": "user", "hash": sha(USER_KEY)},
        {"name": "admin", "hash": sha(ADMIN_KEY), "admin": True},
        {"name": "site-only", "hash": sha(SITE_KEY), "max_privacy_boundary": "site"},
    ]
    return settings(
        [upstream_backend("site", upstream, "plain"), cloud],
        [{"name": "site", "backends": ["site"]}],
        embeddings={"prefer": CLOUD if prefer else None, "max_inputs": 64},
        server={"api_keys": keys},
        ledger={"url": None},
        data_dir=str(tmp),
    )


@contextmanager
def _gateway(tmp: Path, *, prefer: bool, model: str = "text-embed") -> Iterator[tuple[str, Any]]:
    with (
        fake_openai_upstream() as up,
        serve_gateway(_settings(up.state.url, tmp, prefer=prefer, model=model)) as url,
    ):
        yield url, up


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    with _gateway(tmp_path_factory.mktemp("local"), prefer=False) as g:
        yield g


@pytest.fixture(scope="module")
def preferred(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    with _gateway(tmp_path_factory.mktemp("preferred"), prefer=True) as g:
        yield g


def _client(url: str, key: str = USER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def _cos(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_sdk_embeds_in_process_by_default(local: tuple[str, Any]) -> None:
    url, up = local
    texts = ["the cat sat on the mat", "a cat is sitting on the mat", "quarterly tax deadline"]
    client = _client(url)
    raw = client.embeddings.with_raw_response.create(model="auto", input=texts)  # base64
    first = raw.parse()
    again = client.embeddings.create(model="auto", input=texts, encoding_format="float")
    vecs = [d.embedding for d in first.data]
    assert [d.index for d in first.data] == [0, 1, 2]
    assert {len(v) for v in vecs} == {256}  # WordLlama's dimension
    assert vecs == [d.embedding for d in again.data]  # deterministic, both encodings agree
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2]) + 0.1
    assert raw.headers["x-tierlm-backend"] == "embedder"
    assert raw.headers["x-tierlm-boundary"] == "process"
    assert first.usage.prompt_tokens > 0
    assert up.state.raw == []  # nothing went upstream


def test_public_input_goes_to_the_preferred_backend(preferred: tuple[str, Any]) -> None:
    url, up = preferred
    up.state.raw.clear()
    raw = _client(url).embeddings.with_raw_response.create(model="auto", input="pump manual")
    out = raw.parse()
    assert raw.headers["x-tierlm-backend"] == CLOUD
    assert raw.headers["x-tierlm-boundary"] == "external"
    assert len(out.data) == 1 and len(out.data[0].embedding) == 8
    assert json.loads(up.state.raw[-1])["input"] == ["pump manual"]


@pytest.mark.parametrize(
    "text", ["card 4111 1111 1111 1111 on file", "write to jane.doe@acme.de today"]
)
def test_sensitive_input_never_leaves_the_process(preferred: tuple[str, Any], text: str) -> None:
    url, up = preferred
    up.state.raw.clear()
    raw = _client(url).embeddings.with_raw_response.create(
        input=["public text", text], model="auto"
    )
    assert raw.headers["x-tierlm-backend"] == "embedder"
    assert raw.headers["x-tierlm-privacy"] == "private"
    assert len(raw.parse().data) == 2
    assert up.state.raw == [], "the external upstream saw nothing"
    # pinning the external backend is refused, not rerouted
    with pytest.raises(openai.PermissionDeniedError):
        _client(url).embeddings.create(model=CLOUD, input=text)
    assert up.state.raw == []


def test_enhanced_stays_on_the_site_and_says_why(preferred: tuple[str, Any]) -> None:
    url, up = preferred
    up.state.raw.clear()
    r = httpx.post(
        url + "/v1/embeddings",
        json={"input": "plain public words"},
        headers={"authorization": f"Bearer {USER_KEY}", "x-tierlm-privacy": "enhanced"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tierlm"]["backend"] == "embedder"
    assert any("redacted input embeds differently" in why for why in body["tierlm"]["reasons"])
    assert up.state.raw == []


def test_site_only_key_never_reaches_external(preferred: tuple[str, Any]) -> None:
    url, up = preferred
    up.state.raw.clear()
    client = _client(url, SITE_KEY)
    raw = client.embeddings.with_raw_response.create(model="auto", input="public words")
    assert raw.headers["x-tierlm-backend"] == "embedder"
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model=CLOUD, input="public words")
    assert up.state.raw == []


def test_external_attempt_is_billed_and_audited(tmp_path: Path) -> None:
    with _gateway(tmp_path, prefer=True) as (url, up):
        out = _client(url).embeddings.create(model="auto", input=["one two three", "four"])
        sent = up.state.raw[-1]
    assert out.usage.prompt_tokens == 4
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        rows = db.execute("SELECT backend, prompt_tokens, cost_usd, outcome FROM requests")
        (backend, tokens, cost, outcome) = rows.fetchone()
        audit = db.execute("SELECT backend, digest FROM audit").fetchall()
    assert (backend, tokens, outcome) == (CLOUD, 4, "ok")
    assert cost == pytest.approx(4 * 100.0 / 1e6)
    assert audit == [(CLOUD, hashlib.sha256(sent).hexdigest())]


def test_a_failing_upstream_falls_back_in_process(tmp_path: Path) -> None:
    with _gateway(tmp_path, prefer=True, model="embed-down") as (url, up):
        raw = _client(url).embeddings.with_raw_response.create(model="auto", input="words")
        assert raw.headers["x-tierlm-backend"] == "embedder"
        assert len(up.state.raw) == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"input": []}, "empty list"),
        ({"input": ""}, "must not be empty"),
        ({"input": [1, 2, 3]}, "token-id arrays"),
        ({"input": [[1, 2], [3]]}, "token-id arrays"),
        ({"input": ["ok", 3.5]}, "input[1]: must be a string"),
        ({"input": {"text": "x"}}, "string or a list"),
        ({"input": ["x"] * 65}, "at most 64"),
        ({"input": "x" * 40_000}, "longer than"),
        ({"input": "x", "dimensions": 3}, "dimensions"),
        ({"input": "x", "dimensions": "3"}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "model": "nope"}, "cannot embed"),
        ({"input": "x", "model": 3}, "model"),
        ({"input": "x", "stream": True}, "unknown field"),
        ({"model": "auto"}, "input: field required"),
    ],
)
def test_bad_inputs_are_clear_400s(local: tuple[str, Any], body: Any, needle: str) -> None:
    url, _ = local
    auth = {"authorization": f"Bearer {USER_KEY}"}
    r = httpx.post(url + "/v1/embeddings", json=body, headers=auth)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    r = httpx.post(url + "/api/embed", json=body, headers=auth)  # OpenAI-only fields: unknown
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


def test_lone_surrogate_is_a_400(local: tuple[str, Any]) -> None:
    url, _ = local
    r = httpx.post(
        url + "/v1/embeddings",
        content=b'{"input": ["fine", "bad \\ud800 text"]}',
        headers={"authorization": f"Bearer {USER_KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]


def test_missing_key_is_401(local: tuple[str, Any]) -> None:
    r = httpx.post(local[0] + "/v1/embeddings", json={"input": "x"})
    assert r.status_code == 401


def test_ollama_client_embed(local: tuple[str, Any]) -> None:
    url, _ = local
    auth = {"authorization": f"Bearer {USER_KEY}"}
    with ollama.Client(host=url, headers=auth) as client:
        out = client.embed(model="auto", input=["turn on pump 3", "turn on the pump"])
        one = client.embed(model="embedder", input="turn on pump 3")
    assert len(out.embeddings) == 2 and {len(v) for v in out.embeddings} == {256}
    assert one.embeddings[0] == pytest.approx(out.embeddings[0])
    assert out.model == "wordllama"
