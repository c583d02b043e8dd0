"""Where tierlm keeps files: data (the ledger), cache, and local models.

Each is settable in config (``data_dir``, ``cache_dir``, ``models_dir``) or by environment
(``TIERLM_DATA_DIR``, ``TIERLM_CACHE_DIR``, ``TIERLM_MODELS_DIR``); otherwise the XDG
defaults. Nothing is created at import: callers create a directory when they write to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tierlm.config.settings import Settings


def _xdg(var: str, default: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / default) / "tierlm"


def data_dir(settings: Settings | None = None) -> Path:
    if settings is not None and settings.data_dir:
        return Path(settings.data_dir).expanduser()
    return _xdg("XDG_DATA_HOME", ".local/share")


def cache_dir(settings: Settings | None = None) -> Path:
    if settings is not None and settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    return _xdg("XDG_CACHE_HOME", ".cache")


def models_dir(settings: Settings | None = None) -> Path:
    if settings is not None and settings.models_dir:
        return Path(settings.models_dir).expanduser()
    env = os.environ.get("TIERLM_MODELS_DIR")
    return Path(env).expanduser() if env else cache_dir(settings) / "models"
