"""Backends: one adapter per wire protocol, built from configuration.

Adapters are imported only when a backend of their kind is built, so a missing optional
extra fails with the exact ``pip install`` line, and start-up stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tierlm.backends.base import Backend, BackendHealth
from tierlm.errors import ConfigError

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig, Settings

# kind -> "module:Class"
ADAPTERS: dict[str, str] = {
    "llama_cpp": "tierlm.backends.llama_cpp:LlamaCppBackend",
    "openai": "tierlm.backends.openai_compat:OpenAIBackend",
    "anthropic": "tierlm.backends.anthropic:AnthropicBackend",
    "ollama": "tierlm.backends.ollama:OllamaBackend",
    "transformers": "tierlm.backends.transformers:TransformersBackend",
}


def create_backend(config: BackendConfig, settings: Settings | None = None) -> Backend:
    """Build the adapter for ``config.kind`` (no network, no model loading: both are lazy)."""
    target = ADAPTERS.get(config.kind)
    if target is None:
        raise ConfigError(f"unknown backend kind {config.kind!r}", key=f"backends.{config.name}")
    module_name, cls_name = target.split(":")
    module = importlib.import_module(module_name)
    cls: type[Backend] = getattr(module, cls_name)
    return cls.from_settings(config, settings)


__all__ = ["ADAPTERS", "Backend", "BackendHealth", "create_backend"]
