"""The ledger: every request recorded, an audit trail of what left the site, money budgets,
feedback, and reports.

Storage is SQLite by default (``ledger.sqlite3`` in the data directory, WAL mode) or
PostgreSQL for several replicas (``ledger.url: postgresql://...``), with the same append-only
migrations. Open it with :func:`open_ledger`; the gateway calls :meth:`Ledger.record` for
every request (queued, group-committed by a background thread), :meth:`Ledger.reserve` /
:meth:`Ledger.settle` around every call that costs money, and :meth:`Ledger.budget_state`
to decide whether external tiers are still allowed.
"""

from tierlm.ledger.audit import digest
from tierlm.ledger.budgets import BudgetState, Reservation
from tierlm.ledger.core import Ledger, UnknownRequest, open_ledger, open_store
from tierlm.ledger.records import AttemptRecord, AuditRecord, AuditResult, RequestRecord

__all__ = [
    "AttemptRecord",
    "AuditRecord",
    "AuditResult",
    "BudgetState",
    "Ledger",
    "RequestRecord",
    "Reservation",
    "UnknownRequest",
    "digest",
    "open_ledger",
    "open_store",
]
