"""The answer cache: exact, and (when enabled) semantic with the near-miss guard.

**Eligibility.** Only deterministic requests are cached: temperature at or below
``cache.max_temperature`` (0 by default; a request that leaves temperature to the backend only
with ``unset_temperature``). ``Cache-Control: no-cache`` or ``x-tierlm-cache: bypass`` (hint
``cache: bypass``) skips the cache both ways. Only finished answers (``stop``, ``length``,
``tool_calls``) from a model are stored, never a rule's.

**Exact key**: SHA-256 of the scope and the canonical JSON of the messages (NFKC, whitespace
collapsed; content parts kept whole) and of every field that changes the answer or its route:
the model pin, ``max_tokens``, temperature, ``top_p``/``top_k``, ``stop``, ``seed``, tools and
``tool_choice``, pass-through fields (``response_format`` ...) and the routing hints.

**Semantic**: everything but the last user message must match exactly (same bucket); the last
user message's embedding must reach ``semantic.threshold`` cosine similarity, and the near-miss
guard (:mod:`tierlm.layer0.guard`) must agree. The index is in this process only.

**Scope and privacy.** An entry is served only within its scope: the API key (or the key's
configured tenant) and the effective privacy level. Answers to ``private`` or sensitive requests
are scoped by key even when a tenant is configured, and stay in this process's memory: they
are never written to the SQLite or Redis store, whatever ``cache.store`` says. A hit is served
only to a key that may itself use the tier and boundary the answer came from. Keys are hashes; the
stored value is the answer (needed to serve it) and where it came from, never the prompt.

**Waiting.** :meth:`AnswerCache.lookup` and :meth:`~AnswerCache.store` are awaited: this
process's memory is read at once, a shared store is awaited (bounded, a failure is a miss:
:class:`~tierlm.layer0.store.SharedStore`). :meth:`~AnswerCache.lookup_local` reads this
process's memory only, for a caller that cannot wait.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tierlm.layer0.guard import Compact, anchors
from tierlm.layer0.store import Clock, MemoryStore, SharedStore, open_shared
from tierlm.privacy import key_reaches
from tierlm.types import Boundary, ChatRequest, ChatResponse, Message, Privacy, Usage

if TYPE_CHECKING:
    from tierlm.config.settings import ApiKeyConfig
    from tierlm.layer0.config import CacheConfig
    from tierlm.layer0.embed import Embedder, Vector

TIER = "cache"
_STORED_FINISH = ("stop", "length", "tool_calls")
_PARAMS = {"model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed"}
_PARAMS |= {"tools", "tool_choice", "extra"}


@dataclass(slots=True)
class Scope:
    """Whose entries a request may see, and where its own answer may be kept."""

    name: str  # "key:<name>" or "tenant:<name>", plus the privacy level
    local_only: bool  # private or sensitive: this process's memory only


@dataclass(slots=True)
class Lookup:
    """What the cache said about one request."""

    status: str  # hit-exact | hit-semantic | miss | bypass
    response: ChatResponse | None = None
    similarity: float | None = None
    why: str = ""
    origin: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status}
        if self.similarity is not None:
            d["similarity"] = round(self.similarity, 4)
        if self.origin:
            d["origin"] = self.origin
        if self.why:
            d["why"] = self.why
        return d


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _message_key(m: Message) -> list[Any]:
    content = _norm(m.content) if isinstance(m.content, str) else m.content
    calls = [c.model_dump(mode="json") for c in m.tool_calls] if m.tool_calls else None
    return [m.role, content, m.name, calls, m.tool_call_id]


def _digest(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def _params(request: ChatRequest) -> dict[str, Any]:
    p = request.model_dump(mode="json", include=_PARAMS)
    p["hints"] = request.hints.model_dump(mode="json", exclude={"cache"}, exclude_none=True)
    return p


class _Bucket:
    """The semantic index of one bucket: unit vectors, their keys and anchors."""

    def __init__(self, dim: int) -> None:
        self.vecs = np.zeros((4, dim), dtype=np.float32)
        self.keys: list[str | None] = []
        self.anchors: list[Compact | None] = []

    def add(self, vec: Vector, key: str, anc: Compact) -> None:
        n = len(self.keys)
        if n == len(self.vecs):
            self.vecs = np.concatenate([self.vecs, np.zeros_like(self.vecs)])
        self.vecs[n] = vec
        self.keys.append(key)
        self.anchors.append(anc)

    def drop(self, key: str) -> None:
        i = self.keys.index(key)
        self.keys[i] = self.anchors[i] = None
        self.vecs[i] = 0.0


class AnswerCache:
    """Exact and semantic lookups over a process-local store and the configured one."""

    def __init__(
        self,
        cfg: CacheConfig,
        data_dir: Path,
        embedder: Callable[[], Embedder],
        clock: Clock | None = None,
    ) -> None:
        self.cfg = cfg
        args = (cfg.ttl_seconds, cfg.max_entries, cfg.max_bytes)
        self.local = MemoryStore(*args, clock=clock or time.monotonic)
        self.shared: SharedStore | None = open_shared(cfg, data_dir, clock)
        self._embedder = embedder() if cfg.semantic.enabled else None
        self.guard = True  # the near-miss guard (off only to measure what it does)
        self._buckets: dict[str, _Bucket] = {}
        self._order: dict[str, _Bucket] = {}  # exact key -> its bucket, oldest first
        self._last: tuple[ChatRequest, str, str, str] | None = None
        self.counts = {"hit-exact": 0, "hit-semantic": 0, "miss": 0, "bypass": 0, "stored": 0}

    # -- deciding ---------------------------------------------------------------------------
    def bypass(self, request: ChatRequest) -> str | None:
        """Why ``request`` skips the cache, or ``None`` when it may use it."""
        if request.hints.cache == "bypass":
            return "the client asked to bypass the cache"
        t = request.temperature
        if t is None and not self.cfg.unset_temperature:
            return "temperature unset (cache.unset_temperature is off)"
        if t is not None and t > self.cfg.max_temperature:
            return f"temperature {t} > cache.max_temperature {self.cfg.max_temperature}"
        return None

    def scope(self, request: ChatRequest, privacy: Privacy, sensitive: bool) -> Scope:
        key = request.api_key_id or "-"
        local = sensitive or privacy is not Privacy.PUBLIC
        tenant = None if local else self.cfg.tenants.get(key)
        who = f"tenant:{tenant}" if tenant else f"key:{key}"
        return Scope(f"{who}|{privacy.value}", local_only=sensitive or privacy is Privacy.PRIVATE)

    # -- reading ----------------------------------------------------------------------------
    async def lookup(self, request: ChatRequest, scope: Scope, key: ApiKeyConfig | None) -> Lookup:
        """The exact entry, then semantic neighbours: in this process's memory, then in the
        shared store (awaited)."""
        for exact, sim, bucket in self._probes(request, scope):
            raw = self.local.get(exact)
            if raw is None and self.shared is not None:
                raw = await self.shared.get(exact)
                if raw is None and not self.shared.available:
                    continue  # unknown, not gone: the index keeps it
            hit = self._hit(exact, raw, key, sim, bucket)
            if hit is not None:
                return self.count(hit)
        return self.count(Lookup("miss"))

    def lookup_local(self, request: ChatRequest, scope: Scope, key: ApiKeyConfig | None) -> Lookup:
        """As :meth:`lookup`, in this process's memory only (no waiting)."""
        for exact, sim, bucket in self._probes(request, scope):
            raw = self.local.get(exact)
            hit = self._hit(exact, raw, key, sim, None if self.shared else bucket)
            if hit is not None:
                return self.count(hit)
        return self.count(Lookup("miss"))

    def _probes(
        self, request: ChatRequest, scope: Scope
    ) -> Iterator[tuple[str, float | None, _Bucket | None]]:
        """The keys to try, best first: the exact key, then (embedded only if asked for) the
        semantic neighbours the guard lets through, with their similarity and bucket."""
        exact, bucket_id = self._keys(request, scope)
        yield exact, None, None
        text = _last_user_text(request)
        bucket = self._buckets.get(bucket_id)
        if self._embedder is None or text is None or bucket is None or not bucket.keys:
            return
        q = self._embedder.embed(text)
        # einsum, not BLAS: a threaded matrix-vector product is slower on a busy CPU
        sims = np.einsum("ij,j->i", bucket.vecs[: len(bucket.keys)], q)
        anc = anchors(text)
        for i in np.argsort(-sims)[:4]:
            sim = float(sims[i])
            if sim < self.cfg.semantic.threshold:
                break
            k, a = bucket.keys[i], bucket.anchors[i]
            if k is None or a is None or (self.guard and not a.agrees(anc)):
                continue
            yield k, sim, bucket

    def _hit(
        self,
        exact: str,
        raw: bytes | None,
        key: ApiKeyConfig | None,
        sim: float | None,
        bucket: _Bucket | None,
    ) -> Lookup | None:
        """The hit ``raw`` (the entry under ``exact``) makes for ``key``; an entry gone from
        the store leaves ``bucket``, the semantic index."""
        if raw is None:
            if bucket is not None:
                bucket.drop(exact)
            return None
        found = self._decode(raw, key)
        if found is None:
            return None
        if sim is None:
            return Lookup("hit-exact", found[0], origin=found[1])
        return Lookup("hit-semantic", found[0], sim, origin=found[1])

    def _decode(
        self, raw: bytes, key: ApiKeyConfig | None
    ) -> tuple[ChatResponse, dict[str, Any]] | None:
        entry = json.loads(raw)
        origin = entry["origin"]
        if key is not None and not _may_use(key, origin):
            return None
        resp = ChatResponse(
            model=entry["model"],
            message=Message.model_validate(entry["message"]),
            finish_reason=entry["finish_reason"],
            usage=Usage.model_validate(entry["usage"]),
            backend=TIER,
            tier=TIER,
        )
        return resp, origin

    def count(self, lookup: Lookup) -> Lookup:
        self.counts[lookup.status] += 1
        return lookup

    # -- writing ----------------------------------------------------------------------------
    async def store(
        self, request: ChatRequest, scope: Scope, resp: ChatResponse, boundary: str
    ) -> bool:
        """Keep ``resp`` as the answer to ``request``; whether it was kept (a shared store's
        failure is not seen here: see :class:`~tierlm.layer0.store.SharedStore`)."""
        if resp.finish_reason not in _STORED_FINISH or not resp.tier or resp.tier == "rules":
            return False
        exact, bucket_id = self._keys(request, scope)
        entry = {
            "model": resp.model,
            "message": resp.message.model_dump(mode="json", exclude_none=True),
            "finish_reason": resp.finish_reason,
            "usage": resp.usage.model_dump(mode="json"),
            "origin": {"tier": resp.tier, "backend": resp.backend, "boundary": boundary},
        }
        raw = json.dumps(entry).encode()
        if scope.local_only or self.shared is None:
            self.local.put(exact, raw)
        else:
            await self.shared.put(exact, raw)
        self.counts["stored"] += 1
        text = _last_user_text(request)
        if self._embedder is not None and text is not None:
            self._index(bucket_id, exact, text)
        return True

    def _index(self, bucket_id: str, exact: str, text: str) -> None:
        assert self._embedder is not None
        if exact in self._order:
            return
        b = self._buckets.get(bucket_id)
        if b is None:
            b = self._buckets[bucket_id] = _Bucket(self._embedder.dim)
        b.add(self._embedder.embed(text), exact, anchors(text).compact())
        self._order[exact] = b
        if len(self._order) > self.cfg.semantic.max_entries:
            old = next(iter(self._order))
            self._order.pop(old).drop(old)

    def _keys(self, request: ChatRequest, scope: Scope) -> tuple[str, str]:
        """The exact key and the semantic bucket of ``request`` (the last request's are
        remembered: a miss is looked up, then stored)."""
        if self._last is not None and self._last[0] is request and self._last[1] == scope.name:
            return self._last[2], self._last[3]
        messages = [_message_key(m) for m in request.messages]
        params = _params(request)
        exact = _digest(scope.name, messages, params)
        bucket = _digest(scope.name, messages[:-1], params)
        self._last = (request, scope.name, exact, bucket)
        return exact, bucket

    # -- operating --------------------------------------------------------------------------
    async def clear(self) -> int:
        n = self.local.clear() + (await self.shared.clear() if self.shared is not None else 0)
        self._buckets.clear()
        self._order.clear()
        return n

    async def stats(self) -> dict[str, Any]:
        stores = [self.local.stats()]
        if self.shared is not None:
            stores.append(await self.shared.stats())
        return {"counts": dict(self.counts), "stores": stores, "semantic_index": len(self._order)}

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()


def _last_user_text(request: ChatRequest) -> str | None:
    last = request.messages[-1]
    if last.role != "user" or not isinstance(last.content, str):
        return None
    return _norm(last.content)


def _may_use(key: ApiKeyConfig, origin: dict[str, Any]) -> bool:
    """Whether ``key`` could itself have reached the tier and boundary an answer came from."""
    where = Boundary.parse(origin.get("boundary") or "external")
    return key_reaches(key, str(origin.get("tier")), where)
