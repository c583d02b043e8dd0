"""Helpers for the ledger tests: opening ledgers on both databases, generating traffic."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tierlm.config.settings import BudgetConfig, BudgetLimit
from tierlm.ledger import AttemptRecord, Ledger, RequestRecord, open_store

DAY = 86400.0
TIERS = (  # name, backend, boundary, USD per request token
    ("tiny", "smollm", "process", 0.0),
    ("site", "vllm-lan", "site", 0.0),
    ("cloud", "gpt", "external", 2e-6),
)


def db_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    return str(request.getfixturevalue("postgres_db"))


def open_url(url: str, tmp_path: Path, budgets: BudgetConfig | None = None, **kw: Any) -> Ledger:
    spill = tmp_path / "spill.jsonl"
    return Ledger(open_store(url, tmp_path), budgets=budgets, spill_path=spill, **kw)


def one_budget(usd: float, **kw: float) -> BudgetConfig:
    return BudgetConfig(limits=[BudgetLimit(usd=usd)], **kw)


def traffic(n: int, *, start: float, days: float = 30.0, seed: int = 7) -> list[RequestRecord]:
    """``n`` requests spread over ``days``: easy ones local, hard ones to the cloud."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = rng.random()
        tier, backend, boundary, price = TIERS[0 if c < 0.5 else 1 if c < 0.8 else 2]
        if boundary == "external" and rng.random() < 0.25:
            c = rng.random() * 0.4  # pinned to the cloud by its client, though easy
        pt, ct = rng.randint(20, 2000), rng.randint(10, 500)
        lat = rng.lognormvariate(5 if boundary != "external" else 6.5, 0.5)
        fb = rng.random() < 0.05
        att = [
            AttemptRecord(
                backend,
                tier,
                boundary,
                latency_ms=lat,
                tokens=pt + ct,
                sent_digest="ab" * 32 if boundary == "external" else None,
            )
        ]
        if fb:
            att.insert(
                0,
                AttemptRecord(
                    "down",
                    tier,
                    "site",
                    outcome="backend_unavailable",
                    error_kind="BackendUnavailable",
                    latency_ms=3.0,
                ),
            )
        out.append(
            RequestRecord(
                id=f"gen-{seed}-{i}",
                ts=start + rng.random() * days * DAY,
                api_key=rng.choice(("alice", "bob", "ci")),
                tier=tier,
                backend=backend,
                model=backend,
                boundary=boundary,
                complexity=round(c, 4),
                privacy="public",
                attempts=att,
                prompt_tokens=pt,
                completion_tokens=ct,
                cost_usd=(pt + ct) * price,
                latency_ms=lat,
                ttft_ms=lat / 3,
                fallback=fb,
                escalated=rng.random() < 0.02,
                stream=rng.random() < 0.3,
            )
        )
    return out


RESERVE_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tierlm.config.settings import BudgetConfig, BudgetLimit
    from tierlm.errors import BudgetExceeded
    from tierlm.ledger import Ledger, open_store
    url, n, usd, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    cfg = BudgetConfig(limits=[BudgetLimit(usd=limit)], local_only_below=0, per_request_share=1)
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()  # start together
    ok = 0
    with Ledger(open_store(url, Path(".")), budgets=cfg) as ledger:
        for i in range(n):
            try:
                r = ledger.reserve(f"p{i}", key="k", tier="cloud", backend="gpt", usd=usd)
            except BudgetExceeded:
                continue
            ok += 1
            ledger.settle(r, usd)
    print(ok)
""")


def run_reserve_processes(
    url: str, procs: int, each: int, usd: float, limit: float, cwd: Path
) -> int:
    """Start ``procs`` processes reserving ``each`` times at once; return total admitted."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RESERVE_CHILD, url, str(each), str(usd), str(limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        for _ in range(procs)
    ]
    for c in children:
        assert c.stdout is not None
        assert c.stdout.readline().strip() == "ready"
    for c in children:
        assert c.stdin is not None
        c.stdin.write("go\n")
        c.stdin.flush()
    total = 0
    for c in children:
        out, _ = c.communicate(timeout=120)
        assert c.returncode == 0, out
        total += int(out.strip().splitlines()[-1])
    return total
