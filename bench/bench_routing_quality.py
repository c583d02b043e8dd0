"""Routing quality and scorer latency of each complexity method, as a markdown table.

Run from the repository root (needs the training deps, scikit-learn and scipy, for the
leave-one-task-out refits, and llama-cpp-python for ``llm``)::

    .venv/bin/python bench/bench_routing_quality.py [--llm-sample 200] [--no-llm]

Test sets (see ``train/routing_data.py``):

- *held-out*: the ~20% of each task that training never reads; the shipped artefact is
  scored on it as is.
- *leave-one-task-out*: the model refitted on the training part of the other tasks, scored
  on all of the left-out task.
- *llm sample*: ``--llm-sample`` held-out prompts (an equal share of each task), where
  SmolLM2-135M rates each prompt 1-3; ``model`` and ``length`` are shown on the same sample.

Quality pairs: mistral-7b vs GPT-4 (RouterBench), OpenHermes-2.5-Mistral-7B vs Claude 2
(AlpacaEval). ``random`` is the exact expectation (APGR 0.5, CPT(p) = p).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from train import train_complexity as tc  # noqa: E402
from train.routing_data import Examples, holdout_mask, load_examples  # noqa: E402

from tierlm import evaluation as ev  # noqa: E402
from tierlm.signals.complexity import ComplexityScorer, load_scorer  # noqa: E402
from tierlm.types import ChatRequest  # noqa: E402

SMOLLM2 = REPO.parent / "shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"
Row = tuple[str, str, str, ev.Metrics]


def timed_scores(
    scorer: ComplexityScorer, texts: list[str], repeat: int
) -> tuple[list[float], list[float]]:
    """Scores, and per-decision latencies in ms (each prompt scored ``repeat`` times)."""
    reqs = [ChatRequest.from_prompt(t) for t in texts]
    scores, lat = [], []
    for r in reqs:
        for i in range(repeat):
            t0 = time.perf_counter()
            s = scorer.score(r)
            lat.append((time.perf_counter() - t0) * 1000)
            if i == 0:
                scores.append(s)
    return scores, lat


def per_task(split: str, method: str, ex: Examples, scores: np.ndarray) -> list[Row]:
    rows: list[Row] = []
    groups = [(t, ex.tasks == t) for t in np.unique(ex.tasks)]
    groups.append(("routerbench (pooled)", ex.tasks != "alpacaeval"))
    for name, m in groups:
        if m.sum() < 10:
            continue
        if method == "random":
            rows.append((split, name, method, ev.random_metrics(ex.weak[m], ex.strong[m])))
        else:
            rows.append(
                (split, name, method, ev.evaluate_scores(scores[m], ex.weak[m], ex.strong[m]))
            )
    return rows


def stratified(tasks: np.ndarray, n: int) -> np.ndarray:
    """The first ``n / #tasks`` prompts of each task (held-out prompts are in hash order)."""
    names = np.unique(tasks)
    keep = np.zeros(len(tasks), dtype=bool)
    for t in names:
        keep[np.flatnonzero(tasks == t)[: n // len(names)]] = True
    return keep


def llama_rate(path: Path) -> Callable[[list[dict[str, str]]], str]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, verbose=False)

    def rate(messages: list[dict[str, str]]) -> str:
        out = llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0.0)  # type: ignore[arg-type]
        return str(out["choices"][0]["message"]["content"] or "")  # type: ignore[index]

    return rate


def loto_rows(ex: Examples, hold: np.ndarray) -> list[Row]:
    x = tc.features(ex.texts)
    alpha = float(json_meta()["alpha"])
    rows: list[Row] = []
    for t in np.unique(ex.tasks):
        te = ex.tasks == t
        train = ~te & ~hold
        params = tc.fit(ex.subset(train), x[train], alpha)
        sub = ex.subset(te)
        for method, scores in (
            ("model", tc.score(params, x[te])),
            ("length", np.asarray([len(s) for s in sub.texts], dtype=float)),
        ):
            rows.append(
                ("leave-one-task-out", t, method, ev.evaluate_scores(scores, sub.weak, sub.strong))
            )
        rows.append(("leave-one-task-out", t, "random", ev.random_metrics(sub.weak, sub.strong)))
    return rows


def json_meta() -> dict[str, object]:
    import json

    from tierlm.signals.complexity import ARTEFACT

    meta: dict[str, object] = json.loads(ARTEFACT.read_text())["meta"]
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm-sample", type=int, default=200)
    ap.add_argument("--no-llm", action="store_true")
    ap.add_argument("--repeat", type=int, default=5, help="timings per prompt")
    args = ap.parse_args(argv)

    ex = load_examples()
    hold = holdout_mask(ex.tasks, ex.texts)
    held = ex.subset(hold)
    rows: list[Row] = []
    latency: dict[str, list[float]] = {}
    for method in ("model", "length"):
        scores, lat = timed_scores(load_scorer(method), held.texts, args.repeat)
        latency[method] = lat
        rows += per_task("held-out", method, held, np.asarray(scores))
    rows += per_task("held-out", "random", held, np.zeros(len(held.texts)))
    rows += loto_rows(ex, hold)
    if not args.no_llm and SMOLLM2.exists():
        sample = held.subset(stratified(held.tasks, args.llm_sample))
        llm = load_scorer("llm", llm_rate=llama_rate(SMOLLM2))
        for method, scorer in (
            ("llm", llm),
            ("model", load_scorer("model")),
            ("length", load_scorer("length")),
        ):
            scores, lat = timed_scores(scorer, sample.texts, 1)
            if method == "llm":
                latency["llm"] = lat
            rows += per_task(
                f"llm sample ({len(sample.texts)})", method, sample, np.asarray(scores)
            )
        rows += per_task(
            f"llm sample ({len(sample.texts)})", "random", sample, np.zeros(len(sample.texts))
        )

    print("| split | test set | method | n | APGR | CPT(50%) | CPT(80%) |")
    print("|---|---|---|---|---|---|---|")
    for split, task, method, m in rows:
        cells = [split, task, method, str(m.n), f"{m.apgr:.3f}", f"{m.cpt50:.3f}", f"{m.cpt80:.3f}"]
        print("| " + " | ".join(cells) + " |")
    print("\n| method | decisions timed | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for method, lat in latency.items():
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        print(f"| {method} | {len(lat)} | {p50:.3f} | {p90:.3f} | {p99:.3f} | {max(lat):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
