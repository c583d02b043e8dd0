"""Where tierlm keeps files: data (the ledger), cache, and local models.

Each is settable in config (``data_dir``, ``cache_dir``, ``models_dir``) or by environment
(``TIERLM_DATA_DIR``, ``TIERLM_CACHE_DIR``, ``TIERLM_MODELS_DIR``); otherwise the XDG
defaults. Nothing is created at import: callers create a directory when they write to it.
Bundled JSON artefacts (``tierlm/data/*.json``) are read by :func:`load_artefact`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@functools.lru_cache(maxsize=8)
def load_artefact(path: Path, what: str) -> dict[str, Any]:
    """A bundled JSON artefact (read once per path); a clear ConfigError when unusable."""
    from tierlm.errors import ConfigError

    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{what} artefact missing: {path}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} artefact is not valid JSON: {path}: {e}") from e
    return data
