"""Who is best for it: within a tier, the backend whose strengths (``good_at``, or its
provider's defaults) match the request's task kinds, domains and language goes first."""

from __future__ import annotations

import pytest

from tierlm.config import load_settings
from tierlm.config.settings import Settings
from tierlm.errors import ConfigError
from tierlm.policy import Conditions, Policy, Signals
from tierlm.signals.task import detect_task, needs
from tierlm.types import ChatRequest

CODE = "Write a Python function that converts Celsius to Fahrenheit, with unit tests."
PLAIN = "Summarise the main causes of the French Revolution for a school essay."
FRENCH = (
    "Pouvez-vous résumer pour nous les causes de la révolution et qui est le roi dans "
    "cette histoire? Merci pour la réponse."
)
MEDICAL = "Which medication is safe for a patient with kidney disease symptoms?"


def _settings(backends: list[dict[str, object]]) -> Settings:
    return load_settings(
        overrides={
            "backends": backends,
            "tiers": [{"name": "cloud", "backends": [b["name"] for b in backends]}],
        },
        env={"OPENAI_API_KEY": "k", "DEEPSEEK_API_KEY": "k", "MISTRAL_API_KEY": "k"},
    )


def _cloud(*names: str) -> Settings:
    return _settings(
        [{"name": n, "kind": "openai", "provider": n, "model": f"{n}-model"} for n in names]
    )


def _plan(settings: Settings, prompt: str) -> tuple[list[str], list[str]]:
    request = ChatRequest.from_prompt(prompt)
    signals = Signals(complexity=0.9, task=detect_task(request).to_dict())
    p = Policy(settings).plan(request, signals, Conditions())
    return [c.backend for c in p.candidates], p.reasons


def test_code_request_prefers_the_code_backend_and_says_so() -> None:
    order, reasons = _plan(_cloud("openai", "deepseek"), CODE)
    assert order == ["deepseek", "openai"]
    assert "code request: deepseek preferred" in reasons


def test_no_match_keeps_the_configured_order_without_a_reason() -> None:
    order, reasons = _plan(_cloud("openai", "deepseek"), PLAIN)
    assert order == ["openai", "deepseek"]
    assert not any("preferred" in r for r in reasons)


def test_language_of_the_request_counts() -> None:
    order, reasons = _plan(_cloud("openai", "mistral"), FRENCH)
    assert order == ["mistral", "openai"]
    assert "fr request: mistral preferred" in reasons


def test_configured_good_at_overrides_the_provider_defaults() -> None:
    site = {
        "name": "medllm",
        "kind": "openai",
        "url": "http://127.0.0.1:9/v1",
        "model": "med-70b",
        "boundary": "site",
        "good_at": ["medical"],
    }
    general = {**site, "name": "general", "model": "llama-70b", "good_at": None}
    order, reasons = _plan(_settings([general, site]), MEDICAL)
    assert order == ["medllm", "general"]
    assert "medical request: medllm preferred" in reasons
    order, _ = _plan(_settings([general, site]), PLAIN)
    assert order == ["general", "medllm"]


def test_unknown_strength_is_a_config_error_naming_the_word() -> None:
    backend = {"name": "d", "kind": "openai", "provider": "deepseek", "model": "m"}
    with pytest.raises(ConfigError, match="coding"):
        _settings([{**backend, "good_at": ["coding"]}])


@pytest.mark.parametrize(
    ("prompt", "kinds"),
    [
        (CODE, ["code"]),
        (PLAIN, []),
        (FRENCH, ["fr"]),
        (MEDICAL, ["medical"]),
        ("Review this contract clause on liability and indemnification for us.", ["legal"]),
    ],
)
def test_task_signal_names_what_a_request_needs(prompt: str, kinds: list[str]) -> None:
    assert _needs(ChatRequest.from_prompt(prompt)) == kinds


def _needs(request: ChatRequest) -> list[str]:
    return needs(request, detect_task(request).to_dict())


def test_image_parts_need_vision() -> None:
    parts = [
        {"type": "text", "text": "What is on this gauge?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    request = ChatRequest(messages=[{"role": "user", "content": parts}])
    assert _needs(request) == ["vision"]


def test_plant_words_are_not_a_medical_domain() -> None:
    prompt = "Raise the chemical dose at the water treatment plant to 4 mg/l."
    assert "medical" not in _needs(ChatRequest.from_prompt(prompt))


def test_domains_and_language_are_read_only_when_some_backend_declares_one() -> None:
    request = ChatRequest.from_prompt(FRENCH + " " + MEDICAL)
    task = detect_task(request).to_dict()
    assert needs(request, task) == ["medical", "fr"]
    assert needs(request, task, among=frozenset({"code", "tools"})) == []
    assert needs(request, task, among=frozenset({"fr"})) == ["fr"]
