"""`tierlm learn` on a generated month of outcomes: answers the cascade accepted or kept, with
feedback that says they were good only above a score of 0.6; the learned threshold moves
there, is measured on the later half, and is used once written."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tierlm import Router
from tierlm.config import load_settings
from tierlm.ledger import AttemptRecord, RequestRecord, open_ledger

TIERLM = str(Path(sys.executable).with_name("tierlm"))
DAY = 86400.0


def _config(tmp_path: Path) -> Path:
    cfg = {
        "data_dir": str(tmp_path),
        "backends": [
            {
                "name": "tiny",
                "kind": "openai",
                "url": "http://127.0.0.1:9/v1",
                "model": "t",
                "boundary": "site",
            },
            {
                "name": "cloud",
                "kind": "openai",
                "url": "http://127.0.0.1:9/v1",
                "model": "c",
                "boundary": "site",
            },
        ],
        "tiers": [
            {"name": "tiny", "backends": ["tiny"], "cascade": {"mode": "buffer"}},
            {"name": "cloud", "backends": ["cloud"]},
        ],
    }
    path = tmp_path / "tierlm.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _month(path: Path) -> None:
    """600 judged tiny answers over 30 days; good iff score >= 0.6, with 5% label noise."""
    rng = random.Random(7)
    now = time.time()
    with open_ledger(load_settings(path, env={})) as ledger:
        ids = []
        for i in range(600):
            score = rng.random()
            ts = now - 30 * DAY + (i + 0.5) * (29 * DAY / 600)
            rec = RequestRecord(
                ts=ts,
                tier="tiny",
                backend="tiny",
                outcome="ok",
                attempts=[
                    AttemptRecord(
                        backend="tiny",
                        tier="tiny",
                        boundary="site",
                        ts=ts,
                        judge_score=round(score, 4),
                        judge_decision="accept" if score >= 0.4 else "keep",
                    )
                ],
            )
            ledger.record(rec)
            good = (score >= 0.6) != (rng.random() < 0.05)
            ids.append((rec.id, good))
        ledger.flush()
        for rid, good in ids:
            ledger.add_feedback(rid, thumbs="up" if good else "down")


def _learn(path: Path, *extra: str) -> dict:
    r = subprocess.run(
        [TIERLM, "learn", "--config", str(path), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_learn_moves_the_threshold_to_where_feedback_turns_good(tmp_path: Path) -> None:
    path = _config(tmp_path)
    _month(path)
    out = _learn(path)
    (fit,) = out["tiers"]
    before, after = fit["before"], fit["after"]
    assert fit["tier"] == "tiny" and fit["rated"] == 600
    assert before["threshold"] == 0.4  # the judge's default: nothing configured or learned
    assert 0.55 <= after["threshold"] <= 0.65, after
    assert after["agreement"] > before["agreement"] + 0.1
    assert after["bad_accepted"] < before["bad_accepted"]
    assert out["written"] is None and not (tmp_path / "calibration.json").exists()

    written = _learn(path, "--write")["written"]
    assert written == str(tmp_path / "calibration.json")
    with Router(load_settings(path, env={})) as router:
        assert router.cascade.learned == {"tiny": after["threshold"]}
    again = _learn(path)["tiers"][0]
    assert again["before"]["threshold"] == after["threshold"]  # now the current one
    report = subprocess.run(
        [TIERLM, "report", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    table = report.stdout[report.stdout.index("Cascade: judged answers per tier") :]
    assert re.search(r"tiny\s*│\s*600\s*│\s*\d+ \(\d+%\)", table), table  # acceptance


def test_learn_says_when_there_is_nothing_to_learn_from(tmp_path: Path) -> None:
    path = _config(tmp_path)
    out = _learn(path)
    assert out == {"tiers": [], "skipped": [], "written": None}
    r = subprocess.run(
        [TIERLM, "learn", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0 and "nothing to learn from yet" in r.stdout


def test_a_damaged_calibration_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _config(tmp_path)
    (tmp_path / "calibration.json").write_text("{not json", encoding="utf-8")
    r = subprocess.run(
        [TIERLM, "learn", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2 and "calibration.json" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
