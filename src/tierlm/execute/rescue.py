"""Mid-stream rescue: finish a committed stream on another backend, or fail it; never corrupt it.

When a stream breaks after pieces of it reached the caller, the executor asks the next
candidate for the rest (:func:`continuation_request`) and passes what comes back through a
:class:`Splice` before anything of it is forwarded. The caller then receives exactly one
coherent answer (the part already sent, then the continuation) or, when no candidate gives a
recognisable continuation, the in-band error that ends the stream.

Two ways to ask, chosen by the backend's typed capability ``supports_prefill``:

- **Prefill.** The partial answer is sent as a trailing assistant turn and the backend goes on
  generating that same turn (llama.cpp in process and ``llama-server``, vLLM's
  ``continue_final_message``, Anthropic's Messages API, Ollama's ``/api/chat``). What comes
  back starts where the answer stopped; it is still checked as below for a restart or a reply,
  and a doubled space is trimmed. A server that answers a prefill with an unrelated new turn
  (llama-cpp-python's ``llama_cpp.server``) is not caught: it must not claim prefill.
- **Instruction.** Other backends (OpenAI and most OpenAI-compatible APIs) get the partial
  answer as an assistant turn and a user turn asking to continue exactly there. Models often
  ignore that and answer from the start, so the reply is buffered and checked first:

  * *restart*: its first words are the first words of the partial answer (compared without
    case, punctuation or spacing; at most one word in five may differ). It is buffered until it
    has gone past the end of the partial answer; the repeated part is dropped and only what
    follows is forwarded. A restart that departs from the partial answer before reaching its
    end cannot be spliced and is refused.
  * *continuation*: it neither repeats the beginning nor opens with a reply to the instruction
    (an acknowledgement, a preamble, an apology or a refusal). It is forwarded; a repeat of
    the partial answer's last words at its start is dropped.
  * anything else is refused with :class:`ProtocolError`: the executor moves on to the next
    candidate, and ends the stream with the in-band error when none is left.

  The instruction keeps the caller's ``max_tokens`` (a restart must regenerate the part
  already sent); a prefill is allowed what remains of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

from tierlm.errors import ProtocolError
from tierlm.execute.streams import estimate_tokens
from tierlm.types import ChatRequest, Message

CONTINUE_INSTRUCTION = "Continue exactly where the answer stopped; do not repeat anything."

DECIDE_WORDS = 8  # words of a reply compared with the partial answer's first words
MIN_SIMILARITY = 0.8  # share of words a restart must reproduce ("exactly or nearly")
MIN_OVERLAP = 3  # a repeat of the partial answer's last words shorter than this is kept
_OPENER = re.compile(
    r"^(sure|certainly|of course|okay|ok|alright|here is|heres|here are|continuing|"
    r"to continue|continued|as requested|sorry|im sorry|i am sorry|i apologi[sz]e|"
    r"apologies|i cant|i cannot|im unable|i am unable|unfortunately)\b"
)
_WORD = re.compile(r"\S+")
_NOT_WORD = re.compile(r"[^\w]+")


def continuation_request(request: ChatRequest, partial: str, *, prefill: bool) -> ChatRequest:
    """The request that asks a backend for the rest of ``partial`` (see the module doc)."""
    messages = [*request.messages, Message(role="assistant", content=partial)]
    update: dict[str, object] = {"messages": messages}
    if not prefill:
        messages.append(Message(role="user", content=CONTINUE_INSTRUCTION))
    elif request.max_tokens is not None:
        update["max_tokens"] = max(1, request.max_tokens - estimate_tokens(partial))
    return request.model_copy(update=update)


@dataclass(slots=True)
class _Word:
    norm: str  # lower case, letters and digits only
    start: int  # offsets in the raw text
    end: int


def _words(text: str) -> list[_Word]:
    out = []
    for m in _WORD.finditer(text):
        norm = _NOT_WORD.sub("", m.group().lower())
        if norm:
            out.append(_Word(norm, m.start(), m.end()))
    return out


def _norm_text(words: list[_Word]) -> str:
    return " ".join(w.norm for w in words)


class Splice:
    """Checks one continuation and hands on only what extends the partial answer.

    ``feed(text)`` returns the text to forward now ("" while undecided); ``finish()`` returns
    what is left once the backend has finished. Both raise :class:`ProtocolError` when the
    reply is not a continuation of ``sent``.
    """

    def __init__(self, sent: str, *, prefill: bool, backend: str | None = None) -> None:
        self.sent = sent
        self.prefill = prefill
        self.backend = backend
        self._sent_words = _words(sent)
        self._buf = ""
        self._decided = False
        self._check_at = 0  # buffer length at which to look again (amortised: O(n) in all)

    def feed(self, text: str) -> str:
        if self._decided:
            return text
        self._buf += text
        if len(self._buf) < self._check_at:
            return ""
        out = self._decide(done=False)
        self._check_at = len(self._buf) + len(self._buf) // 8
        return "" if out is None else out

    def finish(self) -> str:
        if self._decided:
            return ""
        out = self._decide(done=True)
        assert out is not None  # with done=True every branch decides
        return out

    # ------------------------------------------------------------------ deciding

    def _decide(self, done: bool) -> str | None:
        buf = self._buf
        if self.sent[-1:].isspace():
            buf = buf.lstrip()  # the partial answer already ends with the space
        a, b = self._sent_words, _words(buf)
        window = min(len(a), DECIDE_WORDS)
        if len(b) <= window + _slack(window) and not done:
            return None  # the words compared may still be growing
        if a and _aligned_end(a[:window], b[: window + _slack(window)]) is not None:
            return self._after_restart(buf, a, b, done)
        if _OPENER.match(_norm_text(b[:4])):  # a new turn, not the rest of this one
            raise self._refuse("it replied instead of continuing")
        if self.prefill:
            return self._forward(buf)
        return self._forward(buf[_overlap(a, b) :] if b else buf)

    def _after_restart(self, buf: str, a: list[_Word], b: list[_Word], done: bool) -> str | None:
        """A reply that began the answer again: forward only what follows the partial answer."""
        slack = _slack(len(a))
        if len(b) <= len(a) + slack and not done:
            return None  # not yet past the end of the partial answer
        end = _aligned_end(a, b[: len(a) + slack])
        if end is None:
            raise self._refuse("it began the answer again and then departed from it")
        last_sent, last_reply = a[-1], b[end - 1]
        cut = last_reply.end
        if last_reply.norm != last_sent.norm and last_reply.norm.startswith(last_sent.norm):
            # the partial answer stopped inside this word: forward the rest of the word
            cut = last_reply.start + (last_sent.end - last_sent.start)
        rest = buf[cut:]
        tail = self.sent[last_sent.end :]  # punctuation and space after the last word sent
        if tail and rest.startswith(tail):
            rest = rest[len(tail) :]
        elif tail.isspace():
            rest = rest.lstrip()
        return self._forward(rest)

    def _forward(self, text: str) -> str:
        self._decided = True
        return text

    def _refuse(self, why: str) -> ProtocolError:
        self._decided = True
        return ProtocolError(
            f"the fallback did not continue the answer: {why}", backend=self.backend
        )


def _slack(n: int) -> int:
    """Words a near-restart may add before it covers ``n`` words of the partial answer."""
    return max(2, n // 5)


def _aligned_end(a: list[_Word], b: list[_Word]) -> int | None:
    """How many words of ``b`` cover all of ``a`` (exactly or nearly), or ``None``.

    Both must start alike, at least four in five words of ``a`` be matched, and at most a few
    at its end be missing. The last word of ``a`` also matches a longer word that starts with
    it: the stream may have been cut inside that word."""
    if not a:
        return 0
    head, last = [w.norm for w in a[:-1]], a[-1].norm
    bn = [w.norm for w in b]
    matched, end = 0, 0
    if head:
        sm = SequenceMatcher(None, head, bn, autojunk=False)
        blocks = [blk for blk in sm.get_matching_blocks() if blk.size]
        if not blocks or blocks[0].a != 0 or blocks[0].b != 0:
            return None
        tip = blocks[-1]
        missing = len(head) - (tip.a + tip.size)
        if missing > max(1, len(head) // 5):
            return None
        matched = sum(blk.size for blk in blocks)
        end = tip.b + tip.size + missing
    if end >= len(bn):
        return None
    matched += bn[end].startswith(last)
    return end + 1 if matched >= MIN_SIMILARITY * len(a) else None


def _overlap(a: list[_Word], b: list[_Word]) -> int:
    """Where the new text of a continuation starts: after a repeat of ``a``'s last words."""
    for k in range(min(len(a), len(b), DECIDE_WORDS), MIN_OVERLAP - 1, -1):
        if [w.norm for w in a[-k:]] == [w.norm for w in b[:k]]:
            return b[k - 1].end
    return 0
