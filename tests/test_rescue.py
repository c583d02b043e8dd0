"""The mid-stream rescue's splice: what of a continuation reaches the caller, piece by piece.

Each case feeds a reply in small pieces (as a stream would) after a partial answer and checks
the text the caller ends up with, or that the reply is refused. The wire-level cases (a real
upstream that restarts, prefills or continues) are in test_executor_faults.py.
"""

from __future__ import annotations

import pytest

from tierlm.errors import ProtocolError
from tierlm.execute.rescue import CONTINUE_INSTRUCTION, Splice, continuation_request
from tierlm.types import ChatRequest, Message

ANSWER = (
    "The capital of France is Paris, a city of about two million people on the Seine. "
    "It is known for its museums, its cafes and the Eiffel Tower."
)


def _splice(sent: str, reply: str, *, prefill: bool = False, piece: int = 3) -> str:
    """What the caller receives in all: ``sent``, then what the splice lets through."""
    s = Splice(sent, prefill=prefill, backend="fallback")
    out = [s.feed(reply[i : i + piece]) for i in range(0, len(reply), piece)]
    return sent + "".join(out) + s.finish()


@pytest.mark.parametrize("cut", [3, 20, 31, 60, len(ANSWER) - 5])
@pytest.mark.parametrize("prefill", [False, True])
def test_a_restart_has_its_repeated_part_dropped(cut: int, prefill: bool) -> None:
    # cut after "The", inside "France", right after "Paris,", after "million ", near the end
    assert _splice(ANSWER[:cut], ANSWER, prefill=prefill) == ANSWER


@pytest.mark.parametrize("cut", [3, 20, 31, 60])
def test_a_continuation_is_forwarded_as_is(cut: int) -> None:
    assert _splice(ANSWER[:cut], ANSWER[cut:]) == ANSWER


def test_a_nearly_identical_restart_is_spliced_where_the_partial_answer_ends() -> None:
    sent = ANSWER[:80]  # "... on the Seine." + space
    nearly = ANSWER.replace("The capital", "the capital").replace("a city of", "a town of")
    assert _splice(sent, nearly) == ANSWER[:80] + nearly[80:]


def test_a_continuation_that_repeats_the_last_words_has_them_dropped() -> None:
    sent = ANSWER[:59]  # "... about two million"
    assert _splice(sent, " about two million" + ANSWER[59:]) == ANSWER


def test_a_space_already_sent_is_not_doubled() -> None:
    sent = ANSWER[:32]  # ends with "Paris, "
    assert _splice(sent, " a city" + ANSWER[38:], prefill=True) == ANSWER


@pytest.mark.parametrize(
    "reply",
    [
        "Sure! Here is the rest of the answer: people on the Seine.",
        "I'm sorry, I cannot continue that.",
        "Certainly. The city has many museums.",
    ],
)
@pytest.mark.parametrize("prefill", [False, True])
def test_a_reply_to_the_instruction_is_refused(reply: str, prefill: bool) -> None:
    with pytest.raises(ProtocolError, match="did not continue the answer"):
        _splice(ANSWER[:60], reply, prefill=prefill)


def test_a_restart_that_departs_before_the_end_is_refused() -> None:
    sent = ANSWER[:100]
    other = ANSWER[:40] + "and it has the Louvre, many parks and bridges, and a busy port."
    with pytest.raises(ProtocolError, match="departed"):
        _splice(sent, other)


def test_a_short_reply_is_decided_when_the_backend_finishes() -> None:
    assert _splice(ANSWER[:-5], ANSWER[-5:], piece=100) == ANSWER
    assert _splice(ANSWER[:-5], "", piece=100) == ANSWER[:-5]


def test_nothing_is_forwarded_before_the_decision() -> None:
    s = Splice(ANSWER[:60], prefill=False)
    assert s.feed("The capital of France") == ""  # could still be a restart


