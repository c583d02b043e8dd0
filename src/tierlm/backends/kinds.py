"""tierlm's own backend kinds, declared as entry points of ``tierlm.backends`` in
``pyproject.toml`` like any plugin's (see :mod:`tierlm.backends.registry`). Importing this
module imports the configuration classes only; each adapter is imported when built."""

from __future__ import annotations

from tierlm.backends.registry import BackendSpec
from tierlm.config.backends import (
    AnthropicConfig,
    FunctionConfig,
    LlamaCppConfig,
    OllamaConfig,
    OpenAIConfig,
    TransformersConfig,
)

LLAMA_CPP = BackendSpec(LlamaCppConfig, "tierlm.backends.llama_cpp:LlamaCppBackend")
TRANSFORMERS = BackendSpec(TransformersConfig, "tierlm.backends.transformers:TransformersBackend")
OPENAI = BackendSpec(OpenAIConfig, "tierlm.backends.openai_compat:OpenAIBackend")
ANTHROPIC = BackendSpec(AnthropicConfig, "tierlm.backends.anthropic:AnthropicBackend")
OLLAMA = BackendSpec(OllamaConfig, "tierlm.backends.ollama:OllamaBackend")
FUNCTION = BackendSpec(FunctionConfig, "tierlm.backends.function:FunctionBackend")
