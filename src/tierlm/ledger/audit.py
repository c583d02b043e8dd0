"""The audit trail: one row per call that crossed the site boundary, chained by hash.

Each row's ``hash`` is ``sha256(prev_hash + canonical JSON of the row)``; the first row's
``prev_hash`` is 64 zeros. Changing, inserting or deleting any row breaks the chain from that
row on, and :func:`verify_rows` names the first row that no longer verifies.

Deleting rows from the *end* leaves a shorter chain that still verifies. Two checks catch it:

- :func:`cross_check`: every request still in the ``requests`` table must have exactly one
  audit row per attempt of it that crossed the boundary (they are written in one
  transaction), so a deleted newest row whose request is still recorded is found; and since
  every attempt keeps the digest of what it sent (``attempts.sent_digest``, migration
  ``009``), each audit row must match one such attempt by request, backend and digest, so a
  row rewritten with its chain recomputed is found too;
- an external anchor: ``tierlm audit head`` prints the head (the last row's ``seq`` and
  ``hash``) for the operator to keep elsewhere; ``verify_rows(rows, anchor=HASH)`` fails
  unless a row with that hash is still in the chain (rows after it may have been added).

What was sent is kept only as :func:`digest`: the SHA-256 of the exact bytes of the request
body the adapter sent upstream (after redaction, with every forwarded field), never the content
itself; anyone holding those bytes can check them against the row. An attempt that sent
nothing (skipped by a guard or the budget, or failed before its body went out) has no digest
and no row. The attempts table keeps the digest of every attempt that sent a body, to a site
backend too (:data:`LEFT_HOST`: what ``tierlm audit sent`` lists), though only external ones
are chained.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from tierlm.ledger.records import AuditRecord, AuditResult, RequestRecord
from tierlm.ledger.store import Row, Tx

GENESIS = "0" * 64
COLUMNS = "seq, ts, request_id, api_key, backend, tier, boundary, privacy, digest, prev_hash, hash"
CROSSES = frozenset({"external"})  # boundaries beyond the site
LEFT_HOST = ("site", "external")  # boundaries whose attempts `tierlm audit sent` lists
SENT_COLUMNS = "request_id, n, ts, backend, tier, boundary, outcome, sent_digest"
_LEFT_HOST_SQL = ", ".join(f"'{b}'" for b in LEFT_HOST)
SENT_WHERE = f"boundary IN ({_LEFT_HOST_SQL}) AND sent_digest IS NOT NULL"


def crossed(a: Any) -> bool:
    """Did this attempt send data across the site boundary?"""
    return a.boundary in CROSSES and a.sent_digest is not None


def canonical(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(payload: Any) -> str:
    """SHA-256 hex of what was sent (a request body as a JSON-able object, str or bytes)."""
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, str):
        data = payload.encode()
    else:
        data = canonical(payload).encode()
    return hashlib.sha256(data).hexdigest()


def row_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(fields)).encode()).hexdigest()


def _fields(seq: int, ts: float, rec: RequestRecord, a: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "ts": ts,
        "request_id": rec.id,
        "api_key": rec.api_key,
        "backend": a.backend,
        "tier": a.tier,
        "boundary": a.boundary,
        "privacy": rec.privacy,
        "digest": a.sent_digest,
    }


def append(tx: Tx, records: Sequence[RequestRecord]) -> int:
    """Chain and insert the audit rows of ``records``' boundary-crossing attempts.

    The caller holds the chain lock (see ``Store.lock_chain``) inside ``tx``.
    """
    crossing = [(r, a) for r in records for a in r.attempts if crossed(a)]
    if not crossing:
        return 0
    last = tx.q("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    seq, prev = (int(last[0][0]), str(last[0][1])) if last else (0, GENESIS)
    rows: list[tuple[Any, ...]] = []
    for rec, a in crossing:
        seq += 1
        ts = round(a.ts if a.ts is not None else rec.ts, 6)
        f = _fields(seq, ts, rec, a)
        h = row_hash(prev, f)
        rows.append((*f.values(), prev, h))
        prev = h
    tx.many(f"INSERT INTO audit ({COLUMNS}) VALUES ({', '.join('?' * 11)})", rows)
    return len(rows)


def to_record(row: Row) -> AuditRecord:
    seq, ts, rid, key, backend, tier, boundary, privacy, dig, prev, h = row
    return AuditRecord(
        seq=int(seq),
        ts=float(ts),
        request_id=rid,
        api_key=key,
        backend=backend,
        tier=tier,
        boundary=boundary,
        privacy=privacy,
        digest=dig,
        prev_hash=prev,
        hash=h,
    )


# Counts bound the audit rows of a request, for attempts recorded with or without a digest: at
# least one per answered external attempt (it sent its body), at most one per external attempt
# that was not skipped (the executor's error_kind for an attempt that was never sent).
NOT_SENT = "Skipped"
_CROSSING = ", ".join(f"'{b}'" for b in sorted(CROSSES))
_AUDITED = "(SELECT request_id, COUNT(*) AS n FROM audit GROUP BY request_id)"
_MISMATCH = f"""
SELECT s.request_id, s.ok, s.tried, COALESCE(u.n, 0) FROM (
    SELECT request_id,
        SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END) AS ok,
        SUM(CASE WHEN error_kind IS NULL OR error_kind <> '{NOT_SENT}' THEN 1 ELSE 0 END) AS tried
    FROM attempts WHERE boundary IN ({_CROSSING}) GROUP BY request_id) s
