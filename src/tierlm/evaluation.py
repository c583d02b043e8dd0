"""Routing quality metrics, RouteLLM style, and loaders for per-model outcome files.

A *router score* is one number per prompt, higher = send it to the strong model. Sweeping a
threshold over the scores traces a **quality-vs-cost curve**: for each share ``x`` of prompts
sent to the strong model (the highest-scoring ones), the mean quality of the routed answers.
On that curve, as RouteLLM defines them (``routellm/evals/evaluate.py``):

- **PGR** at a point is ``(quality - q_weak) / (q_strong - q_weak)``, the share of the
  weak-to-strong performance gap recovered.
- **APGR** is the area under the PGR curve over ``x`` in [0, 1] (trapezoid rule). A random
  router scores 0.5 in expectation; the oracle is the upper bound.
- **CPT(p)** ("call-performance threshold") is the smallest share of strong-model calls at
  which the router reaches ``q_weak + p * (q_strong - q_weak)``; CPT(50%) and CPT(80%) are the
  usual two. A random router needs ``p`` itself.

Unlike RouteLLM, which samples ten quantile thresholds, the curve here has one point per
distinct score (ties are routed together, which equals the expected value of a random
tie-break when interpolated), so the numbers do not depend on a bin count.

Outcome files: RouterBench CSVs (one 0/1 column per model, ``<model>|total_cost`` in USD,
``prompt`` as a Python-list literal) and the AlpacaEval long format (one row per instruction
and generator, ``win`` in [0, 1]) plus its ``instructions.csv``. Shared few-shot prefixes of a
task are stripped, so scores describe the question rather than the examples.
"""

from __future__ import annotations

import ast
import csv
import gzip
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Default pair for RouterBench files: a 7B model (tiny/edge class) against GPT-4.
ROUTERBENCH_WEAK = "mistralai/mistral-7b-chat"
ROUTERBENCH_STRONG = "gpt-4-1106-preview"
#: Default pair for AlpacaEval: a Mistral-7B fine-tune against Claude 2 (cloud class).
ALPACA_WEAK = "OpenHermes-2.5-Mistral-7B"
ALPACA_STRONG = "claude-2"
#: AlpacaEval generators never used: ``example`` is an adversarial null model.
ALPACA_EXCLUDED = frozenset({"example"})


def clamp01(x: float) -> float:
    """``x`` clipped to [0, 1]."""
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else float(x)


def quality_for_threshold(threshold: float, tier_strength: float) -> float:
    """The request ``quality`` bar that makes a tier of ``tier_strength`` take exactly the
    requests with ``complexity <= threshold``.

    The policy lets a tier of strength ``s`` serve a request iff
    ``complexity <= s + (0.5 - quality)``; this is that rule solved for ``quality``.
    """
    return clamp01(tier_strength + 0.5 - threshold)


@dataclass(frozen=True)
class Outcomes:
    """Per-prompt results of a weak and a strong model (quality in [0, 1]; cost in USD)."""

    texts: list[str]
    tasks: list[str]
    weak: FloatArray
    strong: FloatArray
    weak_name: str
    strong_name: str
    weak_cost: FloatArray | None = None
    strong_cost: FloatArray | None = None
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, mask: npt.NDArray[np.bool_]) -> Outcomes:
        """The rows where ``mask`` is true."""
        idx = np.flatnonzero(mask)
        return Outcomes(
            texts=[self.texts[i] for i in idx],
            tasks=[self.tasks[i] for i in idx],
            weak=self.weak[idx],
            strong=self.strong[idx],
            weak_name=self.weak_name,
            strong_name=self.strong_name,
            weak_cost=None if self.weak_cost is None else self.weak_cost[idx],
            strong_cost=None if self.strong_cost is None else self.strong_cost[idx],
            ids=None if self.ids is None else [self.ids[i] for i in idx],
        )


