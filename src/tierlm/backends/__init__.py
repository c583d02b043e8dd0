"""Backends: one adapter per wire protocol, built from configuration.

Kinds come from the open registry (:mod:`tierlm.backends.registry`, the ``tierlm.backends``
entry-point group). Adapters are imported only when a backend of their kind is built, so a
missing optional extra fails with the exact ``pip install`` line, and start-up stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tierlm.backends.base import Backend, BackendHealth
from tierlm.backends.registry import BackendSpec, kinds, spec
from tierlm.errors import ConfigError

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig, Settings


def create_backend(config: BackendConfig, settings: Settings | None = None) -> Backend:
    """Build the adapter for ``config.kind`` (no network, no model loading: both are lazy)."""
    key = f"backends.{config.name}.kind"
    kind = spec(config.kind, key=key)
    if not isinstance(config, kind.config):
        raise ConfigError(
            f"kind {config.kind!r} is configured by {kind.config.__name__}, "
            f"not {type(config).__name__}",
            key=key,
        )
    try:
        cls = kind.adapter_class()
    except (ImportError, AttributeError, TypeError) as e:
        raise ConfigError(
            f"the adapter of kind {config.kind!r} failed to load: {type(e).__name__}: {e}", key=key
        ) from e
    return cls.from_settings(config, settings)


__all__ = ["Backend", "BackendHealth", "BackendSpec", "create_backend", "kinds"]
