"""Privacy: the one owner of every privacy rule. The policy, the executor, the gateway and the
ledger call this module; none of them states a privacy rule of its own.

**The effective level** of a request (:func:`effective_level`) is the strictest of the config
default (``routing.default_privacy``), the API key's floor (``privacy``) and the request's
hint; nothing lowers it. Sensitive content (any finding) raises ``public`` to ``private``;
an ``enhanced`` request stays ``enhanced`` and leaves the site only redacted.

**The boundary ceiling** (:func:`ceiling`): ``private`` stays at or below ``site``;
``enhanced`` and ``public`` may reach ``external``; an API key's ``max_privacy_boundary``
lowers it further. :func:`key_reaches` is the whole API-key access rule (allowed tiers and
boundary), for the policy and for the gateway's pin check and model lists.

**What is forwarded is what is scanned.** :class:`PrivacyGuard` reads every text a backend
adapter may forward: each message's text, content parts of every kind (``text``,
``refusal``, file names and ids, image URLs that are not ``data:`` URLs), ``name``,
``tool_call_id``, tool-call ids, names and arguments, the ``tools`` (names, descriptions,
parameter schemas), ``tool_choice``, ``stop`` sequences and every pass-on field in
``ChatRequest.extra`` (``user``, ``metadata``, ``prediction``, ``response_format`` ...),
object keys included. Only
structure is skipped (roles, part types) and payloads that are not text (images, audio,
files): under ``public`` those are forwarded unread (an image that shows a secret is the
client's to keep local with ``private``); under ``enhanced`` they cannot be redacted, so a
request that carries one does not leave the site at all.

**``enhanced`` redaction** (:meth:`PrivacyGuard.redact`): the same texts, each with every
finding replaced by ``[KIND]``, in a deep copy of the request; a copy that a second scan still
finds something in is not sent at all. The executor sends that copy to
every external attempt of an ``enhanced`` plan: first tries, retries, fallbacks and
mid-stream continuations alike (:func:`needs_redaction`). A request with an image, audio or
file part has no redacted copy (what cannot be read cannot be redacted): its external
candidates are skipped and a local one answers.

Adapters build their upstream bodies from an allowlist of fields (so nothing unread can be
forwarded); the gateway refuses top-level fields it does not know with a 400 naming them.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tierlm.types import Boundary, ChatRequest, Finding, Message, Privacy, ToolCall

if TYPE_CHECKING:
    from tierlm.config.settings import ApiKeyConfig
    from tierlm.signals.sensitivity import SensitivityDetector

__all__ = [
    "FIELD_INDEX",
    "PrivacyGuard",
    "ceiling",
    "effective_level",
    "key_allows_tier",
    "key_reaches",
    "needs_redaction",
    "redact_spans",
]

# ``Finding.message_index`` of a finding outside the messages (tools, stop, extra fields).
FIELD_INDEX = -1
_LEVEL_CEILING = {
    Privacy.PRIVATE: Boundary.SITE,
    Privacy.ENHANCED: Boundary.EXTERNAL,
    Privacy.PUBLIC: Boundary.EXTERNAL,
}
# Keys of a content part that hold structure or an opaque payload, not text.
_PART_SKIP = frozenset({"type"})
_OPAQUE = frozenset({"file_data", "data"})
_UNREADABLE = frozenset({"image_url", "input_audio", "file"})  # content part types

Rewrite = Callable[[str], str]
Span = tuple[int, int, str]  # (start, end, kind) in one text


def effective_level(
    default: Privacy,
    key: ApiKeyConfig | None,
    hint: Privacy | None,
    findings: Sequence[Finding],
    reasons: list[str] | None = None,
) -> Privacy:
    """The request's privacy level; why it is what it is is appended to ``reasons``."""
    why = reasons if reasons is not None else []
    level = default
    if key is not None and key.privacy is not None:
        level = level.raise_to(key.privacy)
    if hint is not None:
        level = level.raise_to(hint)
    if findings:
        kinds = ", ".join(sorted({f.kind for f in findings}))
        if level is Privacy.PUBLIC:
            why.append(f"sensitive content ({kinds}): privacy raised to private")
            level = Privacy.PRIVATE
        elif level is Privacy.ENHANCED:
            why.append(f"sensitive content ({kinds}): redacted before leaving the site")
    if level is Privacy.PRIVATE:
        why.append("privacy private: stays at or below the site boundary")
    return level


