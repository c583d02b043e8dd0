"""The open backend registry: every ``kind``, built-in or not, is an entry point.

A kind is an entry point of the group ``tierlm.backends`` whose name is the kind and whose
object is a :class:`BackendSpec`: the kind's configuration class (a subclass of
:class:`~tierlm.config.backends.BackendConfig`, which validates its ``backends:`` entries)
and its adapter (a :class:`~tierlm.backends.base.Backend` subclass, or ``"module:Class"``,
imported only when a backend of the kind is built). tierlm declares its own kinds the same
way (``pyproject.toml``), so a third-party package adds one with no change to tierlm::

    [project.entry-points."tierlm.backends"]
    echo = "tierlm_echo:SPEC"   # SPEC = BackendSpec(EchoConfig, "tierlm_echo.backend:Echo")

- Listing kinds (:func:`kinds`) imports nothing; validating a backend imports the module of
  its kind's spec (cheap: a config class), building one imports the adapter.
- An unknown kind is refused with the known ones; a spec that fails to import or is not a
  :class:`BackendSpec` is refused with the cause, naming the entry point; a kind that two
  distributions declare is refused naming both.
- Entry points are read once per process; :func:`refresh` reads them again (a package
  installed while running).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from tierlm.errors import ConfigError

if TYPE_CHECKING:
    from tierlm.backends.base import Backend
    from tierlm.config.backends import BackendConfig

GROUP = "tierlm.backends"


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """A backend kind: its configuration class and its adapter."""

    config: type[BackendConfig]
    adapter: type[Backend] | str  # "module:Class" until the first backend is built

    def adapter_class(self) -> type[Backend]:
        from tierlm.backends.base import Backend

        if not isinstance(self.adapter, str):
            return self.adapter
        module_name, _, attr = self.adapter.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"{self.adapter} is not a tierlm Backend subclass")
        return cls


@functools.cache
def _entry_points() -> dict[str, list[metadata.EntryPoint]]:
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=GROUP):
        same = found.setdefault(ep.name, [])
        if all(e.value != ep.value for e in same):
            same.append(ep)
    return found


def refresh() -> None:
    """Read the installed entry points again (after installing a plugin at run time)."""
    _entry_points.cache_clear()
    _load.cache_clear()


def kinds() -> list[str]:
    """Every kind installed, sorted (imports nothing)."""
    return sorted(_entry_points())


def _origin(ep: metadata.EntryPoint) -> str:
    dist = ep.dist.name if ep.dist is not None else "?"
    return f"{ep.name} = {ep.value} (from {dist})"


@functools.cache
def _load(kind: str) -> BackendSpec:
    """The spec of ``kind``; ``LookupError`` (unknown) or ``ImportError`` (broken plugin)."""
    eps = _entry_points().get(kind)
    if not eps:
        known = ", ".join(kinds()) or "none: tierlm's package metadata is missing, pip install -e ."
        raise LookupError(f"unknown backend kind {kind!r} (known: {known})")
    if len(eps) > 1:
        raise ImportError(
            f"backend kind {kind!r} is declared twice: {'; '.join(_origin(e) for e in eps)}"
        )
    try:
        obj = eps[0].load()
    except Exception as e:  # a plugin's import failure, whatever it is, is reported whole
        raise ImportError(
            f"backend kind {kind!r} failed to load ({_origin(eps[0])}): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(obj, BackendSpec):
        raise ImportError(
            f"backend kind {kind!r} ({_origin(eps[0])}) is {obj!r}, not a "
            "tierlm.backends.registry.BackendSpec(config class, adapter class)"
        )
    return obj


def spec(kind: str, *, key: str) -> BackendSpec:
    """The spec of ``kind``, or :class:`ConfigError` naming ``key``."""
    try:
        return _load(kind)
    except (LookupError, ImportError) as e:
        raise ConfigError(str(e), key=key) from None


def parse_backend(data: Any) -> BackendConfig:
    """Validate one ``backends:`` entry with the configuration class of its ``kind``.

    Errors are a pydantic ``ValidationError`` located in the entry (``kind`` for an unknown
    or broken kind), so :class:`~tierlm.config.settings.Settings` reports them with the rest.
    """
    from tierlm.config.backends import BackendConfig

    if isinstance(data, BackendConfig):
        return data
    if not isinstance(data, Mapping):
        raise _error((), "backend_type", "must be a mapping with name, kind and model", data)
    kind = data.get("kind")
    if not isinstance(kind, str):
        raise _error(("kind",), "missing", "Field required (the backend's kind)", kind)
    try:
        cls = _load(kind).config
    except (LookupError, ImportError) as e:
        why = f"backend '{data.get('name')}': {e}"
        raise _error(("kind",), "backend_kind", why, kind) from None
    return cls.model_validate(dict(data))


def _error(loc: tuple[str, ...], kind: str, message: str, value: Any) -> ValidationError:
    detail = InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
    return ValidationError.from_exception_data("BackendConfig", [detail])