@dataclass(frozen=True)
class Curve:
    """A quality-vs-cost curve: ``share`` of strong calls (ascending, 0..1) -> ``quality``."""

    share: FloatArray
    quality: FloatArray
    cost: FloatArray  # total USD for the whole set at each point (share of calls if unknown)
    thresholds: FloatArray  # route to strong iff score >= threshold (+inf at share 0)


@dataclass(frozen=True)
class Metrics:
    """Summary of one router on one outcome set."""

    apgr: float
    cpt50: float
    cpt80: float
    weak_quality: float
    strong_quality: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "apgr": self.apgr,
            "cpt50": self.cpt50,
            "cpt80": self.cpt80,
            "weak_quality": self.weak_quality,
            "strong_quality": self.strong_quality,
            "n": self.n,
        }


def _as_array(values: Sequence[float] | FloatArray) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


def quality_cost_curve(
    scores: Sequence[float] | FloatArray,
    weak: Sequence[float] | FloatArray,
    strong: Sequence[float] | FloatArray,
    weak_cost: FloatArray | None = None,
    strong_cost: FloatArray | None = None,
) -> Curve:
    """The curve of routing the highest-scoring prompts to the strong model.

    One point per distinct score, plus the all-weak point at share 0; tied prompts move
    together.
    """
    s, w, g = _as_array(scores), _as_array(weak), _as_array(strong)
    n = len(s)
    if n == 0 or len(w) != n or len(g) != n:
        raise ValueError("scores, weak and strong must be non-empty and of equal length")
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    gain = np.concatenate([[0.0], np.cumsum((g - w)[order])])
    # keep only the cut points between different scores (and the end)
    cut = np.concatenate([[0], np.flatnonzero(np.diff(s_sorted) != 0) + 1, [n]])
    cut = np.unique(cut)
    share = cut / n
    quality = (w.sum() + gain[cut]) / n
    if weak_cost is not None and strong_cost is not None:
        wc, sc = _as_array(weak_cost), _as_array(strong_cost)
        cost = wc.sum() + np.concatenate([[0.0], np.cumsum((sc - wc)[order])])[cut]
    else:
        cost = share.copy()
    thresholds = np.concatenate([[np.inf], s_sorted[cut[1:] - 1]])
    return Curve(share=share, quality=quality, cost=cost, thresholds=thresholds)


def apgr(curve: Curve, weak_quality: float, strong_quality: float) -> float:
    """Average performance gap recovered: area under PGR(share) over [0, 1]."""
    gap = strong_quality - weak_quality
    if gap <= 0:
        return math.nan
    pgr = (curve.quality - weak_quality) / gap
    x = curve.share
    return float(np.sum((x[1:] - x[:-1]) * (pgr[1:] + pgr[:-1]) / 2.0))


def cpt(curve: Curve, weak_quality: float, strong_quality: float, target: float) -> float:
    """Smallest share of strong calls that recovers ``target`` (0..1) of the quality gap."""
    gap = strong_quality - weak_quality
    if gap <= 0:
        return math.nan
    goal = weak_quality + target * gap
    q, x = curve.quality, curve.share
    hit = np.flatnonzero(q >= goal - 1e-12)
    if len(hit) == 0:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    q0, q1 = q[i - 1], q[i]
    frac = (goal - q0) / (q1 - q0) if q1 != q0 else 1.0
    return float(x[i - 1] + frac * (x[i] - x[i - 1]))


def evaluate_scores(
    scores: Sequence[float] | FloatArray,
    weak: Sequence[float] | FloatArray,
    strong: Sequence[float] | FloatArray,
) -> Metrics:
    """APGR, CPT(50%) and CPT(80%) of one router's scores."""
    w, g = _as_array(weak), _as_array(strong)
    curve = quality_cost_curve(scores, w, g)
    qw, qs = float(w.mean()), float(g.mean())
    return Metrics(
        apgr=apgr(curve, qw, qs),
        cpt50=cpt(curve, qw, qs, 0.5),
        cpt80=cpt(curve, qw, qs, 0.8),
        weak_quality=qw,
        strong_quality=qs,
        n=len(w),
    )