@pytest.mark.parametrize("prefill", [False, True])
def test_the_continuation_request(prefill: bool) -> None:
    req = ChatRequest(
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content="count"),
        ],
        max_tokens=100,
    )
    cont = continuation_request(req, "one two three " * 10, prefill=prefill)  # ~35 tokens
    roles = ["system", "user", "assistant"] + ([] if prefill else ["user"])
    assert [m.role for m in cont.messages] == roles
    assert cont.messages[2].content == "one two three " * 10
    if prefill:  # the same turn goes on: what is left of the budget
        assert cont.max_tokens == 65
    else:  # a restart must regenerate the partial answer: the whole budget
        assert cont.messages[3].content == CONTINUE_INSTRUCTION
        assert cont.max_tokens == 100
    assert cont.request_id == req.request_id
    assert req.messages[-1].content == "count"  # the original is untouched


async def test_the_in_process_model_continues_a_prefill() -> None:
    """llama.cpp in process, greedy: the first half of an answer as a trailing assistant turn
    is continued into the same answer, not answered again."""
    from conftest import MODELS, SMOLLM2
    from tierlm.backends.llama_cpp import LlamaCppBackend
    from tierlm.config.backends import LlamaCppConfig

    cfg = LlamaCppConfig(name="tiny", model=str(SMOLLM2), n_ctx=1024)
    b = LlamaCppBackend(cfg, MODELS)
    req = ChatRequest.from_prompt("Describe Paris in two sentences.", max_tokens=32, temperature=0)
    try:
        whole = (await b.complete(req)).text
        half = whole[: whole.rindex(" ", 0, len(whole) // 2)]  # cut between two words
        cont = continuation_request(req, half, prefill=True)
        events = [ev async for ev in b.stream(cont)]
    finally:
        await b.aclose()
    rest = "".join(ev.text for ev in events)
    assert len(half) > 20 and rest.strip()
    assert not rest.lstrip().startswith(whole[:20])  # not a restart
    # the same greedy answer goes on at the seam (later, batching may shift a logit)
    assert (half + rest)[: len(half) + 8] == whole[: len(half) + 8]
    assert events[-1].usage is not None and events[-1].usage.completion_tokens > 0


PREFILL = [  # (backend config, supports prefill)
    ({"kind": "llama_cpp", "model": "m.gguf"}, True),
    ({"kind": "openai", "provider": "llama-server", "model": "m"}, True),
    ({"kind": "openai", "provider": "vllm", "url": "http://127.0.0.1:9/v1", "model": "m"}, True),
    ({"kind": "anthropic", "model": "claude"}, True),
    ({"kind": "ollama", "model": "llama3"}, True),
    ({"kind": "openai", "provider": "openai", "model": "gpt"}, False),
    ({"kind": "openai", "provider": "sglang", "url": "http://127.0.0.1:9/v1", "model": "m"}, False),
]


@pytest.mark.parametrize(("cfg", "prefill"), PREFILL, ids=[str(c) for c, _ in PREFILL])
def test_which_backends_continue_a_prefill(cfg: dict[str, str], prefill: bool) -> None:
    from tierlm.backends import create_backend
    from tierlm.backends.registry import parse_backend

    b = create_backend(parse_backend({"name": "b", "boundary": "site", **cfg}), None)
    assert b.supports_prefill is prefill


def test_prefill_bodies() -> None:
    """vLLM is asked to continue the final message; Anthropic gets it without trailing space
    (its API refuses a final assistant turn that ends with whitespace)."""
    from tierlm.backends.anthropic import AnthropicBackend
    from tierlm.backends.openai_compat import OpenAIBackend
    from tierlm.config.backends import AnthropicConfig, OpenAIConfig

    req = continuation_request(ChatRequest.from_prompt("hi"), "Hello, I am ", prefill=True)
    vllm = OpenAIBackend(OpenAIConfig(name="v", provider="vllm", url="http://h:1/v1", model="m"))
    body = vllm.body(req, stream=True)
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert "continue_final_message" not in vllm.body(ChatRequest.from_prompt("hi"), stream=True)
    claude = AnthropicBackend(AnthropicConfig(name="a", model="claude", boundary="external"))
    assert claude.body(req, stream=True)["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello, I am"}],
    }
