"""Deferred jobs in the ledger's database: files, batches and one row per input line.

The tables (migration ``008_batches``) live in the same SQLite file or PostgreSQL database as
the ledger, so jobs survive restarts and replicas share them. Each line has a ``state``:

``waiting`` → ``running`` (claimed by one scheduler, named in ``worker``) → ``done`` (a 200
answer recorded) or ``failed`` (an error answer recorded); ``waiting`` → ``expired`` (the
completion window ended) or ``cancelled`` (the batch was cancelled).

**What a crash can and cannot do.** A line is claimed (``waiting`` → ``running``) in one
transaction before it is sent anywhere, and its answer is recorded in one transaction that
also marks it finished, only if the same scheduler still holds the claim. So an answer is
recorded at most once, and the output file holds each ``custom_id`` exactly once. A scheduler
writes a heartbeat every poll; the lines held by one silent for ``lease_seconds`` (it was
killed, or its host died) go back to ``waiting``: those lines, at most ``concurrency`` per
dead scheduler, had been claimed but had no committed answer, so each may have reached its
backend once already and is sent once more. No other line is ever sent twice. A line whose
claim is lost ``max_attempts`` times fails (``interrupted``), so a line that crashes its
gateway cannot do so forever.

Every function here is one short transaction (sync: the scheduler and the routes call them
in a worker thread).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tierlm.batch.results import final_status, result_files
from tierlm.ledger.store import Row, Store, Tx

# A line's states; OPEN: not finished yet.
OPEN = ("waiting", "running")
STATES = ("waiting", "running", "done", "failed", "expired", "cancelled")
_BATCH_COLUMNS = (
    "id, api_key, ts, input_file_id, endpoint, completion_window, expires_at, status, metadata, "
    "total, in_progress_at, finalizing_at, completed_at, cancelling_at, cancelled_at, "
    "expired_at, output_file_id, error_file_id"
)
_FILE_COLUMNS = "id, api_key, ts, filename, purpose, bytes"
ANY_KEY = object()  # an admin: sees every key's files and batches


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True, slots=True)
class FileRow:
    id: str
    api_key: str | None
    ts: float
    filename: str
    purpose: str
    bytes: int

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.ts),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(slots=True)
class BatchRow:
    id: str
    api_key: str | None
    ts: float
    input_file_id: str
    endpoint: str
    completion_window: str
    expires_at: float
    status: str
    metadata: dict[str, str] | None
    total: int
    times: dict[str, float | None]
    output_file_id: str | None
    error_file_id: str | None
    counts: dict[str, int] = field(default_factory=dict)  # lines by state

    def to_openai(self) -> dict[str, Any]:
        c = self.counts
        out: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.ts),
            "expires_at": int(self.expires_at),
            "failed_at": None,
            "request_counts": {
                "total": self.total,
                "completed": c.get("done", 0),
                "failed": c.get("failed", 0),
            },
            "metadata": self.metadata,
            "tierlm": {"lines": {s: c.get(s, 0) for s in STATES}},
        }
        for name, ts in self.times.items():
            out[name] = int(ts) if ts is not None else None
        return out


@dataclass(frozen=True, slots=True)
class Line:
    """A claimed line: what the scheduler needs to run it."""

    batch_id: str
    n: int
    custom_id: str
    body: dict[str, Any]
    api_key: str | None
    planned_backend: str | None
    claims: int


@dataclass(frozen=True, slots=True)
class Waiting:
    """A line that may be claimed, and what the scheduler checks before claiming it."""

    batch_id: str
    n: int
    backend: str | None  # planned at submission
    key: str | None
    expires_at: float


@dataclass(frozen=True, slots=True)
class Result:
    """A line's answer: the HTTP status and body a live request would have had."""

    status_code: int
    request_id: str | None
    body: dict[str, Any]
    tier: str | None = None
    backend: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    baseline_usd: float | None = None  # its cost on the backend planned at submission
    retry: bool = False  # a failure that trying again later may mend (overloaded, timeout)


def _batch(row: Row) -> BatchRow:
    times = dict(
        zip(
            (
                "in_progress_at",
                "finalizing_at",
                "completed_at",
                "cancelling_at",
                "cancelled_at",
                "expired_at",
            ),
            row[10:16],
            strict=True,
        )
    )
    return BatchRow(
        id=row[0],
        api_key=row[1],
        ts=float(row[2]),
        input_file_id=row[3],
        endpoint=row[4],
        completion_window=row[5],
        expires_at=float(row[6]),
        status=row[7],
        metadata=json.loads(row[8]) if row[8] else None,
        total=int(row[9]),
        times=times,
        output_file_id=row[16],
        error_file_id=row[17],
    )


