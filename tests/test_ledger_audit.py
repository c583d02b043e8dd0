"""The audit trail: every external call chained by hash; tampering is detected."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ledger_support import db_url, open_url, traffic
from tierlm.cli.audit import register
from tierlm.ledger import AttemptRecord, Ledger, RequestRecord, digest

DBS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _fill(ledger: Ledger, n: int = 400, seed: int = 1) -> int:
    recs = traffic(n, start=time.time() - 5 * 86400, seed=seed)
    for r in recs:
        ledger.record(r)
    assert ledger.flush(30)
    return sum(1 for r in recs for a in r.attempts if a.boundary == "external")


def _exec(ledger: Ledger, sql: str, params: tuple[object, ...] = ()) -> None:
    with ledger.store.transaction("budget") as tx:
        tx.q(sql, params)


@pytest.mark.parametrize("db", DBS)
def test_chain_verifies_and_tampering_is_detected(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with open_url(db_url(db, tmp_path, request), tmp_path) as ledger:
        external = _fill(ledger)
        ok = ledger.audit_verify()
        assert ok.ok and ok.rows == external > 50
        rows = ledger.audit_list(limit=1000)
        assert len(rows) == external and rows[0].seq == external  # newest first
        assert {r.boundary for r in rows} == {"external"}
        assert all(r.digest == "ab" * 32 and r.api_key in ("alice", "bob", "ci") for r in rows)

        _exec(ledger, "UPDATE audit SET backend = 'elsewhere' WHERE seq = 17")
        bad = ledger.audit_verify()
        assert (bad.ok, bad.first_bad) == (False, 17) and "hash" in bad.reason
        _exec(ledger, "UPDATE audit SET backend = 'gpt' WHERE seq = 17")
        assert ledger.audit_verify().ok  # restored exactly: verifies again

        _exec(ledger, "DELETE FROM audit WHERE seq = 30")
        bad = ledger.audit_verify()
        assert (bad.ok, bad.first_bad) == (False, 31)


def test_a_rewritten_row_with_a_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    from tierlm.ledger.audit import row_hash

    with open_url(f"sqlite:///{tmp_path / 'a.db'}", tmp_path) as ledger:
        _fill(ledger, 200)
        with ledger.store.transaction("read") as tx:
            seq, ts, rid, key, _b, tier, bnd, priv, dig, prev, _h = tx.q(
                "SELECT * FROM audit WHERE seq = 5"
            )[0]
        fields = {
            "seq": seq,
            "ts": ts,
            "request_id": rid,
            "api_key": key,
            "backend": "x",
            "tier": tier,
            "boundary": bnd,
            "privacy": priv,
            "digest": dig,
        }
        _exec(
            ledger,
            "UPDATE audit SET backend = 'x', hash = ? WHERE seq = 5",
            (row_hash(prev, fields),),
        )
        bad = ledger.audit_verify()
    assert (bad.ok, bad.first_bad) == (False, 6)


@pytest.mark.parametrize("db", DBS)
def test_two_replicas_keep_one_chain(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = db_url(db, tmp_path, request)
    a, b = open_url(url, tmp_path), open_url(url, tmp_path)
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda lg=lg, s=s: counts.append(_fill(lg, 300, s)))
        for lg, s in ((a, 1), (b, 2), (a, 3), (b, 4))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a.close()
    b.close()
    with open_url(url, tmp_path) as ledger:
        result = ledger.audit_verify()
    assert result.ok and result.rows == sum(counts) and len(counts) == 4


def test_digest_is_of_what_was_sent_never_the_content(tmp_path: Path) -> None:
    body = {"model": "gpt", "messages": [{"role": "user", "content": "quarterly numbers"}]}
    d = digest(body)
    assert d == digest(json.loads(json.dumps(body)))  # canonical: key order does not matter
    assert d == digest({"messages": body["messages"], "model": "gpt"})
    assert d != digest({**body, "model": "gpt-2"}) and len(d) == 64
    with open_url(f"sqlite:///{tmp_path / 'd.db'}", tmp_path) as ledger:
        ledger.record(
            RequestRecord(
                id="r1",
                api_key="alice",
                privacy="enhanced",
                prompt="quarterly numbers",
                attempts=[
                    AttemptRecord("local", "tiny", "process", outcome="backend_timeout"),
                    AttemptRecord("claude", "cloud", "external", "budget_exceeded", "Skipped"),
                    AttemptRecord("gpt", "cloud", "external", sent_digest=d),
                ],
            )
        )
        ledger.flush()
        (row,) = ledger.audit_list()
    assert (row.request_id, row.backend, row.privacy, row.digest) == ("r1", "gpt", "enhanced", d)
    data = b"".join(p.read_bytes() for p in tmp_path.glob("d.db*"))
    assert b"quarterly numbers" not in data


def test_audit_cli_verify_and_list(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(f"data_dir: {data_dir}\n")
    with open_url(f"sqlite:///{data_dir / 'ledger.sqlite3'}", tmp_path) as ledger:
        external = _fill(ledger, 100)
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "verify", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert f"{external} rows verified" in res.output
    res = runner.invoke(
        app, ["audit", "list", "--config", str(cfg), "--json", "--limit", "3", "--since", "30d"]
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [r["seq"] for r in rows] == [external, external - 1, external - 2]
    res = runner.invoke(app, ["audit", "list", "--config", str(cfg)])
    assert res.exit_code == 0 and "Audit trail" in res.output
    with open_url(f"sqlite:///{data_dir / 'ledger.sqlite3'}", tmp_path) as ledger:
        _exec(ledger, "UPDATE audit SET privacy = 'private' WHERE seq = 2")
    res = runner.invoke(app, ["audit", "verify", "--config", str(cfg), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.output)["first_bad"] == 2


@pytest.mark.parametrize("db", DBS)
def test_a_deleted_tail_is_found_by_the_requests_and_by_an_anchor(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with open_url(db_url(db, tmp_path, request), tmp_path) as ledger:
        external = _fill(ledger, 200)
        head = ledger.audit_head()
        assert head is not None and head[0] == external
        ok = ledger.audit_verify(anchor=head[1])
        assert ok.ok and (ok.head_seq, ok.head) == head
        with ledger.store.transaction("read") as tx:
            ((rid,),) = tx.q("SELECT request_id FROM audit WHERE seq = ?", (external,))
        _exec(ledger, "DELETE FROM audit WHERE seq = ?", (external,))
        bad = ledger.audit_verify()  # the shorter chain itself still verifies...
        assert not bad.ok and bad.first_bad is None
        assert f"request {rid} is recorded with" in bad.reason  # ...the requests disagree
        assert bad.head_seq == external - 1
        # the operator's anchor catches it even when the request rows go too
        _exec(ledger, "DELETE FROM attempts WHERE request_id = ?", (rid,))
        _exec(ledger, "DELETE FROM requests WHERE id = ?", (rid,))
        assert ledger.audit_verify().ok
        bad = ledger.audit_verify(anchor=head[1])
        assert not bad.ok and f"anchor {head[1]} is not in the chain" in bad.reason
        assert bad.head_seq == external - 1  # what the chain holds now, to compare
        assert ledger.audit_verify(anchor=ledger.audit_list(limit=1)[0].hash).ok


def test_an_audit_row_for_a_request_that_sent_nothing_is_found(tmp_path: Path) -> None:
    with open_url(f"sqlite:///{tmp_path / 'x.db'}", tmp_path) as ledger:
        _fill(ledger, 50)
        with ledger.store.transaction("read") as tx:
            ((rid,),) = tx.q("SELECT request_id FROM audit WHERE seq = 1")
        _exec(ledger, "UPDATE attempts SET boundary = 'site' WHERE request_id = ?", (rid,))
        bad = ledger.audit_verify()
    assert not bad.ok and f"request {rid} is recorded with 0 call(s)" in bad.reason


def test_audit_cli_head_and_anchor(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cfg = tmp_path / "tierlm.yaml"
    cfg.write_text(f"data_dir: {data_dir}\n")
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    with open_url(f"sqlite:///{data_dir / 'ledger.sqlite3'}", tmp_path):
        pass
    res = runner.invoke(app, ["audit", "head", "--config", str(cfg)])
    assert res.exit_code == 1 and "empty" in res.output
    with open_url(f"sqlite:///{data_dir / 'ledger.sqlite3'}", tmp_path) as ledger:
        external = _fill(ledger, 60)
    res = runner.invoke(app, ["audit", "head", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    head = json.loads(res.output)
    assert head["seq"] == external and len(head["hash"]) == 64
    plain = runner.invoke(app, ["audit", "head", "--config", str(cfg)]).output.split()
    assert plain == [str(external), head["hash"]]
    res = runner.invoke(app, ["audit", "verify", "--config", str(cfg), "--anchor", head["hash"]])
    assert res.exit_code == 0 and head["hash"] in res.output, res.output
    res = runner.invoke(app, ["audit", "verify", "--config", str(cfg), "--anchor", "f" * 64])
    assert res.exit_code == 1 and "is not in the chain" in res.output
    res = runner.invoke(app, ["audit", "verify", "--config", str(cfg), "--anchor", "abc"])
    assert res.exit_code == 2 and "64 hex digits" in res.output


def test_the_hashes_are_a_stable_format() -> None:
    """Known answers: a chain written today must verify with tomorrow's code, and by anyone
    who recomputes it (canonical JSON: sorted keys, no spaces, UTF-8 kept)."""
    from tierlm.ledger.audit import GENESIS, canonical, row_hash

    assert canonical({"b": [1, 2], "a": "ä"}) == '{"a":"ä","b":[1,2]}'
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert digest(b"abc") == digest("abc") == abc
    body = "23db571f0d8c85810e117ad89ba7ef7c991cd5ab04dc10cd0cd192b1b2fe5021"
    assert digest({"b": [1, 2], "a": "ä"}) == body
    first = "fc6cee09194dd2578bd7664604fcb72a539066fd34544cea0009c43eb6cdc289"
    assert row_hash(GENESIS, {"a": 1}) == first


def test_verify_says_how_far_it_got(tmp_path: Path) -> None:
    with open_url(f"sqlite:///{tmp_path / 'v.db'}", tmp_path) as ledger:
        empty = ledger.audit_verify()
        assert (empty.ok, empty.rows, empty.reason, empty.head_seq, empty.head) == (
            True,
            0,
            "",
            None,
            None,
        )
        external = _fill(ledger, 100)
        ok = ledger.audit_verify()
        assert (ok.ok, ok.rows, ok.first_bad, ok.reason) == (True, external, None, "")
        _exec(ledger, "DELETE FROM audit WHERE seq = 9")
        bad = ledger.audit_verify()
        assert (bad.rows, bad.first_bad, bad.reason) == (9, 10, "row 10: expected sequence 9")
        assert (bad.head_seq, bad.head) == (None, None)  # nothing after a break is vouched for
        _exec(ledger, "UPDATE audit SET backend = 'x' WHERE seq = 3")
        bad = ledger.audit_verify(anchor="f" * 64)
        assert (bad.rows, bad.first_bad) == (3, 3) and bad.reason.endswith("match its hash")


def test_an_audit_row_carries_the_time_of_its_attempt(tmp_path: Path) -> None:
    with open_url(f"sqlite:///{tmp_path / 't.db'}", tmp_path) as ledger:
        ledger.record(
            RequestRecord(
                id="r1",
                ts=1_000.0,
                attempts=[AttemptRecord("gpt", "cloud", "external", ts=1_234.5, sent_digest="d")],
            )
        )
        ledger.flush()
        (row,) = ledger.audit_list()
    assert row.ts == 1_234.5


@pytest.mark.parametrize("db", DBS)
def test_the_attempts_digests_catch_a_rewritten_newest_row(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The newest row rewritten with its hash recomputed still chains (nothing follows it);
    the attempt kept the digest of what it sent, and the cross-check compares the two."""
    from tierlm.ledger.audit import row_hash

    with open_url(db_url(db, tmp_path, request), tmp_path) as ledger:
        _fill(ledger, 60)
        assert ledger.audit_verify().ok
        row = ledger.audit_list(limit=1)[0]
        fields = {k: v for k, v in row.to_dict().items() if k not in ("prev_hash", "hash")}
        for dig, why in (("cd" * 32, "deleted or changed"), (row.digest, "")):
            fields["digest"] = dig
            _exec(
                ledger,
                "UPDATE audit SET digest = ?, hash = ? WHERE seq = ?",
                (dig, row_hash(row.prev_hash, fields), row.seq),
            )
            result = ledger.audit_verify()
            assert result.ok is (why == "") and why in result.reason, result
