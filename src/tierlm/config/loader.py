"""Where settings come from.

Precedence, lowest first (a later source overrides an earlier one, key by key; lists such as
``backends`` and ``tiers`` are replaced whole):

1. the preset: ``--preset``, else ``TIERLM_PRESET``, else ``preset:`` in the file, else
   ``edge-only`` (the embedded default: the in-process tiny tier);
2. the YAML file: ``--config``, else ``TIERLM_CONFIG``, else none;
3. environment variables ``TIERLM_<KEY>``, nested with ``__``
   (``TIERLM_ROUTING__QUALITY=0.7``, ``TIERLM_SERVER__PORT=9000``, ``TIERLM_MODELS_DIR=...``);
   values are read as YAML scalars, so ``true``, ``0.7`` and ``[a, b]`` work;
4. explicit overrides from the caller (CLI flags, ``Router.from_config(overrides=...)``).

A preset's environment variables are needed only for the backends the final configuration
still uses (see ``presets.py``). When the file, the environment or the caller replaces the
preset's ``tiers`` or ``backends`` and does not name a ``deployment``, the deployment shown
(``/health``, ``doctor``) says so: ``custom: tiny → site → cloud`` without a preset,
``full-stack, customised: ...`` with one.

Settings are read when a Router is built, never at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tierlm.config.presets import NEEDS, PRESETS, build_preset
from tierlm.config.settings import Settings
from tierlm.errors import ConfigError

_ENV_PREFIX = "TIERLM_"
# TIERLM_* names that are not settings keys (read by presets or the CLI).
_NOT_SETTINGS = {"CONFIG", "PRESET", "LOG_LEVEL", "LOG_FORMAT", "OFFLINE"}
_NOT_SETTINGS_PREFIXES = ("SITE_", "TINY_", "CLOUD_")


def load_settings(
    config: str | Path | None = None,
    *,
    preset: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build validated :class:`Settings`; raise :class:`ConfigError` naming the bad key."""
    env = os.environ if env is None else env
    path = config if config is not None else env.get("TIERLM_CONFIG")
    file_data = _read_yaml(Path(path)) if path else {}
    preset_name = preset or env.get("TIERLM_PRESET") or file_data.pop("preset", None)
    file_data.pop("preset", None)
    data = build_preset(preset_name or "edge-only", env)
    layers = [file_data, _env_overrides(env), dict(overrides or {})]
    for layer in layers:
        _deep_merge(data, layer)
    _check_placeholders(data)
    if not any("deployment" in layer for layer in layers) and any(
        key in layer for layer in layers for key in ("tiers", "backends")
    ):
        data["deployment"] = _describe(data, preset_name)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source=str(path) if path else None)) from None


def _check_placeholders(data: dict[str, Any]) -> None:
    """Raise what a preset needs, for the first of its placeholders still in use."""
    for b in data.get("backends") or []:
        if isinstance(b, dict) and NEEDS in b:
            raise ConfigError(str(b[NEEDS]))


def _describe(data: dict[str, Any], preset: str | None) -> str:
    """What a deployment whose tiers or backends were replaced is: its tiers, in order."""
    tiers = data.get("tiers")
    names = [str(t.get("name")) for t in tiers if isinstance(t, dict)] if tiers else []
    shape = " → ".join(names) or "no tiers"
    return f"{preset}, customised: {shape}" if preset else f"custom: {shape}"


def known_presets() -> list[str]:
    return sorted(PRESETS)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    top = set(Settings.model_fields)
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(_ENV_PREFIX):
            continue
        rest = name[len(_ENV_PREFIX) :]
        if rest in _NOT_SETTINGS or rest.startswith(_NOT_SETTINGS_PREFIXES):
            continue
        path = [p.lower() for p in rest.split("__")]
        if path[0] not in top and len(path) == 1:
            continue  # a TIERLM_* variable that is not ours to read
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v


def _format_errors(e: ValidationError, source: str | None) -> str:
    lines = []
    for err in e.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"] and msg.startswith("config key `"):
            lines.append(msg)  # a whole-config rule that names its own key
            continue
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"config key `{key}`: {msg}")
    where = f" in {source}" if source else ""
    return f"invalid configuration{where}: " + "; ".join(lines)  # one line, for the CLI
