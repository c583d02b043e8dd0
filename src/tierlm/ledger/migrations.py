"""Append-only, named schema migrations, one list for SQLite and PostgreSQL.

Each migration runs once, in order, and its name is stored in ``_migrations``. Never edit or
reorder a released migration: append a new one. Money in budget tables is integer nano-USD
(``*_nusd``), so reserve and settle add up exactly. ``{id}`` in the SQL is an auto-increment
primary key column, written the way each dialect spells it; everything else is common SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tierlm.ledger.rollups import BACKFILL

Dialect = Literal["sqlite", "postgres"]

_ID = {
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgres": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    statements: tuple[str, ...]

    def sql(self, dialect: Dialect) -> list[str]:
        return [s.replace("{id}", _ID[dialect]) for s in self.statements]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "001_requests",
        (
            """CREATE TABLE requests (
                id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, api_key TEXT,
                tier TEXT, backend TEXT, model TEXT, boundary TEXT,
                complexity DOUBLE PRECISION, privacy TEXT, reasons TEXT, findings TEXT,
                prompt_tokens BIGINT NOT NULL DEFAULT 0,
                completion_tokens BIGINT NOT NULL DEFAULT 0,
                cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0, outcome TEXT NOT NULL,
                latency_ms DOUBLE PRECISION, ttft_ms DOUBLE PRECISION,
                escalated INTEGER NOT NULL DEFAULT 0, fallback INTEGER NOT NULL DEFAULT 0,
                stream INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
                prompt TEXT, completion TEXT)""",
            "CREATE INDEX requests_ts ON requests (ts)",
            """CREATE TABLE attempts (
                request_id TEXT NOT NULL, n INTEGER NOT NULL, ts DOUBLE PRECISION NOT NULL,
                backend TEXT NOT NULL, tier TEXT, boundary TEXT, outcome TEXT NOT NULL,
                error_kind TEXT, latency_ms DOUBLE PRECISION, ttft_ms DOUBLE PRECISION,
                tokens BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (request_id, n))""",
        ),
    ),
    Migration(
        "002_audit",
        (
            """CREATE TABLE audit (
                seq BIGINT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL,
                api_key TEXT, backend TEXT NOT NULL, tier TEXT, boundary TEXT NOT NULL,
                privacy TEXT, digest TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
            "CREATE INDEX audit_ts ON audit (ts)",
        ),
    ),
    Migration(
        "003_budgets",
        (
            """CREATE TABLE budget_buckets (
                bucket TEXT PRIMARY KEY, limit_nusd BIGINT NOT NULL,
                spent_nusd BIGINT NOT NULL DEFAULT 0,
                reserved_nusd BIGINT NOT NULL DEFAULT 0)""",
            """CREATE TABLE reservations (
                id TEXT PRIMARY KEY, request_id TEXT, ts DOUBLE PRECISION NOT NULL,
                nusd BIGINT NOT NULL, buckets TEXT NOT NULL)""",
            "CREATE INDEX reservations_ts ON reservations (ts)",
        ),
    ),
    Migration(
        "004_feedback",
        (
            """CREATE TABLE feedback (
                id {id}, request_id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL,
                score DOUBLE PRECISION, thumbs TEXT, text TEXT)""",
            "CREATE INDEX feedback_request ON feedback (request_id)",
        ),
    ),
    Migration(
        "005_rollups",
        (
            """CREATE TABLE rollup_requests (
                hour BIGINT NOT NULL, tier TEXT NOT NULL, backend TEXT NOT NULL,
                api_key TEXT NOT NULL, n BIGINT NOT NULL, cost_usd DOUBLE PRECISION NOT NULL,
                prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
                external BIGINT NOT NULL, fallback BIGINT NOT NULL, escalated BIGINT NOT NULL,
                errors BIGINT NOT NULL, PRIMARY KEY (hour, tier, backend, api_key))""",
            """CREATE TABLE rollup_hist (
                day BIGINT NOT NULL, kind TEXT NOT NULL, tier TEXT NOT NULL,
                bucket BIGINT NOT NULL, n BIGINT NOT NULL,
                PRIMARY KEY (day, kind, tier, bucket))""",
            """CREATE TABLE rollup_attempts (
                hour BIGINT NOT NULL, backend TEXT NOT NULL, n BIGINT NOT NULL,
                failed BIGINT NOT NULL, PRIMARY KEY (hour, backend))""",
            *BACKFILL,
        ),
    ),
    Migration(
        "006_attempt_judge",
        (
            "ALTER TABLE attempts ADD COLUMN judge_score DOUBLE PRECISION",
            "ALTER TABLE attempts ADD COLUMN judge_decision TEXT",
        ),
    ),
    Migration(
        # The gateway's own id is the primary key; a client's x-request-id is kept beside it.
        "007_client_request_id",
        (
            "ALTER TABLE requests ADD COLUMN client_request_id TEXT",
            "CREATE INDEX requests_client_request_id ON requests (client_request_id)",
        ),
    ),
    Migration(
        # Deferred work (the OpenAI Batch API, :mod:`tierlm.batch`): uploaded and generated
        # files, batches, and one row per input line with its state and committed result.
        "008_batches",
        (
            "ALTER TABLE requests ADD COLUMN batch_id TEXT",
            """CREATE TABLE batch_files (
                id TEXT PRIMARY KEY, api_key TEXT, ts DOUBLE PRECISION NOT NULL,
                filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes BIGINT NOT NULL,
                content TEXT NOT NULL)""",
            """CREATE TABLE batches (
                id TEXT PRIMARY KEY, api_key TEXT, ts DOUBLE PRECISION NOT NULL,
                input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL,
                completion_window TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
                status TEXT NOT NULL, metadata TEXT, total INTEGER NOT NULL,
                in_progress_at DOUBLE PRECISION, finalizing_at DOUBLE PRECISION,
                completed_at DOUBLE PRECISION, cancelling_at DOUBLE PRECISION,
                cancelled_at DOUBLE PRECISION, expired_at DOUBLE PRECISION,
                output_file_id TEXT, error_file_id TEXT)""",
            "CREATE INDEX batches_status ON batches (status, ts)",
            """CREATE TABLE batch_lines (
                batch_id TEXT NOT NULL, n INTEGER NOT NULL, custom_id TEXT NOT NULL,
                body TEXT NOT NULL, state TEXT NOT NULL, worker TEXT,
                claims INTEGER NOT NULL DEFAULT 0,
                not_before DOUBLE PRECISION NOT NULL DEFAULT 0, planned_backend TEXT,
                request_id TEXT, status_code INTEGER, response TEXT, tier TEXT, backend TEXT,
                prompt_tokens BIGINT NOT NULL DEFAULT 0,
                completion_tokens BIGINT NOT NULL DEFAULT 0,
                cost_usd DOUBLE PRECISION, baseline_usd DOUBLE PRECISION,
                finished_at DOUBLE PRECISION, PRIMARY KEY (batch_id, n))""",
            "CREATE INDEX batch_lines_state ON batch_lines (state, batch_id)",
            """CREATE TABLE batch_workers (
                id TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL)""",
        ),
    ),
    Migration(
        # Each attempt's own cost (a request's cost is their sum; reports attribute it to the
        # backend that billed it) and the digest of the body it sent (audit cross-check).
        # Rows written before it keep cost 0 and no digest: their cost is on the request.
        "009_attempt_cost_digest",
        (
            "ALTER TABLE attempts ADD COLUMN cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0",
            "ALTER TABLE attempts ADD COLUMN sent_digest TEXT",
        ),
    ),
)


def pending(applied: set[str]) -> list[Migration]:
    """The migrations not yet applied, in order."""
    return [m for m in MIGRATIONS if m.name not in applied]


def apply_all(
    dialect: Dialect,
    applied: set[str],
    run: Callable[[str, tuple[Any, ...]], object],
    now: float,
) -> list[str]:
    """Run each pending migration's statements and record its name; return the names run."""
    done: list[str] = []
    for m in pending(applied):
        for stmt in m.sql(dialect):
            run(stmt, ())
        run("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (m.name, now))
        done.append(m.name)
    return done