def random_scores(n: int, seed: int = 0) -> FloatArray:
    """Scores of a random router (APGR 0.5 and CPT(p) = p in expectation)."""
    return np.random.default_rng(seed).random(n)


def random_metrics(weak: FloatArray, strong: FloatArray) -> Metrics:
    """The random router's expected metrics (exact, no sampling)."""
    qw, qs = float(np.mean(weak)), float(np.mean(strong))
    ok = qs > qw
    return Metrics(
        apgr=0.5 if ok else math.nan,
        cpt50=0.5 if ok else math.nan,
        cpt80=0.8 if ok else math.nan,
        weak_quality=qw,
        strong_quality=qs,
        n=len(weak),
    )


def random_curve(
    weak: FloatArray,
    strong: FloatArray,
    weak_cost: FloatArray | None = None,
    strong_cost: FloatArray | None = None,
) -> Curve:
    """The random router's expected curve: a straight line from all-weak to all-strong."""
    w, g = _as_array(weak), _as_array(strong)
    if weak_cost is not None and strong_cost is not None:
        cost = _as_array([np.sum(weak_cost), np.sum(strong_cost)])
    else:
        cost = _as_array([0.0, 1.0])
    return Curve(
        share=_as_array([0.0, 1.0]),
        quality=_as_array([w.mean(), g.mean()]),
        cost=cost,
        thresholds=_as_array([np.inf, -np.inf]),
    )


def oracle_scores(weak: FloatArray, strong: FloatArray) -> FloatArray:
    """Scores of the oracle router: what the strong model gains on each prompt."""
    return _as_array(strong) - _as_array(weak)


