"""The PostgreSQL store, for several gateway replicas sharing one ledger (psycopg 3).

The driver is imported when a store is opened, never at import; without it, opening fails with
:class:`~tierlm.errors.MissingDependency` naming the ``postgres`` extra. The background writer
has its own connection; budget operations and reads borrow from a small pool. Budget rows are
locked with ``SELECT ... FOR UPDATE`` in a fixed order, and writers of the audit chain take a
transaction-scoped advisory lock, so replicas never interleave chain rows. Connecting and
waiting for a pooled connection are bounded (``CONNECT_TIMEOUT_S``, ``POOL_WAIT_S``), so a
database that is down fails fast enough for the budgets to degrade (see
:mod:`tierlm.ledger.budgets`) instead of holding requests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tierlm.errors import MissingDependency
from tierlm.ledger.store import Role, Row, Store

_CHAIN_LOCK = 0x7469_6572  # "tier": the advisory lock key guarding the audit chain
CONNECT_TIMEOUT_S = 5  # seconds; libpq waits forever by default
POOL_WAIT_S = 5.0  # seconds a budget operation or read waits for a pooled connection


class _PgTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def q(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self._conn.execute(sql.replace("?", "%s"), params)
        return list(cur.fetchall()) if cur.description is not None else []

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)


class PostgresStore(Store):
    dialect = "postgres"
    for_update = " FOR UPDATE"
    day_expr = "CAST(FLOOR(ts / 86400) AS BIGINT)"

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError as e:
            raise MissingDependency("a PostgreSQL ledger", "postgres") from e
        self.url = url
        self.errors = (psycopg.Error, psycopg_pool.PoolTimeout)
        self._psycopg = psycopg
        self._writer = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        self._writer_lock = threading.Lock()
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            timeout=POOL_WAIT_S,  # a request waits this long for a connection, then fails
            check=psycopg_pool.ConnectionPool.check_connection,  # drop dead ones on checkout
            open=True,
        )

    @contextmanager
    def transaction(self, role: Role) -> Iterator[_PgTx]:
        if role == "writer":
            with self._writer_lock:
                if self._writer.broken or self._writer.closed:  # e.g. the server restarted
                    self._writer = self._psycopg.connect(
                        self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                    )
                with self._writer.transaction():
                    yield _PgTx(self._writer)
            return
        with self._pool.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    def lock_chain(self, tx: Any) -> None:
        tx.q("SELECT pg_advisory_xact_lock(?)", (_CHAIN_LOCK,))

    def describe(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def close(self) -> None:
        self._pool.close()
        with self._writer_lock:
            self._writer.close()
