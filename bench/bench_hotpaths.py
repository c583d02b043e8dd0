"""Time and memory of ``tierlm hotpaths`` over a month of recorded requests.

    .venv/bin/python bench/bench_hotpaths.py --records 100000 [--embedder wordllama]

Records ``--records`` requests with stored prompts into a fresh SQLite ledger through the
ledger's own API (a plant's commands, repeated questions, and a long tail of distinct free
questions), then clusters them: wall time of :func:`hot_paths` (and of the report's exact-shape
section), and its peak Python allocation (tracemalloc, in a second run: tracing slows it).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from tierlm.layer0.embed import load_embedder
from tierlm.layer0.hotpaths import hot_paths, top_shapes
from tierlm.ledger import AttemptRecord, Ledger, RequestRecord, open_store

DAY = 86400.0
WORDS = [
    "river",
    "cloud",
    "basalt",
    "sonnet",
    "enzyme",
    "ledger",
    "violin",
    "glacier",
    "orbit",
    "tariff",
    "pump",
    "valve",
    "boiler",
    "invoice",
    "shift",
    "rota",
    "kiln",
    "conveyor",
    "sensor",
    "alarm",
]


def prompt(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    n = rng.randint(1, 400)
    if r < 0.3:
        return f"Turn {rng.choice(('on', 'off'))} pump {n}", f"Pump {n} switched."
    if r < 0.4:
        return f"status of valve V{n}", f"Valve V{n} is open."
    if r < 0.5:
        return "What are the opening hours?", "We open at 8 and close at 17."
    a, b, c = rng.sample(WORDS, 3)
    return f"Why does the {a} near {b} {n} affect the {c}?", "Because " + a + "."


def record(path: Path, n: int) -> float:
    rng = random.Random(1)
    start = time.time() - 30 * DAY
    t0 = time.perf_counter()
    with Ledger(
        open_store(f"sqlite:///{path}", path.parent),
        store_prompts=True,
        spill_path=path.parent / "spill.jsonl",
    ) as ledger:
        for i in range(n):
            p, a = prompt(rng)
            ledger.record(
                RequestRecord(
                    id=f"b-{i}",
                    ts=start + rng.random() * 30 * DAY,
                    tier="cloud",
                    backend="gpt",
                    attempts=[AttemptRecord("gpt", "cloud", "external")],
                    cost_usd=0.001,
                    prompt=p,
                    completion=a,
                )
            )
        ledger.flush(600)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--embedder", default="hashed", choices=("hashed", "wordllama"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ledger.sqlite3"
        wrote = record(path, args.records)
        store = open_store(f"sqlite:///{path}", Path(d))
        embedder = load_embedder(args.embedder)
        end = time.time() + 1
        with store.transaction("read") as tx:
            t0 = time.perf_counter()
            hp = hot_paths(tx, embedder, start=0.0, end=end)
            took = time.perf_counter() - t0
            t0 = time.perf_counter()
            shapes = top_shapes(tx, 0.0, end)
            report_s = time.perf_counter() - t0
            tracemalloc.start()
            hot_paths(tx, embedder, start=0.0, end=end)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        store.close()
    print("| records | embedder | hotpaths s | peak MiB | report section s | clusters |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {hp.scanned:,} | {args.embedder} | {took:.2f} | {peak / 2**20:.0f} | "
        f"{report_s:.2f} | {len(hp.clusters)} (top: {hp.clusters[0].shape!r}, "
        f"{hp.clusters[0].requests:,}) |"
    )
    print(f"(recording took {wrote:.1f} s; report top shape {shapes[0].shape!r})")


if __name__ == "__main__":
    main()
