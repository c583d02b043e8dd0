"""Each backend kind's configuration: common fields on :class:`BackendConfig`, the kind's own
typed fields on its subclass.

``backends:`` entries are validated by the class their ``kind`` names in the backend registry
(:mod:`tierlm.backends.registry`, the ``tierlm.backends`` entry-point group), so a plugin's
kind is checked as strictly as a built-in one: every class forbids unknown keys, and an error
names the key (``backends.0.n_ctx``).

=================  =========================================================================
kind               its own fields
=================  =========================================================================
``llama_cpp``      n_ctx, threads, worker, keep_alive, memory_limit_gb, max_concurrency,
                   max_queue, sampling, max_tokens, constrain_tools, n_batch, n_gpu_layers,
                   flash_attn, chat_format, seed, load_timeout, poll, cache_ram_mb,
                   server_args, env
``transformers``   threads, memory_limit_gb, max_concurrency, max_queue, max_tokens, device,
                   dtype
``openai``         (HTTP) + quirks, extra_body, constrain_tools, metrics, embeddings
``anthropic``      (HTTP) + max_tokens, version, beta, extra_body
``ollama``         (HTTP) + keep_alive, num_ctx, ollama_options
``function``       function (``"module:callable"``, or the callable itself from Python)
=================  =========================================================================

(HTTP): url, provider, api_key_env, api_key, headers, max_connections, keepalive_timeout.

The old flat form, kind-specific keys under ``options:``, is still read: each key moves to
the field of the same name (llama.cpp's sampling keys to ``sampling``), with one warning in
the log; a key the kind does not have is refused (``options.<key>``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from tierlm.types import Boundary

log = logging.getLogger("tierlm.config")

# Rough energy per generated token by boundary, joules, when a backend does not say: a small
# in-process model on a CPU (~10 W at ~30 tokens/s), a model server on this machine, a GPU
# server on the site (a share of ~700 W). External: unknown (a cloud's energy is not ours to
# measure); configure ``joules_per_token`` to let energy rules count it.
DEFAULT_JOULES_PER_TOKEN: dict[Boundary, float] = {
    Boundary.PROCESS: 0.3,
    Boundary.HOST: 2.0,
    Boundary.SITE: 5.0,
}


class Strict(BaseModel):
    """Every settings model: unknown keys are refused, defaults validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class Timeouts(Strict):
    """Per-attempt time limits, seconds. Local tiers keep ``connect`` short for fast failover."""

    connect: float = Field(default=2.0, gt=0)
    first_token: float = Field(default=30.0, gt=0)
    stall: float = Field(default=15.0, gt=0)  # longest silence between two stream chunks
    total: float = Field(default=300.0, gt=0)


class Price(Strict):
    """USD per million tokens. Local backends cost zero unless configured."""

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)
    per_hour: float = Field(default=0.0, ge=0)  # e.g. energy or amortised hardware, local tiers
    per_request_min: float = Field(default=0.0, ge=0)  # the least one request is billed, USD


