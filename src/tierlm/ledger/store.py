"""The storage contract the ledger is written against: transactions over one SQL database.

Two implementations: :mod:`tierlm.ledger.sqlite` (the default, one file, WAL mode) and
:mod:`tierlm.ledger.postgres` (several gateway replicas). SQL is written once with ``?``
placeholders; the Postgres store translates them. A transaction is opened for one *role*:

- ``writer``: the background writer's batches (its own connection);
- ``budget``: reserve / settle / release, short and serialized (SQLite ``BEGIN IMMEDIATE``,
  Postgres row locks via ``SELECT ... FOR UPDATE``);
- ``read``: reports, audit verification, feedback checks.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

from tierlm.ledger.migrations import Dialect, apply_all

Role = Literal["writer", "budget", "read"]
Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction."""

    def q(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement; return its rows (empty for statements without rows)."""
        ...

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each parameter row."""
        ...


class Store(ABC):
    """A SQL database the ledger can open transactions on."""

    dialect: Dialect
    for_update: str = ""  # appended to SELECTs that must lock the rows they read
    day_expr: str = ""  # SQL expression: the UTC day number of column ``ts``
    errors: tuple[type[BaseException], ...] = ()  # the driver's error base classes

    @abstractmethod
    def transaction(self, role: Role) -> AbstractContextManager[Tx]:
        """Open a transaction; commit on normal exit, roll back on an exception."""

    @abstractmethod
    def lock_chain(self, tx: Tx) -> None:
        """Serialize writers of the audit chain (across processes and replicas)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection."""

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, without credentials."""

    def integrity(self) -> str:
        """``"ok"``, or what the database's own check reports."""
        return "ok"

    def migrate(self) -> list[str]:
        """Apply pending migrations (serialized against other openers); return their names."""
        with self.transaction("budget") as tx:
            self.lock_chain(tx)
            tx.q(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at "
                "DOUBLE PRECISION NOT NULL)"
            )
            applied = {r[0] for r in tx.q("SELECT name FROM _migrations")}
            return apply_all(self.dialect, applied, tx.q, time.time())
