"""Embedding latency through the gateway, in process (``POST /v1/embeddings``).

The real app under uvicorn on 127.0.0.1 (a thread of this process, lifespan on, ledger on in
a temporary directory), the in-process embedder (WordLlama, or ``--embedder hashed``), one
connection, one request at a time: p50/p99 of the round trip for one short input and for a
batch of 32 short inputs (each text unique, so the embedder's own memo never answers).

    python bench/bench_embeddings.py [--n 200] [--embedder wordllama]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _timed(client: Any, url: str, batches: list[list[str]]) -> dict[str, float]:
    took: list[float] = []
    for texts in batches:
        t0 = time.perf_counter()
        r = client.post(url + "/v1/embeddings", json={"input": texts, "encoding_format": "float"})
        took.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200 and len(r.json()["data"]) == len(texts), r.text
    took.sort()
    return {
        "p50_ms": round(statistics.median(took), 2),
        "p99_ms": round(took[min(len(took) - 1, int(len(took) * 0.99))], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--embedder", default="wordllama", choices=["wordllama", "hashed"])
    args = ap.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    import httpx

    from server_util import serve_gateway, settings

    with tempfile.TemporaryDirectory() as tmp:
        s = settings(
            [{"name": "tiny", "kind": "llama_cpp", "model": "smollm2-135m-instruct"}],
            [{"name": "tiny", "backends": ["tiny"]}],
            embeddings={"embedder": args.embedder},
            ledger={"url": None},
            data_dir=tmp,
        )
        with serve_gateway(s) as url, httpx.Client(timeout=30) as c:
            _timed(c, url, [[f"warm up {i}"] for i in range(20)])
            one = _timed(c, url, [[f"status of pump {i} in hall {i % 7}"] for i in range(args.n)])
            batch = _timed(
                c,
                url,
                [[f"pump {i} reading {j} is normal" for j in range(32)] for i in range(args.n)],
            )
    print(json.dumps({"embedder": args.embedder, "n": args.n, "one": one, "batch32": batch}))


if __name__ == "__main__":
    main()