class BackendConfig(Strict):
    """One model at one endpoint: what every kind has. Validate a ``backends:`` entry with
    :func:`tierlm.backends.registry.parse_backend` (the class of its kind), or build a kind's
    class directly (``OpenAIConfig(name=..., url=...)``)."""

    # Where a backend of this kind runs when the config does not say (None: it must say).
    default_boundary: ClassVar[Boundary | None] = None
    # ``options:`` keys of the old flat form that moved into a nested field: key -> field.
    legacy_groups: ClassVar[dict[str, str]] = {}

    name: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    model: str = Field(min_length=1)
    boundary: Boundary | None = None  # how far the data travels; required for HTTP kinds
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

    @model_validator(mode="before")
    @classmethod
    def _lift_options(cls, data: Any) -> Any:
        """The old ``options:`` bag: each key to its typed field."""
        if cls is BackendConfig:
            raise TypeError(
                "BackendConfig is the base of every kind's configuration: validate an entry "
                "with tierlm.backends.registry.parse_backend, or build its kind's class "
                "(LlamaCppConfig, OpenAIConfig, FunctionConfig...)"
            )
        if not isinstance(data, dict) or "options" not in data:
            return data
        opts, out = data["options"] or {}, {k: v for k, v in data.items() if k != "options"}
        if not isinstance(opts, dict):
            raise ValueError("options: must be a mapping (better: the keys themselves)")
        for key, value in opts.items():
            group = cls.legacy_groups.get(key)
            if group is not None and isinstance(out.setdefault(group, {}), dict):
                out[group].setdefault(key, value)
            elif key in cls.model_fields and key not in BackendConfig.model_fields:
                out.setdefault(key, value)
            else:
                own = sorted(set(cls.model_fields) - set(BackendConfig.model_fields))
                raise ValueError(
                    f"options.{key}: kind {data.get('kind')!r} has no such setting "
                    f"(its own: {', '.join(own) or 'none'})"
                )
        log.warning(
            "backend %r: `options:` is deprecated; write %s on the backend itself",
            data.get("name"),
            ", ".join(f"`{cls.legacy_groups.get(k, '')}.{k}`".replace("`.", "`") for k in opts),
        )
        return out

    @field_validator("boundary", mode="before")
    @classmethod
    def _parse_boundary(cls, v: Any) -> Any:
        return None if v is None else Boundary.parse(v)

    @model_validator(mode="after")
    def _boundary_known(self) -> BackendConfig:
        if self.boundary is None:
            default = self.implied_boundary()
            if default is None:
                raise ValueError(
                    f"backend '{self.name}' (kind {self.kind}) must declare its boundary: "
                    "process, host, site or external"
                )
            self.boundary = default
        return self

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

    def implied_boundary(self) -> Boundary | None:
        """The boundary when none is configured: the kind's (None: it must be configured)."""
        return self.default_boundary

    def provider_name(self) -> str | None:
        """The named provider (:mod:`tierlm.config.providers`) this backend is, if any."""
        return None

    def prompt_window(self) -> int | None:
        """Tokens a prompt may fill: ``context_window`` (None: unknown)."""
        return self.context_window

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

        name = self.provider_name()
        p = PROVIDERS.get(name) if name else None
        return p.good_at if p is not None else frozenset()


# -------------------------------------------------------------------------- in-process models


# What a llama.cpp model samples with where neither the request nor ``sampling:`` says:
# llama-cpp-python's chat defaults. Sent explicitly to both engines, since llama-server's own
# defaults differ (temperature 0.8) and so do llama-cpp-python's for a raw completion.
LLAMA_SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 0.2,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
}


class Sampling(Strict):
    """A local model's sampling defaults, used where a request does not say."""

    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)

    def resolved(self) -> dict[str, Any]:
        """Every setting, the unset ones at :data:`LLAMA_SAMPLING_DEFAULTS`."""
        return {**LLAMA_SAMPLING_DEFAULTS, **self.model_dump(exclude_none=True)}


class _InProcess(BackendConfig):
    default_boundary = Boundary.PROCESS

    max_concurrency: int = Field(default=1, ge=1)  # generations at once
    max_queue: int = Field(default=16, ge=0)  # requests waiting beyond those; more: Overloaded
    threads: int | None = Field(default=None, ge=1)
    memory_limit_gb: float | None = Field(default=None, gt=0)  # cap on RAM a load may assume
    max_tokens: int | None = Field(default=None, ge=1)  # answer length when a request is silent


class LlamaCppConfig(_InProcess):
    """``kind: llama_cpp``: a GGUF model, in a supervised ``llama-server`` worker or in this
    process (``worker: false``)."""

    legacy_groups = {k: "sampling" for k in Sampling.model_fields}

    kind: Literal["llama_cpp"] = "llama_cpp"
    keep_alive: float = Field(default=300.0, ge=0)  # seconds idle before unload; 0 = never
    n_ctx: int = Field(default=4096, ge=64)
    # None: a llama-server worker when one is installed; true: required; false: in process
    worker: bool | None = None
    sampling: Sampling = Field(default_factory=Sampling)
    # How prompt-tool replies are constrained (a JSON-schema grammar); None: not at all.
    constrain_tools: Literal["json_object", "json_schema"] | None = "json_object"
    n_batch: int | None = Field(default=None, ge=1)
    n_gpu_layers: int | None = None  # in-process only
    # llama.cpp's flash attention, in both engines alike (its sums differ in the last bits,
    # enough to change a greedy answer; llama-server's default is "auto", the module's off)
    flash_attn: bool = True
    chat_format: str | None = None  # in-process only
    seed: int | None = None  # in-process only
    load_timeout: float = Field(default=120.0, gt=0)  # seconds a worker may take to load
    poll: int = Field(default=0, ge=0, le=100)  # the worker's busy-wait level
    cache_ram_mb: int = Field(default=256, ge=0)  # the worker's prompt cache
    server_args: list[str] = Field(default_factory=list)  # more llama-server arguments
    env: dict[str, str] = Field(default_factory=dict)  # more worker environment

    def prompt_window(self) -> int | None:
        return self.n_ctx