def calibrate_threshold(scores: Sequence[float] | FloatArray, share: float) -> float:
    """The complexity threshold above which ``share`` (0..1) of these prompts escalate.

    Prompts with ``score > threshold`` escalate; the result is the ``1 - share`` quantile.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    s = _as_array(scores)
    if share <= 0.0:
        return float(s.max())
    return float(np.quantile(s, 1.0 - share, method="higher") - 1e-9)


# --------------------------------------------------------------------------- loaders


def strip_common_prefix(texts: Sequence[str], min_len: int = 40) -> list[str]:
    """Remove what every text shares at the start (few-shot examples), cut at a line break.

    Prefixes shorter than ``min_len`` characters are kept (they are instructions, not
    examples). A single text is returned unchanged.
    """
    if len(texts) < 2:
        return list(texts)
    prefix = os.path.commonprefix(list(texts))  # noqa: RUF071 (characters, not paths)
    cut = prefix.rfind("\n")
    if cut + 1 < min_len:
        return list(texts)
    return [t[cut + 1 :] for t in texts]


def _parse_prompt(raw: str) -> str:
    if raw.startswith("["):
        try:
            parts = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
        if isinstance(parts, list):
            return "".join(str(p) for p in parts)
    return raw


def _float_or_nan(value: str | None) -> float:
    if value is None or value.strip() == "":
        return math.nan
    return float(value)


def routerbench_models(fieldnames: Iterable[str]) -> list[str]:
    """Model columns of a RouterBench CSV: those with a ``<model>|total_cost`` column."""
    names = list(fieldnames)
    return [n for n in names if f"{n}|total_cost" in names]


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def load_routerbench(
    paths: Path | Sequence[Path],
    weak: str | None = None,
    strong: str | None = None,
    *,
    strip_prefix: bool = True,
) -> Outcomes:
    """Load one or more RouterBench-format CSVs; rows missing either score are dropped."""
    w, s = weak or ROUTERBENCH_WEAK, strong or ROUTERBENCH_STRONG
    texts: list[str] = []
    tasks: list[str] = []
    ids: list[str] = []
    cols: dict[str, list[float]] = {"w": [], "s": [], "wc": [], "sc": []}
    for path in [paths] if isinstance(paths, Path) else paths:
        fields, rows = _read_csv(path)
        models = routerbench_models(fields)
        if w not in models or s not in models:
            raise ValueError(f"{path}: choose --weak/--strong among: {', '.join(models)}")
        keep = [r for r in rows if r[w].strip() != "" and r[s].strip() != ""]
        prompts = [_parse_prompt(r["prompt"]) for r in keep]
        row_tasks = [r.get("eval_name") or path.stem for r in keep]
        if strip_prefix:
            for task in dict.fromkeys(row_tasks):
                idx = [i for i, t in enumerate(row_tasks) if t == task]
                stripped = strip_common_prefix([prompts[i] for i in idx])
                for i, text in zip(idx, stripped, strict=True):
                    prompts[i] = text
        texts += prompts
        tasks += row_tasks
        ids += [r.get("sample_id") or str(i) for i, r in enumerate(keep)]
        for r in keep:
            cols["w"].append(float(r[w]))
            cols["s"].append(float(r[s]))
            cols["wc"].append(_float_or_nan(r.get(f"{w}|total_cost")))
            cols["sc"].append(_float_or_nan(r.get(f"{s}|total_cost")))
    wc, sc = _as_array(cols["wc"]), _as_array(cols["sc"])
    has_cost = len(wc) > 0 and not (np.isnan(wc).any() or np.isnan(sc).any())
    return Outcomes(
        texts=texts,
        tasks=tasks,
        weak=_as_array(cols["w"]),
        strong=_as_array(cols["s"]),
        weak_name=w,
        strong_name=s,
        weak_cost=wc if has_cost else None,
        strong_cost=sc if has_cost else None,
        ids=ids,
    )


def load_alpaca_wins(long_path: Path) -> dict[str, dict[str, float]]:
    """``generator -> instruction_id -> win`` from the AlpacaEval long file."""
    _, rows = _read_csv(long_path)
    wins: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["generator"] in ALPACA_EXCLUDED or r["win"].strip() == "":
            continue
        wins.setdefault(r["generator"], {})[r["instruction_id"]] = float(r["win"])
    return wins


def load_instructions(path: Path) -> dict[str, str]:
    """``instruction_id -> instruction`` from AlpacaEval's ``instructions.csv``."""
    _, rows = _read_csv(path)
    return {r["instruction_id"]: r["instruction"] for r in rows}


def load_alpacaeval(
    long_path: Path,
    instructions_path: Path,
    weak: str | None = None,
    strong: str | None = None,
) -> Outcomes:
    """AlpacaEval as outcomes: quality is the judge's ``win`` against the reference answer."""
    wins = load_alpaca_wins(long_path)
    instructions = load_instructions(instructions_path)
    w, s = weak or ALPACA_WEAK, strong or ALPACA_STRONG
    for name in (w, s):
        if name not in wins:
            raise ValueError(f"unknown generator {name!r}; choose among: {', '.join(wins)}")
    ids = [i for i in instructions if i in wins[w] and i in wins[s]]
    return Outcomes(
        texts=[instructions[i] for i in ids],
        tasks=["alpacaeval"] * len(ids),
        weak=_as_array([wins[w][i] for i in ids]),
        strong=_as_array([wins[s][i] for i in ids]),
        weak_name=w,
        strong_name=s,
        ids=ids,
    )


def load_outcomes(
    path: Path,
    *,
    instructions: Path | None = None,
    weak: str | None = None,
    strong: str | None = None,
) -> Outcomes:
    """Load a RouterBench CSV, or an AlpacaEval long ``.csv.gz`` (instructions beside it)."""
    if path.name.endswith(".csv.gz") or instructions is not None:
        instr = instructions or path.with_name("instructions.csv")
        return load_alpacaeval(path, instr, weak, strong)
    return load_routerbench(path, weak, strong)