def _owned(key: object) -> tuple[str, tuple[Any, ...]]:
    """SQL (``AND ...``) and parameters limiting rows to ``key``'s (``None``: keys off)."""
    if key is ANY_KEY:
        return "", ()
    if key is None:
        return " AND api_key IS NULL", ()
    return " AND api_key = ?", (key,)


class BatchStore:
    """The deferred-work tables over one ledger :class:`~tierlm.ledger.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- files --------------------------------------------------------------------------------
    def add_file(
        self, key: str | None, filename: str, purpose: str, content: str, now: float
    ) -> FileRow:
        row = FileRow(new_id("file"), key, now, filename, purpose, len(content.encode("utf-8")))
        with self.store.transaction("budget") as tx:
            self._insert_file(tx, row, content)
        return row

    @staticmethod
    def _insert_file(tx: Tx, row: FileRow, content: str) -> None:
        tx.q(
            f"INSERT INTO batch_files ({_FILE_COLUMNS}, content) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.api_key, row.ts, row.filename, row.purpose, row.bytes, content),
        )

    def get_file(self, file_id: str, key: object) -> FileRow | None:
        where, args = _owned(key)
        with self.store.transaction("read") as tx:
            rows = tx.q(
                f"SELECT {_FILE_COLUMNS} FROM batch_files WHERE id = ?{where}", (file_id, *args)
            )
        return FileRow(*rows[0]) if rows else None

    def file_content(self, file_id: str, key: object) -> str | None:
        where, args = _owned(key)
        with self.store.transaction("read") as tx:
            rows = tx.q(f"SELECT content FROM batch_files WHERE id = ?{where}", (file_id, *args))
        return str(rows[0][0]) if rows else None

    def list_files(self, key: object, purpose: str | None, limit: int) -> list[FileRow]:
        where, args = _owned(key)
        if purpose is not None:
            where, args = where + " AND purpose = ?", (*args, purpose)
        with self.store.transaction("read") as tx:
            rows = tx.q(
                f"SELECT {_FILE_COLUMNS} FROM batch_files WHERE 1 = 1{where} "
                "ORDER BY ts DESC, id LIMIT ?",
                (*args, limit),
            )
        return [FileRow(*r) for r in rows]

    # -- batches ------------------------------------------------------------------------------
    def create_batch(
        self,
        key: str | None,
        input_file_id: str,
        endpoint: str,
        window: str,
        expires_at: float,
        metadata: dict[str, str] | None,
        lines: Sequence[tuple[str, str, str | None]],
        now: float,
    ) -> str:
        """A batch in progress with ``lines`` (custom_id, body JSON, backend planned now)
        waiting; its id."""
        batch_id = new_id("batch")
        with self.store.transaction("budget") as tx:
            tx.q(
                "INSERT INTO batches (id, api_key, ts, input_file_id, endpoint, "
                "completion_window, expires_at, status, metadata, total, in_progress_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'in_progress', ?, ?, ?)",
                (
                    batch_id,
                    key,
                    now,
                    input_file_id,
                    endpoint,
                    window,
                    expires_at,
                    json.dumps(metadata) if metadata else None,
                    len(lines),
                    now,
                ),
            )
            tx.many(
                "INSERT INTO batch_lines (batch_id, n, custom_id, body, state, planned_backend) "
                "VALUES (?, ?, ?, ?, 'waiting', ?)",
                [(batch_id, n, cid, body, plan) for n, (cid, body, plan) in enumerate(lines)],
            )
        return batch_id

    def get_batch(self, batch_id: str, key: object) -> BatchRow | None:
        where, args = _owned(key)
        with self.store.transaction("read") as tx:
            rows = tx.q(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?{where}", (batch_id, *args)
            )
            if not rows:
                return None
            batch = _batch(rows[0])
            batch.counts = self._counts(tx, batch_id)
        return batch

    @staticmethod
    def _counts(tx: Tx, batch_id: str) -> dict[str, int]:
        rows = tx.q(
            "SELECT state, COUNT(*) FROM batch_lines WHERE batch_id = ? GROUP BY state",
            (batch_id,),
        )
        return {str(s): int(n) for s, n in rows}

    def list_batches(self, key: object, after: str | None, limit: int) -> list[BatchRow]:
        """Newest first; ``after``: the id of the last batch of the previous page."""
        where, args = _owned(key)
        with self.store.transaction("read") as tx:
            if after is not None:
                ts = tx.q("SELECT ts FROM batches WHERE id = ?", (after,))
                if ts:
                    where += " AND (ts < ? OR (ts = ? AND id > ?))"
                    args = (*args, ts[0][0], ts[0][0], after)
            rows = tx.q(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE 1 = 1{where} "
                "ORDER BY ts DESC, id LIMIT ?",
                (*args, limit),
            )
            out = [_batch(r) for r in rows]
            for b in out:
                b.counts = self._counts(tx, b.id)
        return out

    def cancel(self, batch_id: str, key: object, now: float) -> bool:
        """Stop a batch: its waiting lines are cancelled now, running ones finish; it is
        ``cancelled`` once none runs (:meth:`finalize`). False: no such batch of ``key``."""
        where, args = _owned(key)
        with self.store.transaction("budget") as tx:
            found = tx.q(
                f"SELECT status FROM batches WHERE id = ?{where}{self.store.for_update}",
                (batch_id, *args),
            )
            if not found:
                return False
            if found[0][0] in ("validating", "in_progress"):
                tx.q(
                    "UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ?",
                    (now, batch_id),
                )
                tx.q(
                    "UPDATE batch_lines SET state = 'cancelled', finished_at = ? "
                    "WHERE batch_id = ? AND state = 'waiting'",
                    (now, batch_id),
                )
        return True

    # -- the scheduler's side -----------------------------------------------------------------
    def heartbeat(self, worker: str, now: float, lease: float) -> int:
        """Say ``worker`` is alive; put back the lines of schedulers silent for ``lease``
        seconds (a line whose claim was lost ``max`` times fails later, in :meth:`claim`).
        Returns how many lines went back."""
        with self.store.transaction("budget") as tx:
            tx.q("DELETE FROM batch_workers WHERE id = ?", (worker,))
            tx.q("INSERT INTO batch_workers (id, seen_at) VALUES (?, ?)", (worker, now))
            back = tx.q(
                "UPDATE batch_lines SET state = 'waiting', worker = NULL "
                "WHERE state = 'running' AND (worker IS NULL OR worker NOT IN "
                "(SELECT id FROM batch_workers WHERE seen_at >= ?)) RETURNING n",
                (now - lease,),
            )
            tx.q("DELETE FROM batch_workers WHERE seen_at < ?", (now - lease,))
        return len(back)

    def waiting(self, now: float, limit: int) -> list[Waiting]:
        """Lines that may be claimed now, oldest batch first."""
        with self.store.transaction("read") as tx:
            rows = tx.q(
                "SELECT l.batch_id, l.n, l.planned_backend, b.api_key, b.expires_at "
                "FROM batch_lines l JOIN batches b ON b.id = l.batch_id "
                "WHERE l.state = 'waiting' AND l.not_before <= ? AND b.status = 'in_progress' "
                "AND b.expires_at > ? ORDER BY b.ts, l.batch_id, l.n LIMIT ?",
                (now, now, limit),
            )
        return [Waiting(str(b), int(n), p, k, float(e)) for b, n, p, k, e in rows]

    def claim(self, batch_id: str, n: int, worker: str, max_claims: int, now: float) -> Line | None:
        """Take one waiting line for ``worker`` (``None``: another scheduler took it first, or
        it was claimed ``max_claims`` times already and has failed now)."""
        with self.store.transaction("budget") as tx:
            rows = tx.q(
                "UPDATE batch_lines SET state = 'running', worker = ?, claims = claims + 1 "
                "WHERE batch_id = ? AND n = ? AND state = 'waiting' "
                "RETURNING custom_id, body, planned_backend, claims",
                (worker, batch_id, n),
            )
            if not rows:
                return None
            cid, body, planned, claims = rows[0]
            if int(claims) > max_claims:
                _record(tx, batch_id, n, worker, _interrupted(int(claims) - 1), now)
                return None
            key = tx.q("SELECT api_key FROM batches WHERE id = ?", (batch_id,))
        return Line(batch_id, n, cid, json.loads(body), key[0][0], planned, int(claims))

    def finish(self, line: Line, worker: str, result: Result, now: float) -> bool:
        """Record ``line``'s answer and mark it finished, if ``worker`` still holds it."""
        with self.store.transaction("budget") as tx:
            return _record(tx, line.batch_id, line.n, worker, result, now)

    def put_back(
        self, batch_id: str, n: int, worker: str, not_before: float, *, count: bool
    ) -> None:
        """Return a claimed line to ``waiting`` (a transient failure: retried from
        ``not_before``; or preempted by live traffic, ``count=False``: the claim is not
        counted)."""
        with self.store.transaction("budget") as tx:
            tx.q(
                "UPDATE batch_lines SET state = 'waiting', worker = NULL, not_before = ?, "
                "claims = claims - ? WHERE batch_id = ? AND n = ? AND state = 'running' "
                "AND worker = ?",
                (not_before, 0 if count else 1, batch_id, n, worker),
            )

    def held_by(self, worker: str) -> list[tuple[str, int]]:
        """The lines ``worker`` has claimed and not finished."""
        with self.store.transaction("read") as tx:
            rows = tx.q(
                "SELECT batch_id, n FROM batch_lines WHERE state = 'running' AND worker = ?",
                (worker,),
            )
        return [(str(b), int(n)) for b, n in rows]

    def expire(self, now: float) -> int:
        """Lines still waiting in batches whose window has ended become ``expired``."""
        with self.store.transaction("budget") as tx:
            rows = tx.q(
                "UPDATE batch_lines SET state = 'expired', finished_at = ? WHERE "
                "state = 'waiting' AND batch_id IN (SELECT id FROM batches WHERE "
                "status = 'in_progress' AND expires_at <= ?) RETURNING n",
                (now, now),
            )
        return len(rows)

    def finalize(self, now: float) -> list[str]:
        """Close every batch with no open line: write its output and error files; status
        ``completed``, ``expired`` (some lines expired) or ``cancelled``. Returns their ids."""
        done: list[str] = []
        with self.store.transaction("read") as tx:
            ready = tx.q(
                "SELECT id FROM batches b WHERE status IN ('in_progress', 'cancelling') AND "
                "NOT EXISTS (SELECT 1 FROM batch_lines l WHERE l.batch_id = b.id "
                "AND l.state IN ('waiting', 'running'))"
            )
        for (batch_id,) in ready:
            with self.store.transaction("budget") as tx:
                if _close(tx, str(batch_id), now, self.store.for_update):
                    done.append(str(batch_id))
        return done