class TransformersConfig(_InProcess):
    """``kind: transformers``: a safetensors model directory, in this process."""

    kind: Literal["transformers"] = "transformers"
    device: str | None = None  # None: cuda when torch sees one, else cpu
    dtype: str = "auto"


# ------------------------------------------------------------------------------------ HTTP


class HttpConfig(BackendConfig):
    """What every HTTP kind has: where, which provider, which key, which connections."""

    url: str | None = None
    provider: str | None = None  # a named preset (vllm, openai, ...): url, key, boundary...
    api_key_env: str | None = None  # name of the environment variable holding the key
    api_key: SecretStr | None = None  # prefer api_key_env; never logged
    headers: dict[str, str] = Field(default_factory=dict)  # more request headers
    max_connections: int = Field(default=100, ge=1)  # pooled connections
    # seconds an idle pooled connection may be reused; 0: a new connection per request
    keepalive_timeout: float = Field(default=15.0, ge=0)

    def provider_name(self) -> str | None:
        return self.provider

    def implied_boundary(self) -> Boundary | None:
        from tierlm.config.providers import PROVIDERS

        p = PROVIDERS.get(self.provider_name() or "")
        return p.boundary if p is not None else self.default_boundary


class OpenAIConfig(HttpConfig):
    """``kind: openai``: any OpenAI-compatible server (see :mod:`tierlm.backends.openai_compat`
    for the quirks)."""

    kind: Literal["openai"] = "openai"
    quirks: list[str] = Field(default_factory=list)
    extra_body: dict[str, Any] = Field(default_factory=dict)  # merged into every body
    # constrain prompt-tool replies (json_object: llama.cpp servers; json_schema: vLLM)
    constrain_tools: Literal["json_object", "json_schema"] | None = None
    metrics: bool = True  # read a self-hosted server's Prometheus /metrics in health
    embeddings: bool = False  # it also serves /v1/embeddings (see tierlm.embeddings)


class AnthropicConfig(HttpConfig):
    """``kind: anthropic``: the Messages API."""

    kind: Literal["anthropic"] = "anthropic"
    max_tokens: int = Field(default=4096, ge=1)  # Anthropic requires one; when a request is silent
    version: str | None = None  # the anthropic-version header; None: the adapter's
    beta: str | None = None  # the anthropic-beta header
    extra_body: dict[str, Any] = Field(default_factory=dict)

    def provider_name(self) -> str | None:
        return self.provider or "anthropic"


class OllamaConfig(HttpConfig):
    """``kind: ollama``: Ollama's native API."""

    kind: Literal["ollama"] = "ollama"
    keep_alive: str | int | float | None = None  # "10m", seconds, -1 for ever; sent with each
    num_ctx: int | None = Field(default=None, ge=64)  # the context Ollama loads the model with
    ollama_options: dict[str, Any] = Field(default_factory=dict)  # merged into `options`


# -------------------------------------------------------------------------------- function


class FunctionConfig(BackendConfig):
    """``kind: function``: answers come from a Python callable (:mod:`tierlm.backends.function`),
    named ``"module:attribute"`` in YAML or given itself from Python."""

    default_boundary = Boundary.PROCESS

    kind: Literal["function"] = "function"
    model: str = Field(default="function", min_length=1)
    function: str | Callable[..., Any]

    @field_validator("function")
    @classmethod
    def _import_path(cls, v: str | Callable[..., Any]) -> str | Callable[..., Any]:
        if isinstance(v, str) and (v.count(":") != 1 or not all(v.split(":"))):
            raise ValueError(f"must be 'module:callable' (e.g. 'myapp.fakes:answer'), not {v!r}")
        return v
