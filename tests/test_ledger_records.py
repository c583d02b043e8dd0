"""Request records: group commit, durability under SIGKILL, backpressure, spill, privacy, and
answers held until their record is committed (``ledger.commit_before_reply``)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fakes import serve
from fakes.openai_server import make_app
from ledger_support import db_url, open_url, traffic
from server_util import upstream_backend
from tierlm import Router
from tierlm.config import load_settings
from tierlm.errors import ConfigError
from tierlm.ledger import AttemptRecord, Ledger, RequestRecord, open_ledger
from tierlm.ledger.migrations import MIGRATIONS
from tierlm.ledger.sqlite import SqliteStore
from tierlm.types import ChatRequest

DBS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("db", DBS)
def test_records_and_attempts_round_trip(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    recs = traffic(300, start=time.time() - 86400)
    with open_url(db_url(db, tmp_path, request), tmp_path) as ledger:
        for r in recs:
            ledger.record(r)
        assert ledger.flush(30)
        stats = ledger.stats()
        row = ledger.get_request(recs[7].id)
        with ledger.store.transaction("read") as tx:
            (n_att,) = tx.q("SELECT COUNT(*) FROM attempts")[0]
    assert stats["committed"] == 300 and stats["pending"] == 0 and stats["spilled"] == 0
    assert stats["batches"] < 300  # group commit: records share transactions
    assert n_att == sum(len(r.attempts) for r in recs)
    assert row is not None
    want = recs[7]
    assert (row["tier"], row["backend"], row["api_key"], row["prompt_tokens"]) == (
        want.tier,
        want.backend,
        want.api_key,
        want.prompt_tokens,
    )
    assert row["cost_usd"] == pytest.approx(want.cost_usd)
    assert row["attempts"] == len(want.attempts) and bool(row["fallback"]) == want.fallback


def test_prompts_are_not_stored_unless_asked_and_then_redacted(tmp_path: Path) -> None:
    secret = "sk-live-0123456789abcdef"
    prompt = f"my key is {secret}, fix it"
    span = (prompt.index(secret), prompt.index(secret) + len(secret), "api_key")

    def rec(rid: str, spans: list[tuple[int, int, str]]) -> RequestRecord:
        return RequestRecord(
            id=rid, prompt=prompt, completion="ok", findings=["api_key"], prompt_spans=spans
        )

    with open_url(f"sqlite:///{tmp_path / 'a.db'}", tmp_path) as ledger:
        ledger.record(rec("a", [span]))
        ledger.flush()
        assert ledger.get_request("a")["prompt"] is None  # type: ignore[index]
    with open_url(f"sqlite:///{tmp_path / 'b.db'}", tmp_path, store_prompts=True) as ledger:
        ledger.record(rec("b", [span]))
        ledger.record(rec("c", []))  # sensitive but no spans: withheld
        ledger.record(RequestRecord(id="d", prompt="hello", completion="hi"))
        ledger.flush()
        got = {k: ledger.get_request(k) for k in "bcd"}
    assert got["b"]["prompt"] == "my key is [API_KEY], fix it"  # type: ignore[index]
    assert got["c"]["prompt"] == "[withheld: sensitive content]"  # type: ignore[index]
    assert (got["d"]["prompt"], got["d"]["completion"]) == ("hello", "hi")  # type: ignore[index]
    for name in ("a.db", "b.db"):
        data = b"".join(p.read_bytes() for p in tmp_path.glob(name + "*"))
        assert secret.encode() not in data


KILL_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from ledger_support import traffic
    from tierlm.ledger import Ledger, open_store
    ledger = Ledger(open_store(sys.argv[1], Path(".")))
    batch = 0
    while True:
        recs = traffic(250, start=time.time() - 86400, seed=batch)
        for r in recs:
            ledger.record(r)
        ledger.flush()
        print("committed", batch, flush=True)
        batch += 1
""")


