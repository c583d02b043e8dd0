"""Typed configuration of layer 0: the ``rules`` list and the ``cache`` section.

A rule is a matcher and an action::

    rules:
      - name: pump
        match:
          regex: '(?i)\\bturn (?P<state>on|off) pump (?P<id>\\d+)\\b'
          types: {id: int}
        action:
          kind: tool_call            # or: template, callable, webhook
          name: set_pump
          arguments: {id: "{id}", state: "{state}"}

A matcher is a regex with named groups (the slots), or example utterances with ``{slot}``
placeholders, matched by embedding similarity at or above ``threshold`` after each slot's
``pattern`` has been found in the utterance and masked. A string that is exactly ``"{slot}"``
becomes the slot's typed value; other strings are formatted with the slots.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tierlm.types import Boundary

SlotType = Literal["str", "int", "float"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Slot(_Strict):
    pattern: str = Field(min_length=1)  # found in the utterance (first match, word-bounded)
    type: SlotType = "str"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        _compile(v)
        return v


class Match(_Strict):
    """A regex with named groups, or examples with ``{slot}`` placeholders (not both)."""

    regex: str | None = None
    types: dict[str, SlotType] = Field(default_factory=dict)  # regex group -> type
    examples: list[str] = Field(default_factory=list)
    slots: dict[str, Slot] = Field(default_factory=dict)
    threshold: float = Field(default=0.85, gt=0, le=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Match:
        if (self.regex is None) == (not self.examples):
            raise ValueError("a rule matches by 'regex' or by 'examples', exactly one of them")
        if self.regex is not None:
            groups = set(_compile(self.regex).groupindex)
            unknown = set(self.types) - groups
            if unknown:
                raise ValueError(f"types name groups the regex lacks: {', '.join(sorted(unknown))}")
        for ex in self.examples:
            missing = set(re.findall(r"\{(\w+)\}", ex)) - set(self.slots)
            if missing:
                raise ValueError(f"example {ex!r} uses undefined slots: {', '.join(missing)}")
        return self


class TemplateAction(_Strict):
    kind: Literal["template"]
    text: str


class ToolCallAction(_Strict):
    kind: Literal["tool_call"]
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    require_tool: bool = True  # only when the client offers a tool of this name


class CallableAction(_Strict):
    kind: Literal["callable"]
    target: str = Field(pattern=r"^[\w.]+:[\w.]+$")  # "package.module:function"


class WebhookAction(_Strict):
    kind: Literal["webhook"]
    url: str
    boundary: Boundary = Boundary.SITE  # how far the slots travel; external must be said
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout: float = Field(default=1.0, gt=0)
    timeout: float = Field(default=5.0, gt=0)

    @field_validator("boundary", mode="before")
    @classmethod
    def _parse_boundary(cls, v: Any) -> Any:
        return Boundary.parse(v)

    @model_validator(mode="after")
    def _host_within_boundary(self) -> WebhookAction:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url must be http(s)://host/...: {self.url!r}")
        try:
            ip = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return self  # a host name: its declared boundary is trusted
        if ip.is_global and self.boundary is not Boundary.EXTERNAL:
            raise ValueError(
                f"webhook {self.url} is a public address: declare boundary: external to allow it"
            )
        return self


Action = Annotated[
    TemplateAction | ToolCallAction | CallableAction | WebhookAction,
    Field(discriminator="kind"),
]


class RuleConfig(_Strict):
    name: str = Field(pattern=r"^[\w.-]+$")
    match: Match
    action: Action


class SemanticConfig(_Strict):
    """Near-duplicate hits: the last user turn by embedding similarity, everything else exact,
    and the near-miss guard (numbers, units, negation, entities, dates, language, format,
    length) must agree."""

    enabled: bool = False
    embedder: Literal["wordllama", "hashed"] = "wordllama"
    threshold: float = Field(default=0.85, gt=0, le=1)
    max_entries: int = Field(default=100_000, ge=1)  # per process


class CacheConfig(_Strict):
    """The answer cache (see :mod:`tierlm.layer0.cache`)."""

    enabled: bool = True
    max_temperature: float = Field(default=0.0, ge=0)  # cache only at or below it
    unset_temperature: bool = False  # cache requests that leave temperature to the backend
    ttl_seconds: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    store: Literal["memory", "sqlite", "redis"] = "memory"
    path: str | None = None  # the SQLite file; default: cache.sqlite3 in the data directory
    redis_url: str | None = None  # store: redis; e.g. redis://cache.site.lan:6379/0
    tenants: dict[str, str] = Field(default_factory=dict)  # API key name -> shared tenant
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)

    @model_validator(mode="after")
    def _redis_url(self) -> CacheConfig:
        if (self.store == "redis") != (self.redis_url is not None):
            raise ValueError("cache.redis_url is needed with store: redis, and only then")
        return self


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"bad regex {pattern!r}: {e}") from None
