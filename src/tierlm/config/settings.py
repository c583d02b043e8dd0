"""Typed settings. Tiers and backends are configuration, not code.

A deployment is a list of backends (one model at one endpoint each, with its boundary) and an
ordered list of tiers that group them, plus routing, server, ledger and budget settings.
See ``loader.py`` for where values come from and in which order.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from tierlm.layer0.config import CacheConfig, RuleConfig
from tierlm.types import Boundary, Privacy

BackendKind = Literal["llama_cpp", "openai", "anthropic", "ollama", "transformers"]

# Where each kind runs when the config does not say: in-process kinds never leave the process.
_DEFAULT_BOUNDARY: dict[str, Boundary] = {
    "llama_cpp": Boundary.PROCESS,
    "transformers": Boundary.PROCESS,
}


# Rough energy per generated token by boundary, joules, when a backend does not say: a small
# in-process model on a CPU (~10 W at ~30 tokens/s), a model server on this machine, a GPU
# server on the site (a share of ~700 W). External: unknown (a cloud's energy is not ours to
# measure); configure ``joules_per_token`` to let energy rules count it.
DEFAULT_JOULES_PER_TOKEN: dict[Boundary, float] = {
    Boundary.PROCESS: 0.3,
    Boundary.HOST: 2.0,
    Boundary.SITE: 5.0,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Timeouts(_Strict):
    """Per-attempt time limits, seconds. Local tiers keep ``connect`` short for fast failover."""

    connect: float = Field(default=2.0, gt=0)
    first_token: float = Field(default=30.0, gt=0)
    stall: float = Field(default=15.0, gt=0)  # longest silence between two stream chunks
    total: float = Field(default=300.0, gt=0)


class Price(_Strict):
    """USD per million tokens. Local backends cost zero unless configured."""

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)
    per_hour: float = Field(default=0.0, ge=0)  # e.g. energy or amortised hardware, local tiers
    per_request_min: float = Field(default=0.0, ge=0)  # the least one request is billed, USD


class BackendConfig(_Strict):
    """One model at one endpoint."""

    name: str = Field(min_length=1)
    kind: BackendKind
    model: str = Field(min_length=1)
    provider: str | None = None  # named preset for the OpenAI-compatible family (vllm, openai...)
    url: str | None = None
    api_key_env: str | None = None  # name of the environment variable holding the key
    api_key: SecretStr | None = None  # prefer api_key_env; never logged
    boundary: Boundary | None = None  # required for HTTP kinds: how far the data travels
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)  # the model's output ceiling
    price: Price | None = None  # None: the bundled price table, or zero for local backends
    tools: bool | None = None  # native tool calling; None: known per kind/provider
    # What this backend is good at: task kinds (tools, code, extraction, long_context, vision),
    # domains (legal, medical, finance) and languages (de, fr, ...). None: the provider's
    # defaults. The policy prefers, within a tier, the backend matching the request.
    good_at: list[str] | None = None
    # Energy per generated token, joules; None: a rough default by boundary
    # (:data:`DEFAULT_JOULES_PER_TOKEN`), unknown for external backends. Read by energy rules.
    joules_per_token: float | None = Field(default=None, ge=0)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # local (in-process) model settings
    max_concurrency: int = Field(default=1, ge=1)
    max_queue: int = Field(default=16, ge=0)
    keep_alive: float = Field(default=300.0, ge=0)  # seconds idle before unload; 0 = never
    threads: int | None = Field(default=None, ge=1)
    n_ctx: int = Field(default=4096, ge=64)
    memory_limit_gb: float | None = Field(default=None, gt=0)  # cap on RAM a load may assume
    # llama_cpp: run the model in a supervised llama-server worker process (None: when one is
    # installed; false: in the calling process, with llama-cpp-python)
    worker: bool | None = None
    # an OpenAI-compatible upstream that also serves /v1/embeddings (see tierlm.embeddings)
    embeddings: bool = False
    options: dict[str, Any] = Field(default_factory=dict)  # kind-specific extras

    @field_validator("boundary", mode="before")
    @classmethod
    def _parse_boundary(cls, v: Any) -> Any:
        return None if v is None else Boundary.parse(v)

    @model_validator(mode="after")
    def _boundary_known(self) -> BackendConfig:
        if self.boundary is None:
            default = _DEFAULT_BOUNDARY.get(self.kind)
            if default is None and self.provider is not None:
                from tierlm.config.providers import PROVIDERS

                p = PROVIDERS.get(self.provider)
                default = p.boundary if p else None
            if default is None:
                raise ValueError(
                    f"backend '{self.name}' (kind {self.kind}) must declare its boundary: "
                    "process, host, site or external"
                )
            self.boundary = default
        return self

    @property
    def where(self) -> Boundary:
        assert self.boundary is not None
        return self.boundary

    def energy_per_token(self) -> float | None:
        """``joules_per_token``, or the default for its boundary (``None``: unknown)."""
        if self.joules_per_token is not None:
            return self.joules_per_token
        return DEFAULT_JOULES_PER_TOKEN.get(self.where)

    def strengths(self) -> frozenset[str]:
        """``good_at``, or the provider's defaults when it is not set."""
        if self.good_at is not None:
            return frozenset(self.good_at)
        from tierlm.config.providers import PROVIDERS

        name = self.provider or ("anthropic" if self.kind == "anthropic" else None)
        p = PROVIDERS.get(name) if name else None
        return p.good_at if p is not None else frozenset()

    @field_validator("good_at")
    @classmethod
    def _known_strengths(cls, v: list[str] | None) -> list[str] | None:
        from tierlm.signals.task import STRENGTHS

        unknown = sorted(set(v or ()) - STRENGTHS)
        if unknown:
            raise ValueError(
                f"unknown good_at {unknown[0]!r} (known: {', '.join(sorted(STRENGTHS))})"
            )
        return v


