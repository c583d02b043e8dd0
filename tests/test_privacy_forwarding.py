"""Every field the gateway forwards goes through the one privacy module (issue 15, item 1).

A live gateway (the real app under uvicorn) routes to a ``site`` tier and an ``external``
``cloud`` tier, each on its own recording fake upstream; ``optimize: quality`` puts the cloud
first whenever the privacy level allows it. For each field that once leaked, an e-mail
address and a card number in that field:

- under ``public``: the request stays at the site (no external call at all);
- under ``enhanced``: the cloud answers, and the recorded upstream body holds the redacted
  form in that field and the secrets nowhere; the audit digest is the SHA-256 of the exact
  bytes the upstream received.

Fields tierlm does not know are refused with a 400 naming them (nothing is sent); message
keys it does not know are dropped. A property test puts a secret at random JSON paths.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from fakes import serve
from fakes.anthropic_server import make_app as anthropic_app
from fakes.ollama_server import make_app as ollama_app
from fakes.openai_server import make_app
from server_util import settings as gateway_settings
from server_util import upstream_backend
from tierlm.privacy import PrivacyGuard
from tierlm.server import create_app

EMAIL = "maria.keller@posteo.de"


def _luhn(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it a valid card number."""
    total = 0
    for i, ch in enumerate(reversed(prefix + "0")):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return prefix + str((10 - total % 10) % 10)


CARD = _luhn("455673758689985")
CARD_TEXT = " ".join(CARD[i : i + 4] for i in range(0, 16, 4))
SECRET = f"write to {EMAIL} and charge card {CARD_TEXT} today"
Body = dict[str, Any]


@dataclass
class Rig:
    url: str
    app: Starlette
    site: Starlette
    cloud: Starlette

    def reset(self) -> None:
        for up in (self.site, self.cloud):
            up.state.requests.clear()
            up.state.raw.clear()

    @property
    def cloud_raw(self) -> list[bytes]:
        return list(self.cloud.state.raw)

    def audit_digests(self) -> set[str]:
        ledger = self.app.state.gateway.ledger
        assert ledger.flush(10)
        return {r.digest for r in ledger.audit_list(limit=10_000)}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("privacy")
    site_up, cloud_up = make_app(), make_app()
    with serve(site_up) as site_url, serve(cloud_up) as cloud_url:
        s = gateway_settings(
            [
                upstream_backend("site", site_url, "plain"),
                upstream_backend(
                    "cloud", cloud_url, "gpt", boundary="external", api_key="sk-test-0123"
                ),
            ],
            [{"name": "site", "backends": ["site"]}, {"name": "cloud", "backends": ["cloud"]}],
            ledger={"url": f"sqlite:///{tmp / 'ledger.sqlite3'}"},
            data_dir=str(tmp),
        )
        app = create_app(s)
        with serve(app, lifespan="on", start_within=60, grace=2) as url:
            yield Rig(url, app, site_up, cloud_up)


def _post(
    rig: Rig, body: Body, privacy: str, route: str = "/v1/chat/completions"
) -> httpx.Response:
    headers = {"x-tierlm-optimize": "quality", "x-tierlm-privacy": privacy}
    return httpx.post(rig.url + route, json=body, headers=headers, timeout=30)


def _base() -> Body:
    return {"model": "auto", "messages": [{"role": "user", "content": "Say hello."}]}


def _tool(description: str = "Look a customer up.", param: str = "Who.") -> list[Body]:
    params = {"type": "object", "properties": {"who": {"type": "string", "description": param}}}
    return [
        {
            "type": "function",
            "function": {"name": "lookup", "description": description, "parameters": params},
        }
    ]


def _with(**fields: Any) -> Callable[[], Body]:
    return lambda: {**_base(), **fields}


def _messages(*messages: Body) -> Callable[[], Body]:
    return lambda: {**_base(), "messages": list(messages)}