@pytest.mark.parametrize("db", DBS)
def test_sigkill_under_load_loses_no_committed_record(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = db_url(db, tmp_path, request)
    tests_dir = str(Path(__file__).parent)
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, url, tests_dir],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert child.stdout is not None
    committed: list[int] = []
    try:
        for line in child.stdout:
            committed.append(int(line.split()[1]))
            if len(committed) >= 12:
                break
        time.sleep(0.01)  # let it get into the middle of the next batch
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(committed) >= 12
    with open_url(url, tmp_path) as ledger:
        assert ledger.integrity() == "ok"
        assert ledger.audit_verify().ok
        with ledger.store.transaction("read") as tx:
            ids = {r[0] for r in tx.q("SELECT id FROM requests")}
    want = {r.id for b in committed for r in traffic(250, start=0, seed=b)}
    assert want <= ids
    assert len(ids) >= 250 * len(committed)


@pytest.mark.postgres
def test_postgres_ledger_survives_dropped_connections(postgres_db: str, tmp_path: Path) -> None:
    recs = traffic(100, start=time.time() - 3600)
    with open_url(postgres_db, tmp_path) as ledger:
        for r in recs[:50]:
            ledger.record(r)
        ledger.flush()
        with ledger.store.transaction("read") as tx:  # e.g. the server restarted
            tx.q(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        for r in recs[50:]:
            ledger.record(r)
        ledger.flush()
        stats = ledger.stats()
        assert ledger.get_request(recs[-1].id) is not None
        assert ledger.budget_state(key="k", tier="cloud").limited is False
    assert stats["committed"] == 100 and stats["spilled"] == 0 and stats["retries"] >= 1


class _GatedStore(SqliteStore):
    """A real SQLite store whose writer waits at a gate, or fails while ``broken``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.broken = False

    @contextmanager
    def transaction(self, role):  # type: ignore[no-untyped-def]
        if role == "writer":
            self.gate.wait(30)
            if self.broken:
                raise sqlite3.OperationalError("disk I/O error (simulated)")
        with super().transaction(role) as tx:
            yield tx


def test_full_queue_blocks_and_never_drops(tmp_path: Path) -> None:
    store = _GatedStore(tmp_path / "q.db")
    store.gate.set()
    ledger = Ledger(store, max_queue=5, max_batch=5, spill_path=tmp_path / "spill.jsonl")
    store.gate.clear()
    done = threading.Event()

    def produce() -> None:
        for r in traffic(200, start=time.time() - 3600):
            ledger.record(r)
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    deadline = time.monotonic() + 30  # a hang guard: wait for the producer to block
    while ledger.stats()["blocked"] < 1:
        assert time.monotonic() < deadline, "the producer never had to wait"
        time.sleep(0.01)
    assert not done.is_set()  # the producer waits for room in the queue
    store.gate.set()
    t.join(30)
    ledger.close()
    stats = ledger.stats()
    assert stats["committed"] == 200 and stats["spilled"] == 0
    with (
        open_url(f"sqlite:///{tmp_path / 'q.db'}", tmp_path) as again,
        again.store.transaction("read") as tx,
    ):
        assert tx.q("SELECT COUNT(*) FROM requests")[0][0] == 200


def test_unwritable_database_spills_then_replays(tmp_path: Path) -> None:
    store = _GatedStore(tmp_path / "s.db")
    store.gate.set()
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(store, spill_path=spill)
    store.broken = True
    recs = traffic(30, start=time.time() - 3600)
    for r in recs:
        ledger.record(r)
    ledger.flush(30)
    assert ledger.stats()["spilled"] == 30 and ledger.stats()["retries"] == 3
    assert len(spill.read_text().splitlines()) == 30
    store.broken = False
    assert ledger.replay_spill(spill) == 30
    got = ledger.get_request(recs[3].id)
    ledger.close()
    assert got is not None and got["cost_usd"] == pytest.approx(recs[3].cost_usd)
    assert not spill.exists() and spill.with_suffix(".jsonl.replayed").exists()


@contextmanager
def _settings_ledger(tmp_path: Path, **ledger_cfg: object) -> Iterator[Ledger]:
    s = load_settings(overrides={"data_dir": str(tmp_path / "data"), "ledger": ledger_cfg})
    ledger = open_ledger(s)
    try:
        yield ledger
    finally:
        ledger.close()


def test_open_ledger_from_settings(tmp_path: Path) -> None:
    with _settings_ledger(tmp_path) as ledger:
        ledger.record(RequestRecord(id="x", attempts=[AttemptRecord("b", "t", "process")]))
        assert ledger.migrations_applied == [m.name for m in MIGRATIONS]
        assert ledger.migrations_applied[:2] == ["001_requests", "002_audit"]
    assert (tmp_path / "data" / "ledger.sqlite3").exists()
    with _settings_ledger(tmp_path) as again:  # reopened: committed at close, nothing to migrate
        assert again.migrations_applied == [] and again.get_request("x") is not None
    with _settings_ledger(tmp_path, url="off") as off:
        off.record(RequestRecord(id="y"))
        off.flush()
        assert off.get_request("y") is None and off.report().requests == 0
    s = load_settings(overrides={"ledger": {"url": "off"}, "budgets": {"limits": [{"usd": 5}]}})
    with pytest.raises(ConfigError, match=r"ledger\.url"):
        open_ledger(s)
    with pytest.raises(ConfigError, match=r"ledger\.url"):
        open_ledger(load_settings(overrides={"ledger": {"url": "mysql://x"}}))


async def _queued(ledger: Ledger, n: int) -> None:
    deadline = time.monotonic() + 30  # a hang guard: wait until the record is queued
    while ledger.stats()["queued"] < n:
        assert time.monotonic() < deadline, "the record was never queued"
        await asyncio.sleep(0.01)


async def _answer_and_commit(
    router: Router, ledger: Ledger, store: _GatedStore, wait: bool
) -> None:
    req = ChatRequest.from_prompt("What is the boiling point of water?")
    answer = asyncio.create_task(router.achat(req))
    await _queued(ledger, 1)
    if wait:  # the answer waits for the commit
        assert not answer.done() and ledger.get_request(req.request_id) is None
        store.gate.set()
        assert (await asyncio.wait_for(answer, 30)).text
        assert ledger.get_request(req.request_id) is not None  # already committed
    else:  # the answer goes out while its record is still queued
        assert (await asyncio.wait_for(answer, 30)).text
        assert ledger.get_request(req.request_id) is None


@pytest.mark.parametrize("wait", [True, False])
async def test_commit_before_reply_holds_the_answer_until_its_record_is_committed(
    tmp_path: Path, wait: bool
) -> None:
    store = _GatedStore(tmp_path / "c.db")
    store.gate.set()
    ledger = Ledger(store, spill_path=tmp_path / "spill.jsonl")
    store.gate.clear()  # the writer stops at its next batch
    with serve(make_app()) as up:
        s = load_settings(
            env={},
            overrides={
                "data_dir": str(tmp_path),
                "backends": [upstream_backend("site", up, "plain")],
                "tiers": [{"name": "site", "backends": ["site"]}],
                "routing": {"complexity_method": "length"},
                "ledger": {"commit_before_reply": wait},
            },
        )
        router = Router(s, ledger=ledger)
        try:
            await _answer_and_commit(router, ledger, store, wait)
        finally:
            store.gate.set()
            await router.aclose()
    assert ledger.stats()["committed"] == 1


async def test_acommitted_returns_once_a_record_is_spilled(tmp_path: Path) -> None:
    store = _GatedStore(tmp_path / "s.db")
    store.gate.set()
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(store, spill_path=spill)
    store.broken = True  # the database refuses every write: the record goes to the spill file
    ledger.record(traffic(1, start=time.time())[0])
    await asyncio.wait_for(ledger.acommitted(), 30)
    assert ledger.stats()["spilled"] == 1 and len(spill.read_text().splitlines()) == 1
    await ledger.aclose()
