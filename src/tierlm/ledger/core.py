"""The :class:`Ledger`: records, budgets, feedback, audit and reports over one store.

A sync core (the CLI and tests use it directly) with ``a*`` async wrappers for the gateway:
``record`` only enqueues (never blocks unless the queue is full) and needs no wrapper, and
``acommitted`` waits for the commit (``ledger.commit_before_reply``); the budget calls are
short transactions run in a worker thread by ``areserve`` / ``asettle``.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlm.config.settings import BudgetConfig
from tierlm.errors import ConfigError, InvalidRequest, PermissionDenied
from tierlm.ledger import audit, rollups
from tierlm.ledger.budgets import BudgetBook, BudgetState, Reservation
from tierlm.ledger.records import (
    AuditRecord,
    AuditResult,
    RequestRecord,
    SentAttempt,
    Thumbs,
    stored_text,
)
from tierlm.ledger.store import Store, Tx
from tierlm.ledger.writer import BatchWriter

if TYPE_CHECKING:
    from tierlm.config.settings import Settings
    from tierlm.ledger.reports import Report

_REQUEST_COLUMNS = (
    "id, ts, api_key, tier, backend, model, boundary, complexity, privacy, reasons, findings, "
    "prompt_tokens, completion_tokens, cost_usd, outcome, latency_ms, ttft_ms, escalated, "
    "fallback, stream, attempts, prompt, completion, client_request_id, batch_id"
)
_ATTEMPT_COLUMNS = (
    "request_id, n, ts, backend, tier, boundary, outcome, error_kind, latency_ms, ttft_ms, tokens, "
    "judge_score, judge_decision, cost_usd, sent_digest"
)
MAX_FEEDBACK_TEXT = 4000


class UnknownRequest(InvalidRequest):
    """Feedback named a request id the ledger has no record of."""

    status = 404
    code = "request_not_found"


_encode = json.JSONEncoder(ensure_ascii=False).encode


def _json_list(items: list[str]) -> str:
    return _encode(items) if items else "[]"


def _marks(columns: str) -> str:
    return ", ".join("?" * (columns.count(",") + 1))


def _request_row(r: RequestRecord) -> tuple[Any, ...]:
    return (
        r.id,
        r.ts,
        r.api_key,
        r.tier,
        r.backend,
        r.model,
        r.boundary,
        r.complexity,
        r.privacy,
        _json_list(r.reasons),
        _json_list(r.findings),
        r.prompt_tokens,
        r.completion_tokens,
        r.cost_usd,
        r.outcome,
        r.latency_ms,
        r.ttft_ms,
        int(r.escalated),
        int(r.fallback),
        int(r.stream),
        len(r.attempts),
        r.prompt,
        r.completion,
        r.client_request_id,
        r.batch_id,
    )


def write_records(store: Store, tx: Tx, records: list[RequestRecord]) -> None:
    """Insert requests, their attempts, and the audit rows of boundary-crossing attempts."""
    tx.many(
        f"INSERT INTO requests ({_REQUEST_COLUMNS}) VALUES ({_marks(_REQUEST_COLUMNS)}) "
        "ON CONFLICT (id) DO NOTHING",
        [_request_row(r) for r in records],
    )
    attempts = [
        (
            r.id,
            n,
            a.ts if a.ts is not None else r.ts,
            a.backend,
            a.tier,
            a.boundary,
            a.outcome,
            a.error_kind,
            a.latency_ms,
            a.ttft_ms,
            a.tokens,
            a.judge_score,
            a.judge_decision,
            a.cost_usd,
            a.sent_digest,
        )
        for r in records
        for n, a in enumerate(r.attempts)
    ]
    if attempts:
        tx.many(
            f"INSERT INTO attempts ({_ATTEMPT_COLUMNS}) VALUES ({_marks(_ATTEMPT_COLUMNS)}) "
            "ON CONFLICT (request_id, n) DO NOTHING",
            attempts,
        )
    if any(audit.crossed(a) for r in records for a in r.attempts):
        store.lock_chain(tx)
        audit.append(tx, records)
    rollups.add(tx, records)


class Ledger:
    """Every request, the audit trail of what left the site, budgets and feedback."""

    def __init__(
        self,
        store: Store,
        *,
        budgets: BudgetConfig | None = None,
        store_prompts: bool = False,
        recording: bool = True,
        strongest_tier: str | None = None,
        baseline_price: tuple[float, float] | None = None,
        spill_path: Path | None = None,
        max_queue: int = 10_000,
        max_batch: int = 1_000,
    ) -> None:
        self.store = store
        self.migrations_applied = store.migrate()
        self.budgets = BudgetBook(store, budgets or BudgetConfig())
        if self.budgets.config.limits:
            self.budgets.expire()  # money held by processes that died before settling
        self.store_prompts = store_prompts
        self.recording = recording
        self.strongest_tier = strongest_tier
        self.baseline_price = baseline_price  # USD per million (input, output) tokens
        self._writer = BatchWriter(
            lambda batch: self._write(batch),
            store.errors,
            spill_path=spill_path or Path("tierlm-ledger-spill.jsonl"),
            max_queue=max_queue,
            max_batch=max_batch,
        )

    # -- requests -------------------------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        """Queue one request record (non-blocking unless the queue is full)."""
        if not self.recording:
            return
        sensitive = bool(rec.findings)
        if self.store_prompts:
            rec.prompt = stored_text(rec.prompt, rec.prompt_spans, sensitive)
            rec.completion = stored_text(rec.completion, rec.completion_spans, sensitive)
        else:
            rec.prompt = rec.completion = None
        self._writer.put(rec)

    def _write(self, batch: list[RequestRecord]) -> None:
        with self.store.transaction("writer") as tx:
            write_records(self.store, tx, batch)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far is committed."""
        return self._writer.flush(timeout)

    async def acommitted(self) -> None:
        """Wait (without blocking the loop) until every record queued so far is committed, or
        spilled to the spill file when the database would not take it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not done.done():  # the waiter may have been cancelled
                done.set_result(None)

        def from_writer() -> None:
            try:
                loop.call_soon_threadsafe(resolve)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        self._writer.when_committed(from_writer)
        await done

    def stats(self) -> dict[str, int]:
        """Writer counters for metrics: queued, committed, batches, blocked, spilled, pending."""
        return {**self._writer.stats.to_dict(), "pending": self._writer.pending}

    def replay_spill(self, path: Path) -> int:
        """Write the records of a spill file, then rename it ``*.replayed``."""
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [RequestRecord.from_dict(json.loads(line)) for line in lines if line.strip()]
        for i in range(0, len(records), 1000):
            self._write(records[i : i + 1000])
        path.rename(path.with_suffix(path.suffix + ".replayed"))
        return len(records)

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        cols = [c.strip() for c in _REQUEST_COLUMNS.split(",")]
        with self.store.transaction("read") as tx:
            rows = tx.q(f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE id = ?", (request_id,))
        return dict(zip(cols, rows[0], strict=True)) if rows else None

    # -- budgets --------------------------------------------------------------------------

    def reserve(
        self,
        request_id: str,
        *,
        key: str | None,
        tier: str | None,
        backend: str | None,
        usd: float,
    ) -> Reservation:
        """Hold ``usd`` against every budget in force; raise ``BudgetExceeded`` if it won't fit."""
        return self.budgets.reserve(request_id, key=key, tier=tier, backend=backend, usd=usd)

    def settle(self, reservation: Reservation, usd: float) -> None:
        self.budgets.settle(reservation, usd)

    def release(self, reservation: Reservation) -> None:
        self.budgets.release(reservation)

    def budget_state(self, *, key: str | None, tier: str | None) -> BudgetState:
        return self.budgets.state(key=key, tier=tier)

    async def areserve(
        self,
        request_id: str,
        *,
        key: str | None,
        tier: str | None,
        backend: str | None,
        usd: float,
    ) -> Reservation:
        if usd <= 0 or not self.budgets.config.limits:
            return self.reserve(request_id, key=key, tier=tier, backend=backend, usd=usd)
        return await asyncio.to_thread(
            self.reserve, request_id, key=key, tier=tier, backend=backend, usd=usd
        )

    async def asettle(self, reservation: Reservation, usd: float) -> None:
        if reservation.noop and usd <= 0:
            return self.settle(reservation, usd)
        await asyncio.to_thread(self.settle, reservation, usd)
        return None

    async def arelease(self, reservation: Reservation) -> None:
        await self.asettle(reservation, 0.0)

    async def abudget_state(self, *, key: str | None, tier: str | None) -> BudgetState:
        return await asyncio.to_thread(self.budget_state, key=key, tier=tier)

    # -- feedback -------------------------------------------------------------------------

    def add_feedback(
        self,
        request_id: str,
        score: float | None = None,
        thumbs: Thumbs | None = None,
        text: str | None = None,
        scorer: str | None = None,
    ) -> None:
        """Store a score in [0, 1] and/or thumbs up/down (and a note) for one request.

        ``scorer`` is the API key scoring it: a key may score only its own requests (pass
        ``None`` for an admin key or when keys are off). ``text`` is stored as given: redact it
        first (the gateway does)."""
        if score is None and thumbs is None:
            raise InvalidRequest("feedback needs a score (0 to 1) or thumbs ('up' or 'down')")
        if score is not None and not 0.0 <= score <= 1.0:
            raise InvalidRequest(f"score must be between 0 and 1, got {score}")
        if thumbs is not None and thumbs not in ("up", "down"):
            raise InvalidRequest(f"thumbs must be 'up' or 'down', got {thumbs!r}")
        if text is not None and len(text) > MAX_FEEDBACK_TEXT:
            raise InvalidRequest(f"feedback text is limited to {MAX_FEEDBACK_TEXT} characters")
        owner = self._owner(request_id)
        if owner is None:
            self.flush()
            owner = self._owner(request_id)
        if owner is None:
            raise UnknownRequest(f"no request {request_id!r} in the ledger", request_id=request_id)
        if scorer is not None and owner[0] != scorer:
            raise PermissionDenied(
                f"API key '{scorer}' may only score its own requests", request_id=request_id
            )
        with self.store.transaction("budget") as tx:
            tx.q(
                "INSERT INTO feedback (request_id, ts, score, thumbs, text) VALUES (?, ?, ?, ?, ?)",
                (request_id, time.time(), score, thumbs, text),
            )

    def _owner(self, request_id: str) -> tuple[str | None] | None:
        """``(api key name,)`` of a recorded request; ``None`` when it is not recorded."""
        with self.store.transaction("read") as tx:
            rows = tx.q("SELECT api_key FROM requests WHERE id = ?", (request_id,))
        return (rows[0][0],) if rows else None

    async def aadd_feedback(
        self,
        request_id: str,
        score: float | None = None,
        thumbs: Thumbs | None = None,
        text: str | None = None,
        scorer: str | None = None,
    ) -> None:
        await asyncio.to_thread(self.add_feedback, request_id, score, thumbs, text, scorer)

    # -- reports and audit ----------------------------------------------------------------

    def report(
        self, since: timedelta = timedelta(days=30), *, until: float | None = None
    ) -> Report:
        from tierlm.ledger.reports import build_report

        return build_report(
            self.store,
            since=since,
            until=until,
            strongest_tier=self.strongest_tier,
            baseline_price=self.baseline_price,
            budget=self.budgets.current() if self.budgets.config.limits else None,
        )

    async def areport(self, since: timedelta = timedelta(days=30)) -> Report:
        return await asyncio.to_thread(self.report, since)

    def audit_verify(self, anchor: str | None = None) -> AuditResult:
        """Recompute the audit chain (it must hold ``anchor``, a head hash kept elsewhere,
        when given) and cross-check it against the recorded requests; say what is wrong."""
        with self.store.transaction("read") as tx:
            rows = tx.q(f"SELECT {audit.COLUMNS} FROM audit ORDER BY seq")
            result = audit.verify_rows(rows, anchor)
            why = audit.cross_check(tx) if result.ok else None
        if why is not None:
            return AuditResult(False, result.rows, None, why, result.head_seq, result.head)
        return result

    def audit_head(self) -> tuple[int, str] | None:
        """The newest audit row's ``(seq, hash)``: the anchor to keep outside the ledger."""
        with self.store.transaction("read") as tx:
            last = tx.q("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (int(last[0][0]), str(last[0][1])) if last else None

    def audit_list(self, *, since: float = 0.0, limit: int = 50) -> list[AuditRecord]:
        """The latest audit rows since ``since`` (epoch seconds), newest first."""
        with self.store.transaction("read") as tx:
            rows = tx.q(
                f"SELECT {audit.COLUMNS} FROM audit WHERE ts >= ? ORDER BY seq DESC LIMIT ?",
                (since, limit),
            )
        return [audit.to_record(r) for r in rows]

    def audit_sent(
        self,
        *,
        since: float = 0.0,
        limit: int = 50,
        request_id: str | None = None,
        digest: str | None = None,
    ) -> list[SentAttempt]:
        """The latest attempts that sent a body to a site or external backend since ``since``
        (epoch seconds), newest first; only one request's, or only those that sent the bytes
        whose digest is ``digest``, when given."""
        where = f"ts >= ? AND {audit.SENT_WHERE}"
        args: list[Any] = [since]
        for column, value in (("request_id", request_id), ("sent_digest", digest)):
            if value is not None:
                where += f" AND {column} = ?"
                args.append(value)
        with self.store.transaction("read") as tx:
            rows = tx.q(
                f"SELECT {audit.SENT_COLUMNS} FROM attempts WHERE {where} "
                "ORDER BY ts DESC, request_id, n LIMIT ?",
                (*args, limit),
            )
        return [SentAttempt(r[0], int(r[1]), float(r[2]), *r[3:]) for r in rows]

    def integrity(self) -> str:
        return self.store.integrity()

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Commit everything queued, then close the database."""
        self._writer.close()
        self.store.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(url: str | None, data_dir: Path) -> Store:
    """The store for a ledger URL: ``None`` (SQLite in ``data_dir``), ``sqlite:///PATH``,
    ``postgresql://...``, or ``off`` (in memory, nothing kept)."""
    if url is None:
        from tierlm.ledger.sqlite import SqliteStore

        return SqliteStore(data_dir / "ledger.sqlite3")
    if url == "off" or url.startswith("sqlite:"):
        from tierlm.ledger.sqlite import SqliteStore

        return SqliteStore(":memory:" if url == "off" else url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from tierlm.ledger.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError("expected sqlite:///PATH, postgresql://... or off", key="ledger.url")


def open_ledger(settings: Settings, **kwargs: Any) -> Ledger:
    """Open the ledger a deployment's settings describe (migrating it if needed)."""
    from tierlm.paths import data_dir

    url = settings.ledger.url
    if url == "off" and settings.budgets.limits:
        raise ConfigError("money budgets need a ledger; set ledger.url", key="ledger.url")
    directory = data_dir(settings)
    from tierlm.pricing import price_source

    strongest = settings.tiers[-1]
    price, source = price_source(settings.backend(strongest.backends[0]))
    kwargs.setdefault("spill_path", directory / "ledger-spill.jsonl")
    return Ledger(
        open_store(url, directory),
        budgets=settings.budgets,
        store_prompts=settings.ledger.store_prompts,
        recording=url != "off",
        strongest_tier=strongest.name,
        # the configured or published price; else the cost per token observed in the ledger
        baseline_price=(price.input, price.output) if source in ("config", "table") else None,
        **kwargs,
    )
