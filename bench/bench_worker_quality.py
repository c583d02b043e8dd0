"""Do answers through the ``llama-server`` worker match the in-process engine?

The same tierlm configuration (the ``smollm2`` preset's sampling unless ``--sampling`` says
otherwise) runs in both engines: :class:`LlamaCppBackend` (llama-cpp-python, ``worker: false``)
and :class:`LlamaWorkerBackend` (``llama-server``), on the shared SmolLM2-135M model, over
20 short prompts with a known answer (capitals, arithmetic, definitions, a yes/no).

- prompt tokens: the token sequence each engine evaluates (llama-cpp-python's GGUF-template
  chat handler, tokenised as it does; llama-server's ``/apply-template`` then ``/tokenize``
  with the special tokens its chat endpoint adds), compared per prompt;
- greedy (temperature 0): answers compared text for text;
- sampled (the configured temperature, ``--seeds`` fixed seeds per prompt): the share of
  answers that contain the expected string, per engine, with a two-proportion z statistic.

    .venv/bin/python bench/bench_worker_quality.py [--seeds 5] [--tokens 48]
        [--sampling '{"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import urllib.request
from pathlib import Path
from typing import Any

from tierlm.backends.llama_cpp import LlamaCppBackend
from tierlm.backends.llama_worker import LlamaWorkerBackend
from tierlm.config.backends import LlamaCppConfig
from tierlm.config.presets import SMOLLM2_SAMPLING
from tierlm.llama_runtime import find_server
from tierlm.types import ChatRequest

MODEL = Path(__file__).resolve().parents[1] / "../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"
# (prompt, a string a right answer contains; compared case-insensitively)
PROMPTS: list[tuple[str, str]] = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is 2 + 2?", "4"),
    ("What is 3 + 5?", "8"),
    ("What is 10 - 3?", "7"),
    ("What is 6 times 7?", "42"),
    ("How many days are in a week?", "seven"),
    ("What color is the sky on a clear day?", "blue"),
    ("What do bees make?", "honey"),
    ("What is the opposite of hot?", "cold"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("What is H2O commonly called?", "water"),
    ("Which animal is known as man's best friend?", "dog"),
    ("Is the Earth round? Answer yes or no.", "yes"),
]
_NUMBERS = {"4": "four", "8": "eight", "7": "seven", "42": "forty-two", "seven": "7"}


def right(answer: str, expected: str) -> bool:
    a = answer.lower()
    alt = _NUMBERS.get(expected)
    return expected.lower() in a or (alt is not None and alt in a)


def _cfg(worker: bool, threads: int, sampling: dict[str, Any]) -> LlamaCppConfig:
    return LlamaCppConfig(
        name="tiny",
        model=str(MODEL),
        n_ctx=512,
        threads=threads,
        worker=worker,
        keep_alive=0,
        sampling=sampling,
    )


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def server_prompt_tokens(worker: LlamaWorkerBackend, prompt: str) -> list[int]:
    """What llama-server's chat endpoint evaluates: its template, tokenised with specials."""
    base = worker.supervisor.base_url
    msgs = [{"role": "user", "content": prompt}]
    text = _post(base + "/apply-template", {"messages": msgs})["prompt"]
    out = _post(base + "/tokenize", {"content": text, "add_special": True, "parse_special": True})
    return [int(t) for t in out["tokens"]]


def inprocess_prompt_tokens(llm: Any, prompt: str) -> list[int]:
    """What llama-cpp-python's chat handler evaluates (the GGUF template's formatter)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
        bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
        stop_token_ids=[llm.token_eos()],
    )
    res = fmt(messages=[{"role": "user", "content": prompt}])
    tokens: list[int] = llm.tokenize(
        res.prompt.encode(), add_bos=not res.added_special, special=True
    )
    return tokens


async def answers(backend: LlamaCppBackend, tokens: int, **kw: Any) -> list[str]:
    out = []
    for prompt, _ in PROMPTS:
        req = ChatRequest.from_prompt(prompt, max_tokens=tokens, **kw)
        out.append((await backend.complete(req)).text)
    return out


def z_stat(a: int, b: int, n: int) -> float:
    """Two-proportion z statistic for a/n against b/n."""
    p = (a + b) / (2 * n)
    if p in (0.0, 1.0):
        return 0.0
    return (a - b) / n / math.sqrt(p * (1 - p) * 2 / n)


async def sampled(
    local: LlamaCppBackend, worker: LlamaWorkerBackend, seeds: int, tokens: int
) -> None:
    """Right answers per engine over ``seeds`` fixed seeds per prompt, and same-seed twins."""
    right_n = {"in-process": 0, "worker": 0}
    same = 0
    for seed in range(seeds):
        a = await answers(local, tokens, seed=seed)
        b = await answers(worker, tokens, seed=seed)
        same += sum(x == y for x, y in zip(a, b, strict=True))
        for name, got in (("in-process", a), ("worker", b)):
            right_n[name] += sum(right(t, e) for t, (_, e) in zip(got, PROMPTS, strict=True))
    n = seeds * len(PROMPTS)
    for name, k in right_n.items():
        print(f"sampled right, {name}: {k}/{n} ({k / n:.0%})")
    print(f"z (in-process - worker): {z_stat(right_n['in-process'], right_n['worker'], n):.2f}")
    print(f"sampled answers identical for the same seed: {same}/{n}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sampling", type=json.loads, default=None)
    ap.add_argument("--show", action="store_true", help="print every greedy answer pair")
    args = ap.parse_args()
    binary = find_server()
    assert binary is not None, "llama-server not found: ./scripts/setup"
    sampling = args.sampling if args.sampling is not None else SMOLLM2_SAMPLING
    print(f"sampling: {sampling}; max_tokens {args.tokens}; {len(PROMPTS)} prompts")
    local = LlamaCppBackend(_cfg(False, args.threads, sampling))
    worker = LlamaWorkerBackend(_cfg(True, args.threads, sampling), MODEL.parent, binary)
    try:
        g_local = await answers(local, args.tokens, temperature=0)
        g_worker = await answers(worker, args.tokens, temperature=0)
        llm = local._idle[0]
        same_tokens = sum(
            inprocess_prompt_tokens(llm, p) == server_prompt_tokens(worker, p) for p, _ in PROMPTS
        )
        same_text = sum(a == b for a, b in zip(g_local, g_worker, strict=True))
        print(f"prompt tokens identical: {same_tokens}/{len(PROMPTS)}")
        print(f"greedy answers identical: {same_text}/{len(PROMPTS)}")
        for name, got in (("in-process", g_local), ("worker", g_worker)):
            ok = sum(right(a, e) for a, (_, e) in zip(got, PROMPTS, strict=True))
            print(f"greedy right, {name}: {ok}/{len(PROMPTS)}")
        if args.show:
            for (p, _), a, b in zip(PROMPTS, g_local, g_worker, strict=True):
                print(f"- {p}\n  in-process: {a!r}\n  worker:     {b!r}")
        if args.seeds:
            await sampled(local, worker, args.seeds, args.tokens)
    finally:
        await local.aclose()
        await worker.aclose()


if __name__ == "__main__":
    asyncio.run(main())