# field -> (request body, where that field is in the OpenAI body the cloud receives)
FIELDS: dict[str, tuple[Callable[[], Body], Callable[[Body], Any]]] = {
    "user": (_with(user=SECRET), lambda b: b["user"]),
    "metadata": (_with(metadata={"note": SECRET}), lambda b: b["metadata"]["note"]),
    "prediction.content": (
        _with(prediction={"type": "content", "content": SECRET}),
        lambda b: b["prediction"]["content"],
    ),
    "response_format.json_schema": (
        _with(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": {"type": "object", "description": SECRET}},
            }
        ),
        lambda b: b["response_format"]["json_schema"]["schema"]["description"],
    ),
    "tools.function.description": (
        _with(tools=_tool(description=SECRET)),
        lambda b: b["tools"][0]["function"]["description"],
    ),
    "tools.parameter.description": (
        _with(tools=_tool(param=SECRET)),
        lambda b: b["tools"][0]["function"]["parameters"]["properties"]["who"]["description"],
    ),
    "message.name": (
        _messages({"role": "user", "name": SECRET, "content": "Say hello."}),
        lambda b: b["messages"][0]["name"],
    ),
    "part.refusal": (
        _messages(
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": SECRET}]},
            {"role": "user", "content": "Please do."},
        ),
        lambda b: b["messages"][1]["content"][0]["refusal"],
    ),
    "part.file": (
        _messages(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Summarise the file."},
                    {"type": "file", "file": {"filename": SECRET, "file_data": "JVBERi0xLjQ="}},
                ],
            }
        ),
        lambda b: b["messages"][0]["content"][1]["file"]["filename"],
    ),
    "tool_call_id": (
        _messages(
            {"role": "user", "content": "Look her up."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": SECRET,
                        "type": "function",
                        "function": {"name": "lookup", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": SECRET, "content": "no record"},
        ),
        lambda b: b["messages"][2]["tool_call_id"],
    ),
    "stop": (_with(stop=[SECRET]), lambda b: b["stop"][0]),
}
# Ollama's /api/chat: its ``format`` and ``tools`` (forwarded to the OpenAI-wire cloud).
OLLAMA_FIELDS: dict[str, tuple[Callable[[], Body], Callable[[Body], Any]]] = {
    "ollama.format": (
        _with(format={"type": "object", "description": SECRET}, stream=False),
        lambda b: b["response_format"]["json_schema"]["schema"]["description"],
    ),
    "ollama.tools": (
        _with(tools=_tool(description=SECRET), stream=False),
        lambda b: b["tools"][0]["function"]["description"],
    ),
}
ALL = {k: (*v, "/v1/chat/completions") for k, v in FIELDS.items()}
ALL.update({k: (*v, "/api/chat") for k, v in OLLAMA_FIELDS.items()})


def _leaks(raw: bytes) -> bool:
    text = raw.decode()
    return EMAIL in text or CARD in text or CARD_TEXT in text


@pytest.mark.parametrize("field", list(ALL))
def test_sensitive_field_under_public_stays_at_the_site(rig: Rig, field: str) -> None:
    make, _, route = ALL[field]
    rig.reset()
    resp = _post(rig, make(), "public", route)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-tierlm-tier"] == "site"
    assert resp.headers["x-tierlm-privacy"] == "private"
    assert rig.cloud_raw == []
    (raw,) = rig.site.state.raw
    assert _leaks(raw)  # the site got it as it was: it may


@pytest.mark.parametrize("field", [f for f in ALL if f != "part.file"])  # files never leave
def test_sensitive_field_under_enhanced_leaves_only_redacted(rig: Rig, field: str) -> None:
    make, where, route = ALL[field]
    rig.reset()
    resp = _post(rig, make(), "enhanced", route)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-tierlm-tier"] == "cloud"
    (raw,) = rig.cloud_raw
    assert not _leaks(raw), raw
    value = where(json.loads(raw))
    assert "[EMAIL]" in value and "[PAYMENT_CARD]" in value, value
    assert hashlib.sha256(raw).hexdigest() in rig.audit_digests()


def test_an_enhanced_request_the_redactor_cannot_clean_does_not_leave(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PrivacyGuard, "redact", lambda self, request: None)
    rig.reset()
    resp = _post(rig, {**_base(), "user": SECRET}, "enhanced")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-tierlm-tier"] == "site"  # the cloud was skipped, the site answered
    assert rig.cloud_raw == []


def test_audit_digests_are_of_the_exact_bytes_sent(rig: Rig) -> None:
    rig.reset()
    for privacy in ("public", "enhanced"):
        body = {**_base(), "metadata": {"a": "b"}, "tools": _tool(), "user": "u-1"}
        assert _post(rig, body, privacy).status_code == 200
    raws = rig.cloud_raw
    assert len(raws) == 2
    assert {hashlib.sha256(r).hexdigest() for r in raws} <= rig.audit_digests()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**_base(), "secret_note": SECRET}, "secret_note"),
        (
            {
                **_base(),
                "messages": [{"role": "user", "content": [{"type": "input_text", "text": SECRET}]}],
            },
            "messages[0].content",
        ),
        (
            {
                **_base(),
                "messages": [{"role": "user", "content": [{"type": "text", "text": [SECRET]}]}],
            },
            "messages[0].content",
        ),
    ],
    ids=["unknown-top-level-field", "input_text-part", "text-part-with-a-list"],
)
def test_what_is_not_understood_is_refused_and_never_sent(rig: Rig, body: Body, param: str) -> None:
    rig.reset()
    for privacy in ("public", "enhanced"):
        resp = _post(rig, body, privacy)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param
    assert rig.cloud_raw == [] and rig.site.state.raw == []


def test_unknown_message_keys_are_dropped(rig: Rig) -> None:
    rig.reset()
    body = {**_base(), "messages": [{"role": "user", "content": "Say hello.", "note": SECRET}]}
    resp = _post(rig, body, "public")
    assert resp.status_code == 200, resp.text
    (raw,) = rig.cloud_raw  # nothing sensitive is left, so the cloud may answer
    assert not _leaks(raw)
    assert json.loads(raw)["messages"] == [{"role": "user", "content": "Say hello."}]


