"""Issue 13: ``tierlm batch submit|list|status|cancel|results`` (a real CLI subprocess)
against a real gateway with API keys, and the deferred queue in ``tierlm report`` and
``GET /admin/report``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from batch_support import gateway_app, jsonl, upstream
from server_util import ADMIN_KEY, USER_KEY, sha, upstream_backend
from server_util import settings as gateway_settings

TIERLM = str(Path(sys.executable).parent / "tierlm")


def cli(*args: str, key: str | None = USER_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIERLM_API_KEY"}
    if key is not None:
        env["TIERLM_API_KEY"] = key
    return subprocess.run([TIERLM, *args], capture_output=True, text=True, timeout=300, env=env)


def test_batch_cli_and_the_deferred_report(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    with upstream() as (up, url):
        backend = upstream_backend("site", url, "m")
        keys = [
            {"name": "user", "hash": sha(USER_KEY)},
            {"name": "ops", "hash": sha(ADMIN_KEY), "admin": True},
        ]
        settings = gateway_settings(
            [backend],
            [{"name": "site", "backends": ["site"]}],
            ledger={"url": f"sqlite:///{ledger}"},
            server={"api_keys": keys},
            batch={"poll_seconds": 0.05, "slots": {"site": 4}},
        )
        with gateway_app(settings) as (_, gw):
            src = tmp_path / "in.jsonl"
            src.write_bytes(jsonl(3))
            done = cli("batch", "submit", str(src), "--wait", "--meta", "job=nightly", "--url", gw)
            assert done.returncode == 0, done.stderr
            batch_id, status, counts = done.stdout.split()[:3]
            assert status == "completed" and counts == "3/3"
            listed = cli("batch", "list", "--url", gw)
            assert listed.returncode == 0 and batch_id in listed.stdout
            shown = json.loads(cli("batch", "status", batch_id, "--json", "--url", gw).stdout)
            assert shown["metadata"] == {"job": "nightly"}
            out = tmp_path / "out.jsonl"
            got = cli("batch", "results", batch_id, "-o", str(out), "--url", gw)
            assert got.returncode == 0 and got.stdout.strip() == f"3 lines written to {out}"
            ids = [json.loads(x)["custom_id"] for x in out.read_text().splitlines()]
            assert ids == ["req-0", "req-1", "req-2"]
            no_errors = cli("batch", "results", batch_id, "--errors", "--url", gw)
            assert no_errors.returncode == 2
            assert no_errors.stderr.startswith(f"error: batch {batch_id} has no error file")
            unknown = cli("batch", "status", "batch-nope", "--url", gw)
            assert unknown.returncode == 2 and "no batch 'batch-nope'" in unknown.stderr
            other = cli("batch", "status", batch_id, "--url", gw, key="wrong")
            assert other.returncode == 2 and "invalid API key" in other.stderr
            bad = tmp_path / "bad.jsonl"
            bad.write_text('{"custom_id": "a"}\n')
            refused = cli("batch", "submit", str(bad), "--url", gw)
            assert refused.returncode == 2 and "line 1: url must be" in refused.stderr
            report = httpx.get(
                gw + "/admin/report", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
            ).json()
    assert report["deferred"]["done"] == 3 and report["deferred"]["waiting"] == 0
    assert report["deferred"]["batches"] == {"completed": 1}
    config = tmp_path / "tierlm.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    text = cli("report", "--config", str(config))
    assert text.returncode == 0, text.stderr
    assert "deferred: 3 done, 0 waiting, 0 running, 0 failed, 0 expired, 0 cancelled" in text.stdout
    assert up.seen["line 0"] == 1
