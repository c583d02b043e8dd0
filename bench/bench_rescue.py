"""Benchmark of the mid-stream rescue's splice (tierlm.execute.rescue); prints a markdown table.

Usage: ``python bench/bench_rescue.py [--sent WORDS] [--repeat N]``. For a partial answer of
``--sent`` words and a fallback that continues it, restarts it, or continues a prefill, one
word a stream piece: the splice's CPU time per piece, and how many pieces it holds back
before the first one reaches the caller (the buffering delay, in pieces). Each case also
checks that the caller's text is the answer exactly once.
"""

from __future__ import annotations

import argparse
import statistics
import time

from tierlm.execute.rescue import Splice


def run(sent_words: int, total: int, mode: str) -> tuple[float, int]:
    words = [f"word{i}" for i in range(total)]
    sent = " ".join(words[:sent_words])
    if mode == "restart":
        pieces = [("" if i == 0 else " ") + w for i, w in enumerate(words)]
    else:
        pieces = [" " + w for w in words[sent_words:]]
    splice = Splice(sent, prefill=mode == "prefill")
    out: list[str] = []
    held = None
    t0 = time.perf_counter()
    for i, piece in enumerate(pieces):
        got = splice.feed(piece)
        if got and held is None:
            held = i
        out.append(got)
    out.append(splice.finish())
    took = time.perf_counter() - t0
    assert (sent + "".join(out)).split() == words, mode
    return took / len(pieces), held if held is not None else len(pieces)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sent", type=int, default=400, help="words already sent")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    total = args.sent + args.sent // 2
    print("| fallback | µs per piece (median) | pieces held back before the first one |")
    print("|---|---:|---:|")
    for mode in ("continue", "prefill", "restart"):
        runs = [run(args.sent, total, mode) for _ in range(args.repeat)]
        per_piece = statistics.median(r[0] for r in runs) * 1e6
        print(f"| {mode} | {per_piece:.1f} | {runs[0][1]} |")


if __name__ == "__main__":
    main()
