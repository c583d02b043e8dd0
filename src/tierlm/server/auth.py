"""API keys for the gateway: who is calling, and what may they do.

Keys are optional (off on the embedded default). When ``server.api_keys`` is configured, every
route but ``/health`` needs a key, sent as ``Authorization: Bearer KEY`` or ``x-api-key: KEY``.
Only the sha256 hex digest of each key is stored (``tierlm keys hash`` prints it); a presented
key is hashed and compared with every stored digest using :func:`hmac.compare_digest`, so the
comparison does not leak which digest matched first. Each key carries its own privacy floor,
boundary ceiling and allowed tiers (applied by the policy through ``Conditions.api_key``);
admin routes (``/metrics``, ``/admin/*``) need a key marked ``admin: true``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from tierlm.config.settings import ApiKeyConfig
from tierlm.errors import AuthError, PermissionDenied


def hash_key(key: str) -> str:
    """The sha256 hex digest stored in the config for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class KeyRing:
    """The configured keys; :meth:`identify` maps a request to its key (or refuses it)."""

    def __init__(self, keys: list[ApiKeyConfig]) -> None:
        # each hash is a validated sha256 hex digest (ApiKeyConfig checks it)
        self._keys = [(bytes.fromhex(k.hash.lower()), k) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Mapping[str, str]) -> ApiKeyConfig | None:
        """The caller's key config; ``None`` when keys are off. Raises :class:`AuthError`."""
        if not self._keys:
            return None
        key = presented_key(headers)
        if key is None:
            raise AuthError("missing API key: send 'Authorization: Bearer KEY' or 'x-api-key'")
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        found: ApiKeyConfig | None = None
        for stored, cfg in self._keys:  # compare with every key: no early exit
            if hmac.compare_digest(stored, digest):
                found = cfg
        if found is None:
            raise AuthError("invalid API key")
        return found

    def require_admin(self, headers: Mapping[str, str]) -> ApiKeyConfig | None:
        """Like :meth:`identify`, and the key must be an admin key (when keys are on)."""
        key = self.identify(headers)
        if key is not None and not key.admin:
            raise PermissionDenied(f"API key '{key.name}' is not an admin key")
        return key