def ceiling(level: Privacy, key: ApiKeyConfig | None = None) -> Boundary:
    """The farthest boundary a request of ``level`` (sent with ``key``) may ever reach."""
    limit = _LEVEL_CEILING[level]
    if key is not None:
        limit = min(limit, Boundary.parse(key.max_privacy_boundary))
    return limit


def key_allows_tier(key: ApiKeyConfig | None, tier: str) -> bool:
    """Whether ``key`` may use ``tier`` at all (no key, or no tier list: every tier)."""
    return key is None or key.tiers is None or tier in key.tiers


def key_reaches(key: ApiKeyConfig | None, tier: str, where: Boundary) -> bool:
    """Whether ``key`` may use a backend at ``where`` in ``tier`` (no key: everything)."""
    if key is None:
        return True
    return key_allows_tier(key, tier) and where <= Boundary.parse(key.max_privacy_boundary)


def needs_redaction(level: Privacy, where: Boundary) -> bool:
    """Whether a request of ``level`` must be redacted before it is sent to ``where``."""
    return level is Privacy.ENHANCED and where >= Boundary.EXTERNAL


# -- the texts a request forwards -------------------------------------------------------------
def _walk(value: Any, fix: Rewrite) -> Any:
    """``value`` with ``fix`` applied to every string in it, object keys included."""
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, dict):
        return {fix(str(k)): _walk(v, fix) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, fix) for v in value]
    return value


def _part(part: dict[str, Any], fix: Rewrite) -> dict[str, Any]:
    """A content part with ``fix`` applied to its text; structure and payloads untouched."""
    out: dict[str, Any] = {}
    for k, v in part.items():
        if k in _PART_SKIP:
            out[k] = v
        elif k == "image_url" and isinstance(v, dict):
            url = v.get("url")
            keep = isinstance(url, str) and url.startswith("data:")
            out[k] = {ik: iv if (ik == "url" and keep) else _walk(iv, fix) for ik, iv in v.items()}
        elif k in ("input_audio", "file") and isinstance(v, dict):
            out[k] = {ik: iv if ik in _OPAQUE else _walk(iv, fix) for ik, iv in v.items()}
        else:
            out[fix(k)] = _walk(v, fix)
    return out


def has_unreadable_parts(request: ChatRequest) -> bool:
    """Whether any message carries an image, audio or file part (content tierlm cannot read)."""
    return any(
        isinstance(m.content, list) and any(p.get("type") in _UNREADABLE for p in m.content)
        for m in request.messages
    )


def _arguments(args: Any, fix: Rewrite) -> Any:
    if isinstance(args, str):
        return fix(args)
    return fix(json.dumps(args, ensure_ascii=False)) if args is not None else None


def _call(call: ToolCall, fix: Rewrite) -> ToolCall:
    fn = {
        k: _arguments(v, fix) if k == "arguments" else _walk(v, fix)
        for k, v in call.function.items()
    }
    return call.model_copy(update={"id": fix(call.id), "function": fn})


def _message(m: Message, fix: Rewrite) -> Message:
    update: dict[str, Any] = {}
    if isinstance(m.content, str):
        update["content"] = fix(m.content)
    elif m.content is not None:
        update["content"] = [_part(p, fix) for p in m.content]
    if m.name is not None:
        update["name"] = fix(m.name)
    if m.tool_call_id is not None:
        update["tool_call_id"] = fix(m.tool_call_id)
    if m.tool_calls:
        update["tool_calls"] = [_call(c, fix) for c in m.tool_calls]
    return m.model_copy(update=update)


