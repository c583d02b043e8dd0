"""Typed settings. Tiers and backends are configuration, not code.

A deployment is a list of backends (one model at one endpoint each, with its boundary) and an
ordered list of tiers that group them, plus routing, server, ledger and budget settings.
See ``loader.py`` for where values come from and in which order.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainValidator,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from tierlm.batch.config import BatchConfig
from tierlm.config.backends import (
    DEFAULT_JOULES_PER_TOKEN,
    BackendConfig,
    OpenAIConfig,
    Price,
    Strict,
    Timeouts,
)
from tierlm.layer0.config import CacheConfig, RuleConfig
from tierlm.types import Boundary, Privacy


def _any_kind(value: Any) -> BackendConfig:
    from tierlm.backends.registry import parse_backend

    return parse_backend(value)


__all__ = [
    "DEFAULT_JOULES_PER_TOKEN",
    "AnyBackend",
    "BackendConfig",
    "Price",
    "Settings",
    "TierConfig",
    "Timeouts",
]

# A ``backends:`` entry, validated by the configuration class of its kind (the registry's).
AnyBackend = Annotated[SerializeAsAny[BackendConfig], PlainValidator(_any_kind)]


class CascadeConfig(Strict):
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


class TierConfig(Strict):
    """An ordered level of the hierarchy: one or more backends, tried in order."""

    name: str = Field(min_length=1)
    backends: list[str] = Field(min_length=1)
    # How hard a request this tier answers well, in complexity units [0,1]. None: by position.
    strength: float | None = Field(default=None, ge=0, le=1)
    cascade: CascadeConfig | None = None  # answer-checked escalation from this tier


class RoutingConfig(Strict):
    quality: float = Field(default=0.5, ge=0, le=1)  # the default quality bar
    complexity_method: Literal["model", "llm", "length"] = "model"
    default_privacy: Privacy = Privacy.PUBLIC
    sensitive_terms: list[str] = Field(default_factory=list)  # organisation-specific terms
    long_context_tokens: int = Field(default=8000, gt=0)
    prefer_warm: bool = True


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ApiKeyConfig(Strict):
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


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    drain_seconds: float = Field(default=20.0, ge=0)
    max_connections: int = Field(default=2048, ge=1)  # more are refused (503) at once
    header_timeout: float = Field(default=10.0, gt=0)  # seconds for a request's headers
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)  # request line and headers
    rate_limit_url: str | None = None  # None: per-key rate limits in process; "redis://..."


class LedgerConfig(Strict):
    url: str | None = None  # None: SQLite file in the data directory; "postgresql://..."; "off"
    store_prompts: bool = False  # when on, sensitive findings are redacted before storing
    commit_before_reply: bool = False  # an answer goes out only once its record is committed


class BudgetLimit(Strict):
    scope: Literal["global", "key", "tier"] = "global"
    name: str | None = None  # key or tier name for those scopes
    period: Literal["month", "day"] = "month"
    usd: float = Field(ge=0)


class BudgetConfig(Strict):
    limits: list[BudgetLimit] = Field(default_factory=list)
    local_only_below: float = Field(default=0.10, ge=0, le=1)  # share of budget remaining
    per_request_share: float = Field(default=0.05, gt=0, le=1)  # cap: share of what remains


class EnergyConfig(Strict):
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


class EmbeddingsConfig(Strict):
    """``/v1/embeddings`` and ``/api/embed`` (see :mod:`tierlm.embeddings`)."""

    embedder: Literal["wordllama", "hashed"] = "wordllama"  # the in-process model
    prefer: str | None = None  # an embedding backend tried first for model "auto"
    max_inputs: int = Field(default=2048, ge=1)  # texts per request
    max_input_chars: int = Field(default=32_768, ge=1)  # characters per text


class TelemetryConfig(Strict):
    """OpenTelemetry traces (:mod:`tierlm.telemetry`; the ``otel`` extra). Off by default.

    ``exporter``: ``otlp`` (OTLP/HTTP protobuf to ``endpoint``, else to
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``; one must be
    set), ``console`` (spans as JSON on stdout) or ``none`` (spans made, nothing exported).
    ``sample_ratio``: the share of new traces kept (a caller's sampled flag is followed);
    ``None``: ``OTEL_TRACES_SAMPLER``, else all. ``propagate``: send ``traceparent`` to
    backends on this host or site (never to external ones).
    """

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] = "otlp"
    endpoint: str | None = None  # e.g. http://collector:4318/v1/traces
    service_name: str | None = None  # None: OTEL_SERVICE_NAME, else "tierlm"
    sample_ratio: float | None = Field(default=None, ge=0, le=1)
    propagate: bool = True


class Settings(Strict):
    """A whole deployment."""

    deployment: str = "embedded"
    air_gapped: bool = False
    backends: list[AnyBackend] = Field(min_length=1)
    tiers: list[TierConfig] = Field(min_length=1)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)
    rules: list[RuleConfig] = Field(default_factory=list)  # layer 0, before any model
    cache: CacheConfig = Field(default_factory=CacheConfig)
    energy: EnergyConfig | None = None  # None: no energy state is read, no rule applies
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)  # deferred work (Batch API)
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
        prefer = self.embeddings.prefer
        if prefer is not None and not any(
            isinstance(b, OpenAIConfig) and b.embeddings and b.name == prefer for b in self.backends
        ):
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
