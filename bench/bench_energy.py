"""Energy on the request path: decision latency with and without an ``energy`` section, and
the cost of reading the cached snapshot.

    .venv/bin/python bench/bench_energy.py [--n 2000]

The same prompts are planned by two routers on the full-stack preset, interleaved request by
request (so both see the same load on a shared machine): one without an energy section, one
with a file source refreshed every second on its background thread and every rule
configured (the state makes the carbon rule fire, so the energy step does its whole work).
The source reads are counted: they follow the refresh interval, never the requests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_routing import ENV, percentile, prompts

from tierlm.types import ChatRequest

ENERGY = {"battery": 0.6, "charging": False, "carbon_g_per_kwh": 520, "solar_surplus_w": 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    os.environ.update(ENV)
    from tierlm import Router
    from tierlm.signals import energy as energy_mod

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "energy.json"
        src.write_text(json.dumps(ENERGY))
        reads = 0
        read_source = energy_mod.read_source

        def counted(source: str, timeout: float) -> dict[str, object]:
            nonlocal reads
            reads += 1
            return read_source(source, timeout)

        energy_mod.read_source = counted  # type: ignore[assignment]
        base = {"ledger": {"url": "off"}}
        energy = {
            "source": f"file:{src}",
            "refresh_seconds": 1.0,
            "battery_below": 0.2,
            "carbon_above": 400,
            "solar_surplus_above_w": 500,
        }
        plain = Router.from_config(preset="full-stack", overrides=base)
        aware = Router.from_config(preset="full-stack", overrides={**base, "energy": energy})
        reqs = [ChatRequest.from_prompt(t) for t in prompts(args.n)]
        for r in reqs[:200]:  # warm: artefacts load once
            plain.plan(r)
            aware.plan(r)
        cpu: dict[str, list[float]] = {"plain": [], "aware": []}
        t_start = time.perf_counter()
        for r in reqs:
            for name, router in (("plain", plain), ("aware", aware)):
                c0 = time.thread_time()
                router.plan(r)
                cpu[name].append((time.thread_time() - c0) * 1000)
        elapsed = time.perf_counter() - t_start
        assert aware.energy is not None
        snap_n = 100_000
        t0 = time.perf_counter()
        for _ in range(snap_n):
            aware.energy.snapshot()
        snap_us = (time.perf_counter() - t0) / snap_n * 1e6
        assert any("grid carbon" in x for x in aware.plan(reqs[0]).reasons)
        plain.close()
        aware.close()

    print(f"{args.n} decisions per router, interleaved; full-stack preset; "
          f"{os.cpu_count()} cores (shared machine)\n")  # fmt: skip
    print("| router | p50 CPU ms | p99 CPU ms | mean CPU ms |")
    print("|---|---:|---:|---:|")
    for name, xs in cpu.items():
        label = "no energy section" if name == "plain" else "energy: file source, all rules"
        print(f"| {label} | {statistics.median(xs):.3f} | {percentile(xs, 99):.3f} | "
              f"{statistics.mean(xs):.3f} |")  # fmt: skip
    print(f"\nsnapshot() on the request path: {snap_us:.2f} µs")
    print(f"source reads: {reads} in {elapsed:.1f} s of {2 * args.n} decisions "
          "(the background thread's, one a second)")  # fmt: skip


if __name__ == "__main__":
    main()
