"""Routing decisions: latency per decision (all signals included), ``route --jsonl``
throughput, and the privacy leak rate on the labelled sensitivity set.

    .venv/bin/python bench/bench_routing.py [--n 5000]

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


def prompts(n: int) -> list[str]:
    """A mix of labelled prompts and real benchmark/chat prompts, cycled to ``n``."""
    import csv

    out = [json.loads(line)["prompt"] for line in LABELLED.read_text().splitlines() if line]
    with (ROUTING / "alpacaeval" / "instructions.csv").open(newline="") as f:
        out += [row["instruction"] for row in csv.DictReader(f)]
    return [out[i % len(out)] for i in range(n)]


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(int(len(xs) * p / 100), len(xs) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    os.environ.update(ENV)
    from tierlm import Router
    from tierlm.types import Boundary, ChatRequest

    router = Router.from_config(
        preset="full-stack",
        overrides={"ledger": {"url": "off"}, "routing": {"sensitive_terms": ORG_TERMS}},
    )
    texts = prompts(args.n)
    reqs = [ChatRequest.from_prompt(t) for t in texts]
    for r in reqs[:200]:  # warm: artefacts load once
        router.plan(r)
    lat = []
    for r in reqs:
        t0 = time.perf_counter()
        router.plan(r)
        lat.append((time.perf_counter() - t0) * 1000)

    # leak rate and false positives on the labelled set
    rows = [json.loads(line) for line in LABELLED.read_text().splitlines() if line]
    leaks = fps = sens = plain = 0
    for row in rows:
        plan = router.plan(ChatRequest.from_prompt(row["prompt"]))
        external = any(c.boundary is Boundary.EXTERNAL for c in plan.candidates)
        if row["sensitive"]:
            sens += 1
            leaks += external
        else:
            plain += 1
            fps += not external
    router.close()

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

    print(f"{args.n} decisions, full-stack preset, this machine ({os.cpu_count()} cores)\n")
    print("| metric | value |")
    print("|---|---:|")
    print(f"| decision latency p50 (ms) | {statistics.median(lat):.3f} |")
    print(f"| decision latency p99 (ms) | {percentile(lat, 99):.3f} |")
    print(f"| decision latency max (ms) | {max(lat):.3f} |")
    print(f"| in-process decisions/s | {len(lat) / (sum(lat) / 1000):,.0f} |")
    print(
        f"| `route --jsonl` decisions/s (whole command, start-up included) | {args.n / wall:,.0f} |"
    )
    print(
        f"| leak rate (sensitive prompts with an external candidate) | "
        f"{leaks}/{sens} = {leaks / max(sens, 1):.3f} |"
    )
    print(
        f"| false-positive rate (non-sensitive prompts kept local) | "
        f"{fps}/{plain} = {fps / max(plain, 1):.3f} |"
    )


if __name__ == "__main__":
    main()
