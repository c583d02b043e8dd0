"""Typed configuration: settings models, the loader (file + environment), presets."""

from tierlm.config.loader import load_settings
from tierlm.config.settings import BackendConfig, Settings, TierConfig

__all__ = ["BackendConfig", "Settings", "TierConfig", "load_settings"]