class CascadeConfig(_Strict):
    """Judge this tier's answers and escalate those below ``threshold`` (execute/cascade.py).

    ``buffer``: the whole cheap answer is judged before any of it is released (every check;
    time to first token = the cheap answer's full time). ``stream``: the first
    ``check_chars`` characters are held and checked for refusal, wrong language, looping and
    emptiness, then the answer streams through; the full judgement is recorded but can no
    longer escalate.
    """

    threshold: float | None = Field(default=None, ge=0, le=1)  # None: the judge's default
    mode: Literal["buffer", "stream"] = "buffer"
    check_chars: int = Field(default=200, ge=1)


class TierConfig(_Strict):
    """An ordered level of the hierarchy: one or more backends, tried in order."""

    name: str = Field(min_length=1)
    backends: list[str] = Field(min_length=1)
    # How hard a request this tier answers well, in complexity units [0,1]. None: by position.
    strength: float | None = Field(default=None, ge=0, le=1)
    cascade: CascadeConfig | None = None  # answer-checked escalation from this tier


class RoutingConfig(_Strict):
    quality: float = Field(default=0.5, ge=0, le=1)  # the default quality bar
    complexity_method: Literal["model", "llm", "length"] = "model"
    default_privacy: Privacy = Privacy.PUBLIC
    sensitive_terms: list[str] = Field(default_factory=list)  # organisation-specific terms
    long_context_tokens: int = Field(default=8000, gt=0)
    prefer_warm: bool = True


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ApiKeyConfig(_Strict):
    name: str
    hash: str  # sha256 hex of the key; see `tierlm keys hash`
    privacy: Privacy | None = None  # the key's floor: requests are at least this private
    max_privacy_boundary: Literal["process", "host", "site", "external"] = "external"
    tiers: list[str] | None = None  # allowed tiers (checked against `tiers`); None = all
    admin: bool = False
    rpm: int | None = Field(default=None, ge=1)  # requests per minute; None = no limit
    tpm: int | None = Field(default=None, ge=1)  # estimated tokens per minute; None = no limit

    @field_validator("hash")
    @classmethod
    def _sha256_hex(cls, v: str) -> str:
        digest = v.strip().lower()
        if not _HEX64.match(digest):
            # never echo the value: it may be the raw key itself
            raise ValueError(
                "must be the sha256 hex digest of the key (64 hex digits), never the key "
                "itself; `tierlm keys hash` prints it"
            )
        return digest


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    drain_seconds: float = Field(default=20.0, ge=0)
    max_connections: int = Field(default=2048, ge=1)  # more are refused (503) at once
    header_timeout: float = Field(default=10.0, gt=0)  # seconds for a request's headers
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)  # request line and headers
    rate_limit_url: str | None = None  # None: per-key rate limits in process; "redis://..."


class LedgerConfig(_Strict):
    url: str | None = None  # None: SQLite file in the data directory; "postgresql://..."; "off"
    store_prompts: bool = False  # when on, sensitive findings are redacted before storing
    commit_before_reply: bool = False  # an answer goes out only once its record is committed


class BudgetLimit(_Strict):
    scope: Literal["global", "key", "tier"] = "global"
    name: str | None = None  # key or tier name for those scopes
    period: Literal["month", "day"] = "month"
    usd: float = Field(ge=0)


class BudgetConfig(_Strict):
    limits: list[BudgetLimit] = Field(default_factory=list)
    local_only_below: float = Field(default=0.10, ge=0, le=1)  # share of budget remaining
    per_request_share: float = Field(default=0.05, gt=0, le=1)  # cap: share of what remains


