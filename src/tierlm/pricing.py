"""What a backend costs: per-token prices, the cost of an answer, and budget estimates.

Where a price comes from, in order:

1. the backend's ``price:`` in the config (``input``/``output`` USD per 1M tokens, and
   ``per_hour`` for local hardware or energy);
2. for external backends, the bundled, dated table ``data/prices.json`` (looked up by
   provider and model; ``gpt-4o-mini-2024-07-18`` and ``claude-3-5-haiku-latest`` find their
   base model, ``openai/gpt-4o-mini`` on OpenRouter finds OpenAI's row);
3. an external model the table does not know is priced conservatively
   (:data:`UNKNOWN_EXTERNAL`) so that budgets stay safe; set ``price:`` to fix it;
4. anything that does not leave the site costs zero unless configured.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tierlm.config.settings import Price
from tierlm.types import Boundary

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig
    from tierlm.types import ChatRequest, Usage

PRICES_FILE = Path(__file__).parent / "data" / "prices.json"
UNKNOWN_EXTERNAL = Price(input=5.0, output=15.0)
DEFAULT_OUTPUT_CAP = 16384  # output tokens assumed when neither request nor backend says
# The most one image part is billed, in input tokens: the costliest image pricing known
# (gpt-4o-mini bills an image's tiles at about 37k token equivalents).
IMAGE_TOKENS = 40_000
MESSAGE_OVERHEAD = 8  # tokens a provider adds around each message (role, separators)
_IMAGE_PARTS = ("image_url", "input_image", "image")
PriceSource = Literal["config", "table", "unknown", "local"]


@lru_cache(maxsize=1)
def price_table() -> dict[str, Any]:
    """The bundled table (read once)."""
    with PRICES_FILE.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def lookup(provider: str | None, model: str) -> Price | None:
    """The table's price of ``model`` (at ``provider`` when given), or None."""
    providers: dict[str, Any] = price_table()["providers"]
    names = [provider] if provider in providers else []
    vendor, _, rest = model.partition("/")
    if rest and vendor in providers and vendor not in names:
        names.append(vendor)  # OpenRouter style: "openai/gpt-4o-mini"
    names += [p for p in providers if p not in names]
    for name in names:
        models: dict[str, Any] = providers[name]["models"]
        for candidate in (model, rest) if rest else (model,):
            row = models.get(candidate) or _by_prefix(models, candidate)
            if row is not None:
                return Price(input=float(row["input"]), output=float(row["output"]))
    return None


def _by_prefix(models: dict[str, Any], model: str) -> Any:
    """The longest table name that ``model`` extends with a version or date suffix."""
    best = None
    for name in models:
        suffix = model[len(name) : len(name) + 1]
        extends = model.startswith(name) and suffix in ("-", "@", ":", ".")
        if extends and (best is None or len(name) > len(best)):
            best = name
    return models[best] if best is not None else None


def price_source(config: BackendConfig) -> tuple[Price, PriceSource]:
    """The price of ``config`` and where it came from."""
    if config.price is not None:
        return config.price, "config"
    if config.where is not Boundary.EXTERNAL:
        return Price(), "local"
    found = lookup(config.provider_name(), config.model)
    if found is not None:
        return found, "table"
    return UNKNOWN_EXTERNAL, "unknown"


def price_for(config: BackendConfig) -> Price:
    """Config override > bundled table > zero for non-external (conservative if unknown)."""
    return price_source(config)[0]


def cost_usd(config: BackendConfig, usage: Usage, *, seconds: float = 0.0) -> float:
    """What an answer cost: tokens at the backend's price (never under its per-request
    minimum), plus ``per_hour`` for its time."""
    p = price_for(config)
    tokens = (usage.prompt_tokens * p.input + usage.completion_tokens * p.output) / 1e6
    return max(tokens, p.per_request_min) + p.per_hour * max(seconds, 0.0) / 3600.0


def estimate_usd(config: BackendConfig, request: ChatRequest) -> float:
    """An upper bound of what ``request`` may cost (for budget reservations): every input
    token the provider can bill (:func:`input_tokens_bound`) plus the most output it may
    generate (``max_tokens``, else the backend's ``max_output_tokens``, else its context
    window, else :data:`DEFAULT_OUTPUT_CAP`), never under the price's per-request minimum."""
    p = price_for(config)
    out = request.max_tokens
    if out is None:
        out = config.max_output_tokens or config.context_window or DEFAULT_OUTPUT_CAP
    tokens = (input_tokens_bound(request) * p.input + out * p.output) / 1e6
    return max(tokens, p.per_request_min)


def input_tokens_bound(request: ChatRequest) -> int:
    """The most input tokens a provider can bill for ``request``: one per UTF-8 byte of all
    it sends (every message and content part, names, tool calls, tool definitions and
    descriptions, ``tool_choice`` and the fields passed through, such as a response schema;
    a byte-level tokenizer never makes more tokens than bytes), each image part at
    :data:`IMAGE_TOKENS` instead of its bytes, plus :data:`MESSAGE_OVERHEAD` a message."""
    images = 0

    def part(p: dict[str, Any]) -> dict[str, Any]:
        nonlocal images
        if p.get("type") in _IMAGE_PARTS:
            images += 1
            return {"type": p.get("type")}
        return p

    messages = [
        {**m.model_dump(exclude_none=True), "content": [part(p) for p in m.content]}
        if isinstance(m.content, list)
        else m.model_dump(exclude_none=True)
        for m in request.messages
    ]
    sent = {
        "messages": messages,
        "tools": request.tools,
        "tool_choice": request.tool_choice,
        "stop": request.stop,
        "extra": request.extra,
    }
    size = len(json.dumps(sent, ensure_ascii=False, default=str).encode("utf-8", "replace"))
    return size + images * IMAGE_TOKENS + MESSAGE_OVERHEAD * (len(request.messages) + 1)


def format_usd(usd: float) -> str:
    """Money for people: ``$1,234.50``, ``$0.42``, ``$0.00005`` (never ``$5e-05``)."""
    if abs(usd) >= 0.01:
        return f"-${-usd:,.2f}" if usd < 0 else f"${usd:,.2f}"
    small = f"{abs(usd):.9f}".rstrip("0").rstrip(".")  # nano-USD is the ledger's unit
    if small in ("0", ""):
        return "$0"
    return f"-${small}" if usd < 0 else f"${small}"
