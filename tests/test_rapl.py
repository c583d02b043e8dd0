"""Measured joules per token from RAPL counters (signals/rapl.py): package domains only,
wrap-around, unreadable or absent counters as a plain reason, generations measured only
alone, the smoothed estimate from a real llama.cpp generation, the policy preferring a
configured value, and ``doctor`` showing it. The counters are a fake powercap directory."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import MODELS, SMOLLM2
from fakes import serve
from server_util import settings as make_settings
from tierlm.backends import create_backend
from tierlm.backends.llama_cpp import LlamaCppBackend
from tierlm.backends.llama_worker import LlamaWorkerBackend
from tierlm.backends.registry import parse_backend
from tierlm.cli.main import app
from tierlm.policy.energy import EnergyEffects
from tierlm.router import Router
from tierlm.server import create_app
from tierlm.signals import rapl
from tierlm.signals.energy import EnergyState
from tierlm.signals.rapl import JoulesMeter, RaplCounter, RaplUnavailable
from tierlm.types import ChatRequest

RANGE = 262_143_328_850  # a real package's max_energy_range_uj


def zone(root: Path, name: str, energy_uj: int, max_range: int = RANGE) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d / "energy_uj"


class Advancing(RaplCounter):
    """Each reading finds package 0 advanced by ``step_uj`` (written to its file first)."""

    def __init__(self, root: Path, step_uj: int) -> None:
        super().__init__(root)
        self.step_uj = step_uj

    def read(self) -> tuple[int, ...]:
        f = self.root / "intel-rapl:0" / "energy_uj"
        f.write_text(str((int(f.read_text()) + self.step_uj) % RANGE))
        return super().read()


def test_package_domains_only_summed_over_packages(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", 1_000_000)
    zone(tmp_path, "intel-rapl:1", 5_000_000)
    sub = zone(tmp_path, "intel-rapl:0:0", 0)  # core: already in the package
    (tmp_path / "intel-rapl-mmio:0").mkdir()  # no counter file: not a package either
    c = RaplCounter(tmp_path)
    before = c.read()
    assert before == (1_000_000, 5_000_000)
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("3500000")
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("5250000")
    sub.write_text("9999999999")
    assert c.joules(before, c.read()) == pytest.approx(2.75)


def test_wrap_around_uses_the_max_range(tmp_path: Path) -> None:
    f = zone(tmp_path, "intel-rapl:0", 999_000_000, max_range=1_000_000_000)
    c = RaplCounter(tmp_path)
    before = c.read()
    f.write_text("500000")  # wrapped past 1e9 µJ
    assert c.joules(before, c.read()) == pytest.approx(1.5)


def test_absent_or_unreadable_counters_are_a_plain_reason(tmp_path: Path) -> None:
    cases = {
        tmp_path / "missing": "no powercap directory",
        tmp_path: "no RAPL package domain under",
    }
    for root, reason in cases.items():
        with pytest.raises(RaplUnavailable, match=reason):
            RaplCounter(root).read()
    # energy_uj unreadable (root-only since CVE-2020-8694; tests run as root, so: a directory)
    d = tmp_path / "intel-rapl:0"
    d.mkdir()
    (d / "max_energy_range_uj").write_text(str(RANGE))
    (d / "energy_uj").mkdir()
    m = JoulesMeter(RaplCounter(tmp_path))
    assert m.to_dict()["detail"].startswith(f"cannot read {d / 'energy_uj'}: Is a directory")
    assert m.begin() is None
    m.end(None, 10)
    assert (m.samples, m.joules_per_token) == (0, None)
    (d / "energy_uj").rmdir()
    (d / "energy_uj").write_text("n/a")
    with pytest.raises(RaplUnavailable, match="not a counter"):
        RaplCounter(tmp_path).read()


def test_only_generations_that_ran_alone_count(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", 0)
    m = JoulesMeter(Advancing(tmp_path, step_uj=2_000_000))
    a = m.begin()
    b = m.begin()  # overlaps a: neither is counted
    m.end(a, 10)
    m.end(b, 10)
    assert m.samples == 0
    c = m.begin()
    m.end(c, 0)  # no token: nothing to divide by
    assert m.samples == 0
    for _ in range(rapl.MIN_SAMPLES - 1):
        m.end(m.begin(), 4)  # 2 J over 4 tokens
        assert m.joules_per_token is None
    assert m.to_dict()["detail"] == f"{rapl.MIN_SAMPLES - 1} of {rapl.MIN_SAMPLES} samples"
    m.end(m.begin(), 4)
    assert m.joules_per_token == pytest.approx(0.5)
    assert rapl.describe(m.to_dict()) == f"measured 0.5 J/token ({rapl.MIN_SAMPLES} samples)"


def _req(max_tokens: int) -> ChatRequest:
    prompt = "Tell me about the sea."
    return ChatRequest.from_prompt(prompt, max_tokens=max_tokens, temperature=0.0)


async def test_real_generation_gives_the_smoothed_estimate(tmp_path: Path) -> None:
    # 3 J per generation, package 0 starting just below its range: the first one wraps
    zone(tmp_path, "intel-rapl:0", RANGE - 1_000_000)
    cfg = parse_backend({"name": "tiny", "kind": "llama_cpp", "model": str(SMOLLM2)})
    b = LlamaCppBackend(cfg, MODELS)  # type: ignore[arg-type]
    b.meter = JoulesMeter(Advancing(tmp_path, step_uj=3_000_000))
    tokens = []
    try:
        for n in (4, 8, 16):
            tokens.append((await b.complete(_req(n))).usage.completion_tokens)
        events = [ev async for ev in b.stream(_req(12))]
        health = await b.health()
    finally:
        await b.aclose()
    usage = events[-1].usage
    assert usage is not None
    tokens.append(usage.completion_tokens)
    expected = None
    for n in tokens:
        s = 3.0 / n
        expected = s if expected is None else rapl.ALPHA * s + (1 - rapl.ALPHA) * expected
    assert b.meter.samples == 4
    assert b.meter.joules_per_token == pytest.approx(expected)
    assert health.to_dict()["energy"] == {
        "measured_joules_per_token": round(expected, 4),  # type: ignore[arg-type]
        "samples": 4,
        "detail": "",
    }


def test_configured_joules_win_over_measured() -> None:
    eff = EnergyEffects(state=EnergyState(source="t"), measured={"a": 2.0, "b": 2.0})
    a = parse_backend({"name": "a", "kind": "llama_cpp", "model": "m.gguf"})
    b = parse_backend({"name": "b", "kind": "llama_cpp", "model": "m.gguf", "joules_per_token": 1})
    c = parse_backend({"name": "c", "kind": "llama_cpp", "model": "m.gguf"})
    assert (eff.joules_per_token(a), eff.joules_per_token(b)) == (2.0, 1.0)
    assert eff.joules_per_token(c) == c.energy_per_token()  # unmeasured: the default
    assert eff.to_dict()["measured"] == {"a": 2.0, "b": 2.0}


def test_doctor_says_why_nothing_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rapl, "POWERCAP", tmp_path / "powercap")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "backends:\n"
        f"  - {{name: tiny, kind: llama_cpp, model: '{SMOLLM2}', worker: false}}\n"
        "tiers: [{name: tiny, backends: [tiny]}]\n"
    )
    out = CliRunner().invoke(app, ["doctor", "--config", str(cfg)])
    assert f"J/token not measured (no powercap directory {tmp_path / 'powercap'}: " in out.output


async def test_llama_server_worker_is_measured_too(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", 0)
    spec = {"name": "tiny", "kind": "llama_cpp", "model": str(SMOLLM2), "n_ctx": 512}
    b = create_backend(parse_backend({**spec, "threads": 2, "keep_alive": 0}))
    assert isinstance(b, LlamaWorkerBackend)
    b.meter = JoulesMeter(Advancing(tmp_path, step_uj=6_000_000))
    try:
        tokens = [(await b.complete(_req(n))).usage.completion_tokens for n in (6, 10)]
        events = [ev async for ev in b.stream(_req(8))]
    finally:
        await b.aclose()
    usage = events[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    tokens.append(usage.completion_tokens)
    expected = 6.0 / tokens[0]
    for n in tokens[1:]:
        expected = rapl.ALPHA * 6.0 / n + (1 - rapl.ALPHA) * expected
    assert b.meter.samples == 3
    assert b.meter.joules_per_token == pytest.approx(expected)


def test_gateway_routes_on_and_shows_the_measured_value(tmp_path: Path) -> None:
    """Through the gateway: three answers make the estimate, ``/health`` shows it, and a
    battery budget is judged on it (default 0.3 J/token would fit 1 J; measured 5 does not)."""
    zone(tmp_path, "intel-rapl:0", 0)
    state = tmp_path / "energy.json"
    state.write_text(json.dumps({"battery": 0.1, "charging": False}))
    tiny = {"name": "tiny", "kind": "llama_cpp", "model": str(SMOLLM2), "worker": False}
    energy = {"source": f"file:{state}", "battery_below": 0.2, "battery_max_joules_per_token": 1}
    router = Router(make_settings([tiny], [{"name": "tiny", "backends": ["tiny"]}], energy=energy))
    assert router.energy is not None
    router.energy.first_reading(10)
    meter = router.backends["tiny"].meter  # type: ignore[attr-defined]
    req = ChatRequest.from_prompt("Say hello.")
    assert "energy: excluded" not in " ".join(router.plan(req).reasons)
    assert router.plan(req).to_dict()["energy"]["measured"] == {}
    router.backends["tiny"].meter = JoulesMeter(Advancing(tmp_path, 5_000_000))  # type: ignore[attr-defined]
    body = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    try:
        with (
            serve(create_app(router), lifespan="on") as url,
            httpx.Client(base_url=url, timeout=60) as c,
        ):
            shown = c.get("/health").json()["backends"]["tiny"]["energy"]  # at startup
            for _ in range(rapl.MIN_SAMPLES):
                r = c.post("/v1/chat/completions", json=body)
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1
        health = asyncio.run(router.backends["tiny"].health())
    finally:
        asyncio.run(router.aclose())
    assert meter is not router.backends["tiny"].meter  # type: ignore[attr-defined]
    assert shown == {"measured_joules_per_token": None, "samples": 0, "detail": rapl._UNMEASURED}
    assert health.energy == {"measured_joules_per_token": 5.0, "samples": 3, "detail": ""}
    plan = router.plan(req)
    assert plan.to_dict()["energy"]["measured"] == {"tiny": 5.0}
    assert "energy: no backend within 1 J/token: not restricted" in plan.reasons