class EnergyConfig(_Strict):
    """Energy-aware routing (signals/energy.py reads the state, policy/energy.py applies it).

    Rules (each off when ``None``; urgent requests are never restricted):
    ``battery_below``: on battery (not charging) below this share, only backends within
    ``battery_max_joules_per_token`` are eligible (unknown energy counts as over);
    ``carbon_above``: grid intensity over this many g/kWh lowers the quality bar by
    ``carbon_quality_drop`` (like ``cost_sensitivity: high``), so the cheapest, lightest
    tier within reach answers; ``solar_surplus_above_w``: with that much surplus, the carbon
    rule is lifted and local tiers are tried before external ones.
    """

    source: str = "auto"  # auto | sysfs | sysfs:DIR | file:PATH | http(s)://URL | none
    refresh_seconds: float = Field(default=60.0, gt=0)
    max_age_seconds: float = Field(default=300.0, gt=0)
    timeout_seconds: float = Field(default=2.0, gt=0)  # an HTTP source's whole read
    carbon_schedule: list[float] | None = Field(default=None, min_length=24, max_length=24)
    battery_below: float | None = Field(default=0.2, ge=0, le=1)
    battery_max_joules_per_token: float = Field(default=1.0, ge=0)
    carbon_above: float | None = Field(default=None, ge=0)
    carbon_quality_drop: float = Field(default=0.15, ge=0, le=1)
    solar_surplus_above_w: float | None = Field(default=None, ge=0)

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v in ("auto", "sysfs", "none") or v.startswith(("sysfs:", "file:")):
            return v
        if v.startswith(("http://", "https://")):
            return v
        raise ValueError(
            f"unknown energy source {v!r} (auto, sysfs, sysfs:DIR, file:PATH, "
            "http(s)://URL or none)"
        )


class EmbeddingsConfig(_Strict):
    """``/v1/embeddings`` and ``/api/embed`` (see :mod:`tierlm.embeddings`)."""

    embedder: Literal["wordllama", "hashed"] = "wordllama"  # the in-process model
    prefer: str | None = None  # an embedding backend tried first for model "auto"
    max_inputs: int = Field(default=2048, ge=1)  # texts per request
    max_input_chars: int = Field(default=32_768, ge=1)  # characters per text


class Settings(_Strict):
    """A whole deployment."""

    deployment: str = "embedded"
    air_gapped: bool = False
    backends: list[BackendConfig] = Field(min_length=1)
    tiers: list[TierConfig] = Field(min_length=1)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)
    rules: list[RuleConfig] = Field(default_factory=list)  # layer 0, before any model
    cache: CacheConfig = Field(default_factory=CacheConfig)
    energy: EnergyConfig | None = None  # None: no energy state is read, no rule applies
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    models_dir: str | None = None
    cache_dir: str | None = None
    data_dir: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [b.name for b in self.backends]
        tier_names = [t.name for t in self.tiers]
        for what, seq in (("backend", names), ("tier", tier_names)):
            dup = {n for n in seq if seq.count(n) > 1}
            if dup:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(sorted(dup))}")
        for i, t in enumerate(self.tiers):
            for b in t.backends:
                if b not in names:
                    raise ValueError(
                        f"config key `tiers[{i}].backends`: tier '{t.name}' uses backend '{b}', "
                        f"which is not defined (defined: {', '.join(names)})"
                    )
        for i, t in enumerate(self.tiers):
            if t.name in names and t.backends != [t.name]:
                raise ValueError(
                    f"config key `tiers[{i}].name`: tier '{t.name}' has the name of a backend "
                    f"but uses other backends too ({', '.join(t.backends)}), so `model: "
                    f"{t.name}` would be ambiguous; rename the tier or the backend "
                    f"(e.g. tier '{t.name}-tier')"
                )
        for i, k in enumerate(self.server.api_keys):
            unknown = [t for t in k.tiers or [] if t not in tier_names]
            if unknown:
                raise ValueError(
                    f"config key `server.api_keys[{i}].tiers`: key '{k.name}' names "
                    f"{', '.join(repr(t) for t in unknown)}, not a tier here "
                    f"(tiers: {', '.join(tier_names)})"
                )
        for cfg in self.backends:
            if cfg.embeddings and cfg.kind != "openai":
                raise ValueError(f"backend '{cfg.name}': embeddings needs kind openai")
        prefer = self.embeddings.prefer
        if prefer is not None and not any(b.embeddings and b.name == prefer for b in self.backends):
            raise ValueError(f"embeddings.prefer: '{prefer}' is no backend with embeddings: true")
        if self.air_gapped:
            ext = [b.name for b in self.backends if b.where is Boundary.EXTERNAL]
            if ext:
                raise ValueError(
                    "an air-gapped deployment cannot configure external backends; "
                    f"remove: {', '.join(ext)}"
                )
        return self

    def backend(self, name: str) -> BackendConfig:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)

    def tier_strength(self, tier: TierConfig) -> float:
        """A tier's strength, or an even spread by position (last tier = 1.0)."""
        if tier.strength is not None:
            return tier.strength
        i = self.tiers.index(tier)
        n = len(self.tiers)
        return 1.0 if i == n - 1 else round(0.35 + 0.65 * i / max(n - 1, 1), 3)
