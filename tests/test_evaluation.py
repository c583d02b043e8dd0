"""Routing metrics on outcome tables with known answers, the loaders, and ``tierlm eval``."""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import ROUTING_DATA
from tierlm import evaluation as ev
from tierlm.cli.eval_cmd import register

WEAK = np.array([1.0, 1.0, 0.0, 0.0])
STRONG = np.array([1.0, 1.0, 1.0, 1.0])


def test_oracle_curve_and_metrics_by_hand() -> None:
    # the two prompts the weak model fails go to the strong model first
    scores = np.array([0.1, 0.2, 0.9, 0.8])
    curve = ev.quality_cost_curve(scores, WEAK, STRONG)
    assert curve.share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.quality.tolist() == [0.5, 0.75, 1.0, 1.0, 1.0]
    m = ev.evaluate_scores(scores, WEAK, STRONG)
    # PGR = [0, .5, 1, 1, 1]; trapezoid over quarters
    assert m.apgr == pytest.approx(0.75)
    assert m.cpt50 == pytest.approx(0.25)
    assert m.cpt80 == pytest.approx(0.4)  # 0.25 + (0.8 - 0.5) / (1 - 0.5) * 0.25


def test_worst_router_by_hand() -> None:
    m = ev.evaluate_scores([0.9, 0.8, 0.1, 0.2], WEAK, STRONG)
    assert m.apgr == pytest.approx(0.25)
    assert m.cpt50 == pytest.approx(0.75)
    assert m.cpt80 == pytest.approx(0.9)


def test_tied_scores_move_together_and_equal_random() -> None:
    curve = ev.quality_cost_curve([0.5] * 4, WEAK, STRONG)
    assert curve.share.tolist() == [0.0, 1.0]
    m = ev.evaluate_scores([0.5] * 4, WEAK, STRONG)
    assert (m.apgr, m.cpt50, m.cpt80) == pytest.approx((0.5, 0.5, 0.8))
    assert ev.random_metrics(WEAK, STRONG).apgr == 0.5


def test_random_router_is_near_half_on_a_large_table() -> None:
    rng = np.random.default_rng(1)
    weak = (rng.random(20_000) < 0.5).astype(float)
    strong = (rng.random(20_000) < 0.8).astype(float)
    m = ev.evaluate_scores(ev.random_scores(20_000, seed=3), weak, strong)
    assert m.apgr == pytest.approx(0.5, abs=0.03)
    assert m.cpt50 == pytest.approx(0.5, abs=0.05)
    oracle = ev.evaluate_scores(ev.oracle_scores(weak, strong), weak, strong)
    assert oracle.apgr > 0.9
    assert oracle.cpt80 < 0.5


def test_no_gap_gives_nan() -> None:
    m = ev.evaluate_scores([0.1, 0.2], [1.0, 1.0], [1.0, 0.0])
    assert math.isnan(m.apgr)
    assert math.isnan(m.cpt50)


def test_cost_curve_adds_dollars() -> None:
    curve = ev.quality_cost_curve(
        [0.9, 0.1], [0.0, 1.0], [1.0, 1.0], np.array([0.001, 0.001]), np.array([0.03, 0.05])
    )
    assert curve.cost.tolist() == pytest.approx([0.002, 0.031, 0.08])


def test_quality_for_threshold_inverts_the_policy_rule() -> None:
    assert ev.quality_for_threshold(0.35, 0.35) == pytest.approx(0.5)
    assert ev.quality_for_threshold(0.0, 1.0) == 1.0
    assert ev.quality_for_threshold(1.0, 0.0) == 0.0
    rng = np.random.default_rng(0)
    checked = 0
    for c, t, s in rng.random((500, 3)) * [1.0, 0.6, 0.5] + [0.0, 0.2, 0.25]:
        q = ev.quality_for_threshold(t, s)
        if 0.0 < q < 1.0:  # the policy: a tier of strength s takes c iff c <= s + 0.5 - q
            assert (c <= s + 0.5 - q + 1e-12) == (c <= t + 1e-12)
            checked += 1
    assert checked > 250  # the inversion was checked on most draws, not skipped


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3, 0.75, 1.0])
def test_calibrate_threshold_hits_the_share(share: float) -> None:
    scores = np.random.default_rng(2).random(1000)
    t = ev.calibrate_threshold(scores, share)
    assert np.mean(scores > t) == pytest.approx(share, abs=0.002)


def test_strip_common_prefix_at_a_line_break() -> None:
    shots = "Q: What is 1+1?\nA: 2\n\nQ: What is 2+2?\nA: 4\n\n"
    texts = [shots + "Q: 3+3?\nA:", shots + "Q: 30+30?\nA:"]
    assert ev.strip_common_prefix(texts) == ["Q: 3+3?\nA:", "Q: 30+30?\nA:"]
    assert ev.strip_common_prefix(["Write a b", "Write a c"]) == ["Write a b", "Write a c"]