def _interrupted(claims: int) -> Result:
    message = (
        f"this line was interrupted {claims} times (its gateway stopped while it ran); "
        "it is not run again"
    )
    return Result(500, None, {"error": _error("interrupted", message)})


def _error(code: str, message: str) -> dict[str, Any]:
    return {"message": message, "type": "server_error", "code": code, "param": None}


def _record(tx: Tx, batch_id: str, n: int, worker: str, r: Result, now: float) -> bool:
    rows = tx.q(
        "UPDATE batch_lines SET state = ?, worker = NULL, request_id = ?, status_code = ?, "
        "response = ?, tier = ?, backend = ?, prompt_tokens = ?, completion_tokens = ?, "
        "cost_usd = ?, baseline_usd = ?, finished_at = ? "
        "WHERE batch_id = ? AND n = ? AND state = 'running' AND worker = ? RETURNING n",
        (
            "done" if r.status_code == 200 else "failed",
            r.request_id,
            r.status_code,
            json.dumps(r.body, ensure_ascii=False, separators=(",", ":")),
            r.tier,
            r.backend,
            r.prompt_tokens,
            r.completion_tokens,
            r.cost_usd,
            r.baseline_usd,
            now,
            batch_id,
            n,
            worker,
        ),
    )
    return bool(rows)