def test_unknown_ollama_fields_are_refused(rig: Rig) -> None:
    rig.reset()
    for field, value in (("suffix", SECRET), ("images", [SECRET]), ("format", "xml")):
        resp = _post(rig, {**_base(), field: value, "stream": False}, "public", "/api/chat")
        assert resp.status_code == 400, resp.text
        assert field in resp.json()["error"]
    assert rig.cloud_raw == [] and rig.site.state.raw == []


# -- a secret anywhere ------------------------------------------------------------------------
_KEYS = st.sampled_from(
    [
        "user",
        "metadata",
        "prediction",
        "response_format",
        "logit_bias",
        "stop",
        "tools",
        "messages",
        "tool_choice",
        "audio",
        "content",
        "text",
        "name",
        "description",
        "x",
    ]
)
_PATH = st.lists(st.one_of(_KEYS, st.integers(0, 2)), min_size=1, max_size=5)


def _place(body: Any, path: list[str | int], secret: str) -> Any:
    """``body`` with ``secret`` put at ``path`` (creating objects and lists on the way)."""
    if not path:
        return secret
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(body) if isinstance(body, list) else []
        while len(items) <= head:
            items.append({})
        items[head] = _place(items[head], rest, secret)
        return items
    obj = dict(body) if isinstance(body, dict) else {}
    obj[head] = _place(obj.get(head), rest, secret)
    return obj


@settings(
    max_examples=40,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(path=_PATH, privacy=st.sampled_from(["public", "enhanced"]), key=st.booleans())
def test_a_secret_at_any_json_path_never_reaches_the_cloud(
    rig: Rig, path: list[str | int], privacy: str, key: bool
) -> None:
    rig.reset()
    body = _base()
    if key:  # the secret as an object key rather than a value
        body = _place(body, path, "x")
        body = json.loads(json.dumps(body).replace('"x"', json.dumps(SECRET), 1))
    else:
        body = _place(body, path, SECRET)
    resp = _post(rig, body, privacy)
    assert resp.status_code in (200, 400, 404, 422), resp.text
    for raw in rig.cloud_raw:
        assert not _leaks(raw), (path, raw)


# -- every adapter: Anthropic and Ollama as the external tier ---------------------------------
def _anthropic(url: str) -> Body:
    return {"kind": "anthropic", "url": url, "model": "claude-test", "api_key": "sk-ant-0123"}


def _ollama(url: str) -> Body:
    return {"kind": "ollama", "url": url, "model": "llama3.2"}


ADAPTERS = {"anthropic": (anthropic_app, _anthropic), "ollama": (ollama_app, _ollama)}


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_each_adapter_sends_only_redacted_text_and_its_digest_is_audited(
    kind: str, tmp_path: Path
) -> None:
    make_upstream, backend = ADAPTERS[kind]
    site_up, cloud_up = make_app(), make_upstream()
    body = {
        "model": "auto",
        "messages": [
            {"role": "system", "content": SECRET},
            {"role": "user", "content": f"Hello. {SECRET}"},
        ],
        "tools": _tool(description=SECRET, param=SECRET),
        "stop": [SECRET],
        "metadata": {"user_id": SECRET},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "object", "description": SECRET}},
        },
    }
    with serve(site_up) as site_url, serve(cloud_up) as cloud_url:
        s = gateway_settings(
            [
                upstream_backend("site", site_url, "plain"),
                {"name": "cloud", "boundary": "external", **backend(cloud_url)},
            ],
            [{"name": "site", "backends": ["site"]}, {"name": "cloud", "backends": ["cloud"]}],
            ledger={"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
        )
        app = create_app(s)
        with serve(app, lifespan="on", start_within=60, grace=2) as url:
            rig = Rig(url, app, site_up, cloud_up)
            resp = _post(rig, body, "enhanced")
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-tierlm-tier"] == "cloud"
            (raw,) = rig.cloud_raw
            assert not _leaks(raw), raw
            assert raw.decode().count("[EMAIL]") >= 4  # system, user, tool description, ...
            assert hashlib.sha256(raw).hexdigest() in rig.audit_digests()


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "http://intranet.plant/diagram.png"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "report.pdf"}},
    ],
    ids=["data-image", "url-image", "audio", "file"],
)
def test_an_enhanced_request_with_an_unreadable_part_does_not_leave(rig: Rig, part: Body) -> None:
    body = {
        **_base(),
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, part]}],
    }
    rig.reset()
    resp = _post(rig, body, "enhanced")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-tierlm-tier"] == "site"  # the cloud was skipped: nothing to redact
    assert rig.cloud_raw == []
    rig.reset()
    resp = _post(rig, body, "public")  # public: the client's statement, forwarded as it is
    assert resp.headers["x-tierlm-tier"] == "cloud"
    assert len(rig.cloud_raw) == 1
