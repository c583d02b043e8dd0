"""The SQLite store: one file in the data directory, WAL mode, the default ledger.

WAL with ``synchronous=NORMAL``: a committed transaction survives the process being killed
(SIGKILL); only a power loss may lose the last commits. Each role keeps one connection behind a
lock; writes open with ``BEGIN IMMEDIATE``, which takes the database's write lock up front, so
budget checks and updates are atomic across threads and processes.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tierlm.ledger.store import Role, Row, Store


class _SqliteTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def q(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SqliteStore(Store):
    dialect = "sqlite"
    day_expr = "CAST(ts / 86400 AS INTEGER)"
    errors = (sqlite3.Error,)

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.memory = str(path) == ":memory:"  # one shared connection, gone at close
        self.path = Path(path)
        if not self.memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._conns: dict[Role, tuple[sqlite3.Connection, threading.Lock]] = {}
        self._guard = threading.Lock()
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("SELECT LN(2.0), FLOOR(2.5)")
        except sqlite3.OperationalError:  # SQLite built without its math functions
            conn.create_function("LN", 1, math.log, deterministic=True)
            conn.create_function("FLOOR", 1, math.floor, deterministic=True)
        return conn

    def _conn(self, role: Role) -> tuple[sqlite3.Connection, threading.Lock]:
        with self._guard:
            if self._closed:
                raise sqlite3.ProgrammingError("the ledger store is closed")
            if self.memory and self._conns:
                return next(iter(self._conns.values()))
            if role not in self._conns:
                self._conns[role] = (self._connect(), threading.Lock())
            return self._conns[role]

    @contextmanager
    def transaction(self, role: Role) -> Iterator[_SqliteTx]:
        conn, lock = self._conn(role)
        with lock:
            conn.execute("BEGIN" if role == "read" else "BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def lock_chain(self, tx: Any) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already holds the only write lock."""

    def integrity(self) -> str:
        with self.transaction("read") as tx:
            rows = tx.q("PRAGMA integrity_check")
        return "; ".join(str(r[0]) for r in rows)

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def close(self) -> None:
        with self._guard:
            self._closed = True
            conns, self._conns = self._conns, {}
        for conn, lock in conns.values():
            with lock:
                conn.close()