LEFT JOIN {_AUDITED} u ON u.request_id = s.request_id
WHERE COALESCE(u.n, 0) < s.ok OR COALESCE(u.n, 0) > s.tried
UNION ALL
SELECT u.request_id, 0, 0, u.n FROM {_AUDITED} u JOIN requests r ON r.id = u.request_id
WHERE NOT EXISTS (
    SELECT 1 FROM attempts a WHERE a.request_id = u.request_id AND a.boundary IN ({_CROSSING}))
ORDER BY 1 LIMIT 1
"""


# Attempts recorded with their digest must match the audit rows of their request one for one,
# by (request, backend, digest): none missing, none extra, none changed.
_SENT = f"""SELECT request_id, backend, sent_digest AS d, COUNT(*) AS n FROM attempts
    WHERE boundary IN ({_CROSSING}) AND sent_digest IS NOT NULL GROUP BY 1, 2, 3"""
_ROWS = "SELECT request_id, backend, digest AS d, COUNT(*) AS n FROM audit GROUP BY 1, 2, 3"
_DIGEST_MISMATCH = f"""
WITH s AS ({_SENT}), u AS ({_ROWS})
SELECT s.request_id, s.backend, s.d, s.n, COALESCE(u.n, 0) FROM s
LEFT JOIN u ON u.request_id = s.request_id AND u.backend = s.backend AND u.d = s.d
WHERE COALESCE(u.n, 0) <> s.n
UNION ALL
SELECT u.request_id, u.backend, u.d, 0, u.n FROM u
WHERE EXISTS (SELECT 1 FROM s x WHERE x.request_id = u.request_id)
AND NOT EXISTS (
    SELECT 1 FROM s y WHERE y.request_id = u.request_id AND y.backend = u.backend AND y.d = u.d)
ORDER BY 1 LIMIT 1
"""


def _digest_check(tx: Tx) -> str | None:
    bad = tx.q(_DIGEST_MISMATCH)
    if not bad:
        return None
    rid, backend, dig, sent, rows = bad[0]
    if int(sent) == 0:
        return (
            f"the audit trail holds a row for request {rid} to {backend} with digest "
            f"{str(dig)[:16]}... that no recorded attempt sent: audit rows were added or changed"
        )
    return (
        f"request {rid} sent {sent} body(ies) with digest {str(dig)[:16]}... to {backend}, but "
        f"the audit trail holds {rows} row(s) for them: audit rows were deleted or changed"
    )


def cross_check(tx: Tx) -> str | None:
    """Why the audit rows and the recorded requests disagree, or ``None`` when they agree."""
    bad = tx.q(_MISMATCH)
    if not bad:
        return _digest_check(tx)
    rid, answered, tried, rows = bad[0]
    if int(rows) < int(answered):
        return (
            f"request {rid} is recorded with {answered} answer(s) from beyond the site, but the "
            f"audit trail holds {rows} row(s) for it: audit rows were deleted"
        )
    return (
        f"request {rid} is recorded with {tried} call(s) that may have left the site, but the "
        f"audit trail holds {rows} row(s) for it: audit rows were added"
    )


def verify_rows(rows: Iterable[Row], anchor: str | None = None) -> AuditResult:
    """Walk the chain in ``seq`` order; stop at the first row that does not verify.

    With ``anchor`` (a head hash kept elsewhere), the chain must still hold a row with that
    hash. The result carries the head (last ``seq`` and ``hash``) of what verified.
    """
    prev = GENESIS
    expected_seq = 1
    n = 0
    anchored = anchor is None
    for row in rows:
        r = to_record(row)
        n += 1
        if r.seq != expected_seq:
            return AuditResult(False, n, r.seq, f"row {r.seq}: expected sequence {expected_seq}")
        if r.prev_hash != prev:
            return AuditResult(False, n, r.seq, f"row {r.seq}: prev_hash does not match")
        fields = {
            "seq": r.seq,
            "ts": r.ts,
            "request_id": r.request_id,
            "api_key": r.api_key,
            "backend": r.backend,
            "tier": r.tier,
            "boundary": r.boundary,
            "privacy": r.privacy,
            "digest": r.digest,
        }
        if row_hash(prev, fields) != r.hash:
            return AuditResult(False, n, r.seq, f"row {r.seq}: contents do not match its hash")
        prev = r.hash
        anchored = anchored or r.hash == anchor
        expected_seq += 1
    head = (expected_seq - 1, prev) if n else (None, None)
    if not anchored:
        return AuditResult(
            False,
            n,
            None,
            f"anchor {anchor} is not in the chain: rows up to it were deleted or changed",
            *head,
        )
    return AuditResult(True, n, None, "", *head)
