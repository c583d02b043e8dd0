"""Prices: config override > bundled table > zero for local; costs and budget estimates."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from tierlm.backends.registry import parse_backend
from tierlm.config.backends import AnthropicConfig, BackendConfig, LlamaCppConfig, OpenAIConfig
from tierlm.config.settings import Price
from tierlm.pricing import (
    DEFAULT_OUTPUT_CAP,
    IMAGE_TOKENS,
    PRICES_FILE,
    UNKNOWN_EXTERNAL,
    cost_usd,
    estimate_usd,
    input_tokens_bound,
    lookup,
    price_for,
    price_source,
    price_table,
)
from tierlm.types import ChatRequest, Usage


def _cfg(**kw: Any) -> BackendConfig:
    base: dict[str, Any] = {
        "name": "b",
        "kind": "openai",
        "model": "gpt-4o-mini",
        "provider": "openai",
    }
    base.update(kw)
    return parse_backend(base)


def test_table_is_dated_and_sourced() -> None:
    data = json.loads(PRICES_FILE.read_text())
    date.fromisoformat(data["as_of"])
    assert data["currency"] == "USD" and data["unit"] == "per 1M tokens"
    for name in ("openai", "anthropic", "gemini", "deepseek", "mistral", "groq", "together"):
        prov = data["providers"][name]
        date.fromisoformat(prov["as_of"])
        assert prov["source"].startswith("https://")
        assert prov["models"]
        for row in prov["models"].values():
            assert 0 < row["input"] <= row["output"] or row["input"] == row["output"]
    assert price_table() is price_table()  # read once


@pytest.mark.parametrize(
    ("provider", "model", "row"),
    [
        ("openai", "gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("openai", "gpt-4o-mini-2024-07-18", ("openai", "gpt-4o-mini")),
        ("openai", "gpt-4o-2024-08-06", ("openai", "gpt-4o")),
        ("anthropic", "claude-3-5-haiku-latest", ("anthropic", "claude-3-5-haiku")),
        ("anthropic", "claude-sonnet-4-5-20250929", ("anthropic", "claude-sonnet-4-5")),
        ("openrouter", "openai/gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("groq", "openai/gpt-oss-20b", ("groq", "openai/gpt-oss-20b")),
        ("mistral", "mistral-small-latest", ("mistral", "mistral-small")),
        ("gemini", "gemini-2.5-flash-lite", ("gemini", "gemini-2.5-flash-lite")),
    ],
)
def test_lookup_finds_the_right_row(provider: str, model: str, row: tuple[str, str]) -> None:
    expected = price_table()["providers"][row[0]]["models"][row[1]]
    got = lookup(provider, model)
    assert got is not None
    assert (got.input, got.output) == (expected["input"], expected["output"])


def test_unknown_model_is_none_and_priced_conservatively_when_external() -> None:
    assert lookup("openai", "gpt4o-mini") is None
    assert lookup(None, "totally-new-model") is None
    price, source = price_source(_cfg(model="totally-new-model"))
    assert source == "unknown" and price == UNKNOWN_EXTERNAL


def test_config_override_beats_table_and_local_is_zero() -> None:
    over = _cfg(price=Price(input=1.0, output=2.0))
    assert price_source(over) == (Price(input=1.0, output=2.0), "config")
    local = LlamaCppConfig(name="l", model="smollm2")
    assert price_source(local) == (Price(), "local")
    site = OpenAIConfig(
        name="s", provider="vllm", url="http://h/v1", model="gpt-4o"
    )  # same name as a cloud model, but on our own server
    assert price_for(site) == Price()
    anth = AnthropicConfig(name="a", model="claude-3-5-haiku-latest", boundary="external")
    assert price_source(anth)[1] == "table"


def test_cost_usd() -> None:
    cfg = _cfg()
    row = price_table()["providers"]["openai"]["models"]["gpt-4o-mini"]
    usage = Usage(prompt_tokens=1000, completion_tokens=500)
    expected = (1000 * row["input"] + 500 * row["output"]) / 1e6
    assert cost_usd(cfg, usage) == pytest.approx(expected)
    energy = LlamaCppConfig(name="l", model="m", price=Price(per_hour=0.36))
    assert cost_usd(energy, usage, seconds=10) == pytest.approx(0.001)
    assert cost_usd(LlamaCppConfig(name="l", model="m"), usage) == 0.0


def test_estimate_is_an_upper_bound() -> None:
    cfg = _cfg(model="gpt-4o")
    p = price_for(cfg)
    req = ChatRequest.from_prompt("hi", max_tokens=100)
    bound = input_tokens_bound(req)
    assert bound >= len("hi")
    assert estimate_usd(cfg, req) == pytest.approx((bound * p.input + 100 * p.output) / 1e6)
    open_ended = ChatRequest.from_prompt("hi")
    assert estimate_usd(cfg, open_ended) == pytest.approx(
        (bound * p.input + DEFAULT_OUTPUT_CAP * p.output) / 1e6
    )
    small = _cfg(model="gpt-4o", context_window=1000)
    assert estimate_usd(small, open_ended) == pytest.approx(
        (bound * p.input + 1000 * p.output) / 1e6
    )
    capped = _cfg(model="gpt-4o", context_window=1000, max_output_tokens=300)
    assert estimate_usd(capped, open_ended) == pytest.approx(
        (bound * p.input + 300 * p.output) / 1e6
    )
    actual = cost_usd(cfg, Usage(prompt_tokens=50, completion_tokens=100))
    assert estimate_usd(cfg, ChatRequest.from_prompt("x" * 200, max_tokens=100)) >= actual


def test_estimate_counts_everything_billed() -> None:
    """Tools and their descriptions, every content part, images and the per-request minimum
    all raise the bound; text alone would have missed them."""
    plain = ChatRequest.from_prompt("hi", max_tokens=1)
    tools = plain.model_copy(
        update={
            "tools": [{"type": "function", "function": {"name": "f", "description": "d" * 40_000}}]
        }
    )
    assert input_tokens_bound(tools) >= 40_000 > input_tokens_bound(plain)
    parts = ChatRequest.model_validate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "x" * 5000},
                        {"type": "image_url", "image_url": {"url": "https://example.test/a.png"}},
                    ],
                }
            ],
            "max_tokens": 1,
        }
    )
    assert input_tokens_bound(parts) >= 5000 + IMAGE_TOKENS
    fee = _cfg(model="gpt-4o", price=Price(input=1.0, output=1.0, per_request_min=0.01))
    assert estimate_usd(fee, plain) == pytest.approx(0.01)
    assert cost_usd(fee, Usage(prompt_tokens=1, completion_tokens=1)) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("usd", "text"),
    [
        (0.0, "$0"),
        (5e-05, "$0.00005"),
        (0.004, "$0.004"),
        (0.0099, "$0.0099"),
        (0.01, "$0.01"),
        (200.0, "$200.00"),
        (1234.5, "$1,234.50"),
        (-0.5, "-$0.50"),
        (-2e-05, "-$0.00002"),
        (1e-12, "$0"),
    ],
)
def test_money_is_printed_for_people(usd: float, text: str) -> None:
    from tierlm.pricing import format_usd

    assert format_usd(usd) == text
