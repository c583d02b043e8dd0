"""Benchmark of the sensitivity and task signals; prints a markdown table.

Usage: ``python bench/bench_signals.py [--repeat N]``. Measures, on the labelled set
(tests/data/sensitivity_prompts.jsonl): per-prompt latency of the sensitivity scan and the
task signal together (p50/p99 over all prompts x repeats, wall and thread CPU time), recall
on sensitive prompts, false-positive rate on the others, per-kind finding counts; the scan
alone on 200-character, 2 KB and 20 KB prompts (slices of the labelled prompts joined: dense
with sensitive values, a worst case); and the latency on a 1 MB prompt.
With llama-cpp-python installed it also reports estimate_tokens' error against SmolLM2;
with detect-secrets installed (``pip install detect-secrets==1.5.0``, not a tierlm
dependency), what its keyword, high-entropy and basic-auth plugins find of the labelled
secrets and what they cost on 2 KB (the comparison behind the hand-written secret rules).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections import Counter
from pathlib import Path

from tierlm.signals import SensitivityDetector, detect_task, estimate_tokens
from tierlm.types import ChatRequest, Message

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "sensitivity_prompts.jsonl"
MODEL = ROOT.parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TERMS = ("Project Falcon", "Kestrel-7", "Northwind Pharma")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _time_ms(
    det: SensitivityDetector, request: ChatRequest, task: bool = True
) -> tuple[float, float]:
    """(wall ms, CPU ms of this thread): on a shared machine the CPU time shows the cost
    of the scan itself, the wall time also the waits for a core."""
    start, cpu = time.perf_counter(), time.thread_time()
    det.scan(request)
    if task:
        detect_task(request)
    return (time.perf_counter() - start) * 1000, (time.thread_time() - cpu) * 1000


def _request(row: dict[str, object]) -> ChatRequest:
    if isinstance(row.get("messages"), list):
        return ChatRequest(messages=[Message(role="user", content=str(m)) for m in row["messages"]])  # type: ignore[union-attr]
    return ChatRequest.from_prompt(str(row["prompt"]))


def _row(label: str, samples: list[tuple[float, float]], digits: int) -> str:
    wall, cpu = [w for w, _ in samples], [c for _, c in samples]
    cells = [f"{_pct(v, q):.{digits}f}" for v in (wall, cpu) for q in (0.5, 0.99)]
    return f"| {label} | {cells[0]} / {cells[1]} ms | {cells[2]} / {cells[3]} ms |"


def _token_error(prompts: list[str]) -> str:
    try:
        import llama_cpp
    except ImportError:
        return "n/a (llama-cpp-python not installed)"
    llm = llama_cpp.Llama(model_path=str(MODEL), vocab_only=True, verbose=False)
    errs = []
    for p in prompts:
        real = len(llm.tokenize(p.encode(), add_bos=False))
        errs.append(abs(estimate_tokens(p) - real) / real)
    return f"mean {100 * sum(errs) / len(errs):.1f} %, max {100 * max(errs):.1f} %"


def _detect_secrets(rows: list[dict[str, object]], text2k: str) -> str:
    try:
        from detect_secrets.plugins.basic_auth import BasicAuthDetector
        from detect_secrets.plugins.high_entropy_strings import (
            Base64HighEntropyString,
            HexHighEntropyString,
        )
        from detect_secrets.plugins.keyword import KeywordDetector
    except ImportError:
        return "n/a (detect-secrets not installed)"
    plugins = [
        KeywordDetector(),
        Base64HighEntropyString(limit=4.5),
        HexHighEntropyString(limit=3.0),
        BasicAuthDetector(),
    ]

    def found(text: str) -> bool:
        return any(
            list(p.analyze_line(filename="x.txt", line=line, line_number=1))
            for line in text.splitlines()
            for p in plugins
        )

    secrets = [r for r in rows if r["category"] == "secret" and r["sensitive"]]
    hits = sum(found(str(r.get("prompt") or "\n".join(r["messages"]))) for r in secrets)  # type: ignore[arg-type]
    start = time.thread_time()
    for _ in range(20):
        found(text2k)
    cost = (time.thread_time() - start) * 1000 / 20
    return f"{hits}/{len(secrets)} labelled secrets found, {cost:.2f} ms CPU per 2 KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    det = SensitivityDetector(TERMS)
    requests = [_request(r) for r in rows]
    hits, fps, kinds = 0, 0, Counter[str]()
    for row, request in zip(rows, requests, strict=True):
        findings = det.scan(request)
        kinds.update(f.kind.split(":")[0] for f in findings)
        if row["sensitive"]:
            hits += bool(findings) and set(row["kinds"]) <= {f.kind.split(":")[0] for f in findings}
        else:
            fps += bool(findings)
    sens = sum(1 for r in rows if r["sensitive"])
    gc.disable()  # time the scan, not the collector
    lat = [_time_ms(det, req) for _ in range(args.repeat) for req in requests]
    text = " ".join(r["prompt"] for r in rows if "prompt" in r)
    text = text * (1 + 40_000 // len(text))
    sized = {}
    for size, count in ((200, 200), (2048, 100), (20_000, 20)):
        step = (len(text) - size) // count
        slices = [ChatRequest.from_prompt(text[i * step : i * step + size]) for i in range(count)]
        sized[size] = [_time_ms(det, r, task=False) for r in slices for _ in range(2)]
    big1m = ChatRequest.from_prompt((text * (1 + 1_000_000 // len(text)))[:1_000_000])
    lat1m = [_time_ms(det, big1m) for _ in range(3)]
    gc.enable()
    print("| latency | wall p50 / p99 | CPU p50 / p99 |")
    print("|---|---|---|")
    print(_row(f"scan + task, labelled set ({len(rows)} prompts x {args.repeat})", lat, 3))
    for size, samples in sized.items():
        print(_row(f"scan, {size:,}-character prompts (x {len(samples)})", samples, 3))
    print(_row("scan + task, 1 MB prompt (x 3)", lat1m, 0))
    print("\n| metric | value |\n|---|---|")
    print(f"| labelled prompts (sensitive / not) | {len(rows)} ({sens} / {len(rows) - sens}) |")
    print(
        f"| recall on sensitive prompts (all expected kinds) | {hits / sens:.3f} ({hits}/{sens}) |"
    )
    print(
        f"| false-positive rate on non-sensitive prompts | {fps / (len(rows) - sens):.3f} "
        f"({fps}/{len(rows) - sens}) |"
    )
    token_error = _token_error([r["prompt"] for r in rows if "prompt" in r])
    print(f"| detect-secrets 1.5 plugins (comparison) | {_detect_secrets(rows, text[:2048])} |")
    print(f"| estimate_tokens error vs SmolLM2 tokenizer | {token_error} |")
    print("\n| kind | findings |\n|---|---|")
    for kind, count in sorted(kinds.items()):
        print(f"| {kind} | {count} |")


if __name__ == "__main__":
    main()