def _write_routerbench(path, rows: list[dict[str, str]]) -> None:  # type: ignore[no-untyped-def]
    fields = ["sample_id", "prompt", "eval_name", "m7b", "big", "m7b|total_cost", "big|total_cost"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_load_routerbench_drops_empty_rows_and_strips_shots(tmp_path) -> None:  # type: ignore[no-untyped-def]
    shots = "Example one is long enough to be examples.\nAnswer: A\n\n"
    rows = [
        {"prompt": repr([shots + f"Question {i}?"]), "m7b": str(i % 2), "big": "1"}
        | {
            "sample_id": str(i),
            "eval_name": "toy",
            "m7b|total_cost": "0.0",
            "big|total_cost": "0.01",
        }
        for i in range(4)
    ]
    rows[3]["m7b"] = ""
    path = tmp_path / "toy.csv"
    _write_routerbench(path, rows)
    out = ev.load_routerbench(path, "m7b", "big")
    assert out.texts == ["Question 0?", "Question 1?", "Question 2?"]
    assert out.weak.tolist() == [0.0, 1.0, 0.0]
    assert out.strong_cost is not None and out.strong_cost.sum() == pytest.approx(0.03)
    with pytest.raises(ValueError, match="choose --weak/--strong"):
        ev.load_routerbench(path, "nope", "big")


def test_load_alpacaeval_excludes_the_null_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    instr = tmp_path / "instructions.csv"
    instr.write_text("instruction_id,instruction\n0,Say hi\n1,Write a poem\n")
    long = tmp_path / "long.csv.gz"
    with gzip.open(long, "wt") as f:
        f.write("instruction_id,generator,win\n")
        for i in ("0", "1"):
            f.write(f"{i},small,0.1\n{i},large,0.4\n{i},example,0.9\n")
    out = ev.load_outcomes(long, instructions=instr, weak="small", strong="large")
    assert out.texts == ["Say hi", "Write a poem"]
    assert out.strong.tolist() == [0.4, 0.4]
    with pytest.raises(ValueError, match="unknown generator"):
        ev.load_alpacaeval(long, instr, "example", "large")


# ------------------------------------------------------------------------------ the CLI


@pytest.fixture
def mbpp_slice(tmp_path):  # type: ignore[no-untyped-def]
    src = ROUTING_DATA / "routerbench" / "mbpp_train.csv"
    if not src.exists():
        pytest.skip(f"shared routing data not found at {src}")
    csv.field_size_limit(2**31 - 1)
    with src.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for _, r in zip(range(120), reader, strict=False)]
        fields = reader.fieldnames
    out = tmp_path / "mbpp_slice.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields or []))
        w.writeheader()
        w.writerows(rows)
    return out


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def noop() -> None:  # a second command keeps typer from collapsing to one
        """nothing"""

    return app


def test_cli_eval_json_plot_and_calibration(mbpp_slice, tmp_path) -> None:  # type: ignore[no-untyped-def]
    png = tmp_path / "out" / "curve.png"
    res = CliRunner().invoke(
        _app(), ["eval", str(mbpp_slice), "--json", "--plot", str(png), "--calibrate", "0.3"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["file_rows"] == 120
    assert report["weak"] == "mistralai/mistral-7b-chat"
    assert set(report["metrics"]) == {"model", "random", "oracle"}
    model = report["metrics"]["model"]
    assert 0.0 < model["apgr"] < 1.0
    assert report["metrics"]["oracle"]["apgr"] > model["apgr"]
    assert report["curve"][0]["strong_share"] == 0.0
    assert report["curve"][-1]["quality"] == pytest.approx(report["strong_quality"])
    assert report["curve"][-1]["dollars"] > report["curve"][0]["dollars"] > 0
    cal = report["calibration"]
    assert cal["measured_share"] == pytest.approx(0.3, abs=0.05)
    assert cal["quality"] == pytest.approx(ev.quality_for_threshold(cal["threshold"], 0.35))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5_000


def test_cli_eval_table_and_errors(mbpp_slice, tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    res = runner.invoke(_app(), ["eval", str(mbpp_slice), "--method", "length", "--limit", "50"])
    assert res.exit_code == 0, res.output
    assert "APGR" in res.output and "CPT(80%)" in res.output and "length" in res.output
    assert "50 prompts" in res.output
    bad = runner.invoke(_app(), ["eval", str(mbpp_slice), "--method", "magic"])
    assert bad.exit_code == 2
    bad = runner.invoke(_app(), ["eval", str(mbpp_slice), "--weak", "nobody"])
    assert bad.exit_code == 2
    bad = runner.invoke(_app(), ["eval", str(mbpp_slice), "--method", "llm"])
    assert bad.exit_code == 2


def test_cli_eval_alpacaeval(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = ROUTING_DATA / "alpacaeval"
    if not src.exists():
        pytest.skip("shared routing data not found")
    shutil.copy(src / "instructions.csv", tmp_path / "instructions.csv")
    shutil.copy(src / "per_prompt_preferences_long.csv.gz", tmp_path / "long.csv.gz")
    res = CliRunner().invoke(_app(), ["eval", str(tmp_path / "long.csv.gz"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["file_rows"] == 805
    assert report["strong"] == ev.ALPACA_STRONG
    assert report["dollars_known"] is False
