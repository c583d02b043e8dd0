"""Test guards shared by every test.

- Outbound network is forbidden: a socket may connect to loopback (127.0.0.0/8, ::1) or a
  Unix socket only, so no test can reach the internet, a cloud provider or the hub by accident.
- Provider keys, proxy variables, OTEL_* and TIERLM_* settings are cleared, and the data,
  cache and config directories point into the test's temporary directory.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fakes.faulty_upstream import FaultyUpstream

# The throwaway PostgreSQL and Redis server fixtures (started by the tests themselves).
pytest_plugins = ["pg_fixture", "redis_fixture"]

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = Path(os.environ.get("TIERLM_TEST_MODELS", SHARED / "models"))
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
STORIES = MODELS / "stories260K.gguf"
ROUTING_DATA = SHARED / "data" / "routing"

_KEY_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "DEEPSEEK_API_KEY",
    "MISTRAL_API_KEY",
    "GROQ_API_KEY",
    "TOGETHER_API_KEY",
    "OPENROUTER_API_KEY",
    "VLLM_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _allowed(sock: socket.socket, address: Any) -> bool:
    if sock.family == socket.AF_UNIX:
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: not allowed


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _allowed(self, address):
        raise ConnectionRefusedError(f"tests may not connect outside loopback: {address!r}")
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _allowed(self, address):
        raise ConnectionRefusedError(f"tests may not connect outside loopback: {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _no_network_no_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    for var in list(os.environ):
        if (
            var in _KEY_VARS
            or var.startswith("OTEL_")  # OpenTelemetry's exporter, sampler and resource
            or (var.startswith("TIERLM_") and var != "TIERLM_TEST_MODELS")
        ):
            monkeypatch.delenv(var, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def models_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TIERLM_MODELS_DIR at the shared test models."""
    if not SMOLLM2.exists():
        pytest.fail(f"test model missing: {SMOLLM2}")
    monkeypatch.setenv("TIERLM_MODELS_DIR", str(MODELS))
    return MODELS


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    """A started :class:`FaultyUpstream` (fake OpenAI-wire server), stopped afterwards."""
    from fakes.faulty_upstream import FaultyUpstream

    up = FaultyUpstream().start()
    try:
        yield up
    finally:
        up.stop()
