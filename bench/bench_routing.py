"""Routing decisions: latency per decision (all signals included), ``route --jsonl``
throughput, and the privacy leak rate on the labelled sensitivity set, overall and by
category and language.

    .venv/bin/python bench/bench_routing.py [--n 5000] [--no-jsonl]

Leak: a sensitive prompt whose plan has any external candidate. False positive: a
non-sensitive prompt whose plan has none (kept local). Labelled rows with ``messages`` are
sent as consecutive user messages (values split across messages).

Uses the full-stack preset (tiny -> site -> cloud) with placeholder endpoints and keys: no
model is called, as with ``tierlm route``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tierlm.types import Boundary, ChatRequest, Message

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "tests" / "data" / "sensitivity_prompts.jsonl"
ROUTING = ROOT.parent / "shared" / "data" / "routing"
ORG_TERMS = ["Project Falcon", "Kestrel-7", "Northwind Pharma"]  # the labelled set's org terms
ENV = {
    "TIERLM_SITE_URL": "http://127.0.0.1:9/v1",
    "TIERLM_SITE_MODEL": "llama-70b",
    "OPENAI_API_KEY": "sk-placeholder",
    "ANTHROPIC_API_KEY": "sk-ant-placeholder",
}


def labelled() -> list[dict[str, Any]]:
    return [json.loads(line) for line in LABELLED.read_text().splitlines() if line]


def as_request(row: dict[str, Any]) -> ChatRequest:
    if "messages" in row:
        return ChatRequest(messages=[Message(role="user", content=m) for m in row["messages"]])
    return ChatRequest.from_prompt(row["prompt"])


def prompts(n: int) -> list[str]:
    """A mix of labelled prompts and real benchmark/chat prompts, cycled to ``n``."""
    import csv

    out = [row["prompt"] for row in labelled() if "prompt" in row]
    with (ROUTING / "alpacaeval" / "instructions.csv").open(newline="") as f:
        out += [row["instruction"] for row in csv.DictReader(f)]
    return [out[i % len(out)] for i in range(n)]


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(int(len(xs) * p / 100), len(xs) - 1)]


def _timed(router: Any, reqs: list[ChatRequest]) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU ms per decision: on a shared machine the CPU time is the cost
    of the decision itself, the wall time also the waits for a core."""
    wall, cpu = [], []
    for r in reqs:
        t0, c0 = time.perf_counter(), time.thread_time()
        router.plan(r)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
    return wall, cpu


def rates_table(results: list[tuple[dict[str, Any], bool]]) -> list[str]:
    """Markdown rows: leak and false-positive rate by category and by language."""
    lines = ["| group | leaks (sensitive with an external candidate) | false positives |",
             "|---|---:|---:|"]  # fmt: skip
    for field in ("category", "lang"):
        groups = sorted({row[field] for row, _ in results})
        for group in groups:
            rows = [(r, ext) for r, ext in results if r[field] == group]
            sens = [ext for r, ext in rows if r["sensitive"]]
            plain = [not ext for r, ext in rows if not r["sensitive"]]
            leak = f"{sum(sens)}/{len(sens)}" if sens else "-"
            fp = f"{sum(plain)}/{len(plain)}" if plain else "-"
            lines.append(f"| {field}: {group} | {leak} | {fp} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--no-jsonl", action="store_true", help="skip the route --jsonl run")
    args = ap.parse_args()
    os.environ.update(ENV)
    from tierlm import Router

    router = Router.from_config(
        preset="full-stack",
        overrides={"ledger": {"url": "off"}, "routing": {"sensitive_terms": ORG_TERMS}},
    )
    texts = prompts(args.n)
    reqs = [ChatRequest.from_prompt(t) for t in texts]
    for r in reqs[:200]:  # warm: artefacts load once
        router.plan(r)
    lat, cpu = _timed(router, reqs)
    # prompts of 1-2 KB (labelled and benchmark text joined), the budget's upper end
    joined = " ".join(texts)
    long_reqs = [
        ChatRequest.from_prompt(joined[i : i + 1024 + (i * 7) % 1024])
        for i in range(0, min(len(joined) - 2048, 400 * 997), 997)
    ]
    lat_2k, cpu_2k = _timed(router, long_reqs)

    # leak rate and false positives on the labelled set
    results = []
    for row in labelled():
        plan = router.plan(as_request(row))
        results.append((row, any(c.boundary is Boundary.EXTERNAL for c in plan.candidates)))
    router.close()
    sens = sum(1 for row, _ in results if row["sensitive"])
    leaks = sum(1 for row, ext in results if row["sensitive"] and ext)
    plain = len(results) - sens
    fps = sum(1 for row, ext in results if not row["sensitive"] and not ext)
    print(f"{args.n} decisions, full-stack preset, this machine ({os.cpu_count()} cores)\n")
    print("| metric | value |")
    print("|---|---:|")
    print(f"| decision latency p50 (ms; wall / CPU) | {statistics.median(lat):.3f} / "
          f"{statistics.median(cpu):.3f} |")  # fmt: skip
    print(f"| decision latency p99 (ms; wall / CPU) | {percentile(lat, 99):.3f} / "
          f"{percentile(cpu, 99):.3f} |")  # fmt: skip
    print(f"| decision latency max (ms; wall / CPU) | {max(lat):.3f} / {max(cpu):.3f} |")
    print(f"| decision latency p99, 1-2 KB prompts (ms, n={len(lat_2k)}; wall / CPU) | "
          f"{percentile(lat_2k, 99):.3f} / {percentile(cpu_2k, 99):.3f} |")  # fmt: skip
    print(f"| in-process decisions/s | {len(lat) / (sum(lat) / 1000):,.0f} |")
    print(
        f"| leak rate (sensitive prompts with an external candidate) | "
        f"{leaks}/{sens} = {leaks / max(sens, 1):.3f} |"
    )
    print(
        f"| false-positive rate (non-sensitive prompts kept local) | "
        f"{fps}/{plain} = {fps / max(plain, 1):.3f} |"
    )
    print()
    print("\n".join(rates_table(results)))
    if args.no_jsonl:
        return

    # route --jsonl throughput, as a user runs it (one process, models loaded once)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for t in texts:
            f.write(json.dumps({"prompt": t}) + "\n")
    exe = str(Path(sys.executable).with_name("tierlm"))
    t0 = time.perf_counter()
    out = subprocess.run(
        [exe, "route", "--preset", "full-stack", "--jsonl", f.name],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **ENV},
    )
    wall = time.perf_counter() - t0
    os.unlink(f.name)
    assert len(out.stdout.splitlines()) == len(texts)

    print(f"\n`route --jsonl` decisions/s (whole command, start-up included): {args.n / wall:,.0f}")


if __name__ == "__main__":
    main()