def _close(tx: Tx, batch_id: str, now: float, lock: str) -> bool:
    """Write one finished batch's files and final status (in this transaction; ``lock``:
    the store's row lock, so two schedulers never both close it)."""
    head = tx.q(
        "SELECT status, api_key FROM batches WHERE id = ? AND status IN "
        f"('in_progress', 'cancelling'){lock}",
        (batch_id,),
    )
    if not head:
        return False  # another scheduler closed it first
    status, key = head[0]
    lines = tx.q(
        "SELECT n, custom_id, state, request_id, status_code, response FROM batch_lines "
        "WHERE batch_id = ? ORDER BY n",
        (batch_id,),
    )
    out, err = result_files(
        [(str(c), str(s), rid, code, body) for _, c, s, rid, code, body in lines]
    )
    files: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
    for name, content in (("output_file_id", out), ("error_file_id", err)):
        if content:
            row = FileRow(
                new_id("file"),
                key,
                now,
                f"{batch_id}_{name.split('_')[0]}.jsonl",
                "batch_output",
                len(content.encode("utf-8")),
            )
            BatchStore._insert_file(tx, row, content)
            files[name] = row.id
    final, stamp = final_status(status, {str(r[2]) for r in lines})
    tx.q(
        f"UPDATE batches SET status = ?, finalizing_at = ?, {stamp} = ?, output_file_id = ?, "
        "error_file_id = ? WHERE id = ?",
        (final, now, now, files["output_file_id"], files["error_file_id"], batch_id),
    )
    return True