def rewrite_request(request: ChatRequest, fix: Rewrite) -> ChatRequest:
    """A copy of ``request`` with ``fix`` applied to every text it may forward."""
    update: dict[str, Any] = {
        "messages": [_message(m, fix) for m in request.messages],
        "extra": _walk(request.extra, fix),
    }
    if request.tools is not None:
        update["tools"] = _walk(request.tools, fix)
    if request.tool_choice is not None:
        update["tool_choice"] = _walk(request.tool_choice, fix)
    if request.stop is not None:
        update["stop"] = _walk(request.stop, fix)
    return request.model_copy(update=update)


def _texts(request: ChatRequest) -> Iterator[str]:
    """Every text of ``request`` that may be forwarded (the texts :func:`rewrite_request`
    rewrites)."""
    seen: list[str] = []

    def keep(text: str) -> str:
        seen.append(text)
        return text

    rewrite_request(request, keep)
    return iter(seen)


def redact_spans(text: str, spans: Sequence[Span]) -> str:
    """``text`` with each ``(start, end, kind)`` span replaced by ``[KIND]`` (overlaps
    merged into the first)."""
    out: list[str] = []
    pos = 0
    for start, end, kind in sorted(spans):
        if end <= pos:
            continue
        out.append(text[pos : max(start, pos)])
        out.append(f"[{kind.upper()}]")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _viewed(request: ChatRequest) -> Iterator[str]:
    """The texts the detector's request scan reads: message text and tool-call arguments."""
    for m in request.messages:
        if isinstance(m.content, str):
            yield m.content
        for p in m.content if isinstance(m.content, list) else ():
            if p.get("type") in ("text", None) and isinstance(p.get("text"), str):
                yield p["text"]
        for c in m.tool_calls or ():
            args = c.function.get("arguments")
            if args is not None:
                yield args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


class PrivacyGuard:
    """Scans and redacts everything a request forwards, with one configured detector.

    Message text and tool-call arguments are scanned through the detector's request scan
    (which may join values split across messages); every other forwarded text is scanned on
    its own, its findings at ``message_index`` :data:`FIELD_INDEX`.
    """

    __slots__ = ("detector",)

    def __init__(self, detector: SensitivityDetector) -> None:
        self.detector = detector

    def scan_text(self, text: str) -> list[Finding]:
        return self.detector.scan_text(text)

    def redact_text(self, text: str) -> str:
        """``text`` with each finding replaced by ``[KIND]`` (stored prompts, feedback)."""
        return self.detector.redact(text)

    def scan(self, request: ChatRequest) -> list[Finding]:
        """Findings in everything ``request`` may forward."""
        findings = self.detector.scan(request)
        covered = Counter(_viewed(request))
        rest: list[str] = []
        for text in _texts(request):
            if covered[text] > 0:
                covered[text] -= 1
            elif text:
                rest.append(text)
        if rest:  # one scan over the other fields, one per line (spans index that text)
            found = self.scan_text("\n".join(rest))
            findings.extend(Finding(f.kind, f.start, f.end, FIELD_INDEX) for f in found)
        return findings

    def redact(self, request: ChatRequest) -> ChatRequest | None:
        """A copy of ``request`` in which every forwarded text is redacted; ``None`` when the
        copy would still hold findings (a value split over two fields), so it must not go.

        All texts are scanned as one (a line each), and each finding is mapped back to its
        text; then the copy is scanned again, as the policy would scan it."""
        if has_unreadable_parts(request):
            return None  # an image, audio or file cannot be read, so cannot be redacted
        texts = list(_texts(request))
        starts: list[int] = []
        pos = 0
        for text in texts:
            starts.append(pos)
            pos += len(text) + 1
        spans: list[list[Span]] = [[] for _ in texts]
        for f in self.scan_text("\n".join(texts)):
            i = bisect_right(starts, f.start) - 1
            if f.end > starts[i] + len(texts[i]):
                return None  # one value over two texts: no text alone can be redacted
            spans[i].append((f.start - starts[i], f.end - starts[i], f.kind))
        clean = iter([redact_spans(t, sp) if sp else t for t, sp in zip(texts, spans, strict=True)])
        copy = rewrite_request(request, lambda _text: next(clean))
        return None if self.scan(copy) else copy
