"""Named providers: where a wire format lives and how it authenticates.

One adapter per wire protocol; a provider is only settings on top of it (base URL, key
variable, boundary, quirks). Adding a provider is adding a row here, not code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tierlm.types import Boundary

Prefill = Literal["native", "continue_final_message"] | None


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    kind: str  # the adapter: "openai", "anthropic" or "ollama"
    url: str | None  # base URL; None: must be configured (self-hosted servers)
    key_env: str | None  # standard environment variable for the API key
    boundary: Boundary
    default_model: str | None = None  # used by presets when the provider's key is set
    tools: bool = True  # native tool calling
    quirks: frozenset[str] = field(default_factory=frozenset)
    # How the server continues a trailing assistant turn: "native" (it just does),
    # "continue_final_message" (vLLM's request flags), None (it answers a new turn).
    prefill: Prefill = None
    # What the provider's models are known to be good at (task kinds, languages): the
    # default of ``BackendConfig.good_at`` for its backends; the policy prefers, among
    # backends of one tier, the one whose strengths match the request.
    good_at: frozenset[str] = frozenset()


_P = Provider
PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        # cloud (external boundary)
        _P(
            "openai",
            "openai",
            "https://api.openai.com/v1",
            "OPENAI_API_KEY",
            Boundary.EXTERNAL,
            "gpt-4o-mini",
            good_at=frozenset({"tools", "extraction", "vision"}),
        ),
        _P(
            "anthropic",
            "anthropic",
            "https://api.anthropic.com",
            "ANTHROPIC_API_KEY",
            Boundary.EXTERNAL,
            "claude-3-5-haiku-latest",
            good_at=frozenset({"code", "tools", "long_context", "vision"}),
        ),
        _P(
            "gemini",
            "openai",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "GEMINI_API_KEY",
            Boundary.EXTERNAL,
            "gemini-2.0-flash",
            quirks=frozenset({"no_stream_usage_option"}),
            good_at=frozenset({"long_context", "vision"}),
        ),
        _P(
            "deepseek",
            "openai",
            "https://api.deepseek.com/v1",
            "DEEPSEEK_API_KEY",
            Boundary.EXTERNAL,
            "deepseek-chat",
            good_at=frozenset({"code"}),
        ),
        _P(
            "mistral",
            "openai",
            "https://api.mistral.ai/v1",
            "MISTRAL_API_KEY",
            Boundary.EXTERNAL,
            "mistral-small-latest",
            quirks=frozenset({"max_tokens_only", "no_stream_usage_option"}),
            good_at=frozenset({"fr", "de", "es", "it"}),
        ),
        _P(
            "groq",
            "openai",
            "https://api.groq.com/openai/v1",
            "GROQ_API_KEY",
            Boundary.EXTERNAL,
            "llama-3.1-8b-instant",
        ),
        _P(
            "together",
            "openai",
            "https://api.together.xyz/v1",
            "TOGETHER_API_KEY",
            Boundary.EXTERNAL,
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
        _P(
            "openrouter",
            "openai",
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
            Boundary.EXTERNAL,
            "openai/gpt-4o-mini",
        ),
        # self-hosted (boundary declared by the deployment; site by default)
        _P("vllm", "openai", None, "VLLM_API_KEY", Boundary.SITE, prefill="continue_final_message"),
        _P("sglang", "openai", None, None, Boundary.SITE),
        _P(
            "llama-server",
            "openai",
            "http://127.0.0.1:8080/v1",
            None,
            Boundary.HOST,
            tools=False,
            prefill="native",
        ),
        _P("lmstudio", "openai", "http://127.0.0.1:1234/v1", None, Boundary.HOST),
        _P("ollama-openai", "openai", "http://127.0.0.1:11434/v1", None, Boundary.HOST),
        _P("ollama", "ollama", "http://127.0.0.1:11434", None, Boundary.HOST),
    )
}

# Providers a preset's cloud tier may use, in order of preference, when their key is set.
CLOUD_ORDER = (
    "openai",
    "anthropic",
    "gemini",
    "deepseek",
    "mistral",
    "groq",
    "together",
    "openrouter",
)
