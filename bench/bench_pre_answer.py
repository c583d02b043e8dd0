"""Pre-answer difficulty scores side by side: tierlm's default, prompt length and LiteLLM's
rule-based ``complexity_router`` (``bench/litellm_rules.py``). Prints markdown.

Run from the repository root (needs the training deps, scikit-learn and scipy, for the
leave-one-task-out refits)::

    .venv/bin/python bench/bench_pre_answer.py [--data ../shared/data/routing]

- *Leave-one-task-out APGR* on the shared routing data (``train/routing_data.py``): the
  default model refitted on the other tasks' training part (``train/train_complexity.py``),
  scored on all of the left-out task; length and LiteLLM need no training.
- *A person's notion of hard*: Spearman correlation with the labels of
  ``tests/data/difficulty_prompts.jsonl`` (105 plant and office requests written for this
  bench, 35 each simple / medium / hard), and the mean score per label.
- *Simple stays simple*: the tier ``full-stack`` picks for "What is the capital of France?".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "bench")]

from litellm_rules import litellm_score  # noqa: E402
from train import train_complexity as tc  # noqa: E402
from train.routing_data import DEFAULT_DATA, holdout_mask, load_examples  # noqa: E402

from tierlm import evaluation as ev  # noqa: E402
from tierlm.signals.complexity import LengthScorer, load_scorer  # noqa: E402
from tierlm.types import ChatRequest  # noqa: E402

LABELLED = REPO / "tests/data/difficulty_prompts.jsonl"
FULL_STACK_ENV = {
    "TIERLM_SITE_URL": "http://127.0.0.1:9/v1",
    "TIERLM_SITE_MODEL": "llama-70b",
    "OPENAI_API_KEY": "sk-placeholder",
    "ANTHROPIC_API_KEY": "sk-ant-placeholder",
}
Array = npt.NDArray[np.float64]


def ranks(x: Array) -> Array:
    """Ranks 1..n, ties averaged."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        m = x == v
        r[m] = r[m].mean()
    return r


def spearman(a: Array, b: Array) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def scorers() -> dict[str, Callable[[str], float]]:
    model, length = load_scorer("model"), LengthScorer()
    return {
        "length": lambda t: length.score(ChatRequest.from_prompt(t)),
        "litellm rules": litellm_score,
        "tierlm default": lambda t: model.score(ChatRequest.from_prompt(t)),
    }


def labelled_table() -> None:
    rows = [json.loads(x) for x in LABELLED.read_text(encoding="utf-8").splitlines() if x]
    labels = np.asarray([r["label"] for r in rows], dtype=np.float64)
    print(f"\n### Labelled plant/office requests ({len(rows)}; 1 simple, 2 medium, 3 hard)\n")
    print("| score | Spearman | mean simple | mean medium | mean hard |")
    print("|---|---:|---:|---:|---:|")
    for name, fn in scorers().items():
        s = np.asarray([fn(r["prompt"]) for r in rows])
        means = " | ".join(f"{s[labels == k].mean():.3f}" for k in (1, 2, 3))
        print(f"| {name} | {spearman(s, labels):.3f} | {means} |")


def loto_table(data: Path) -> None:
    ex = load_examples(data)
    x = tc.features(ex.texts)
    hold = holdout_mask(ex.tasks, ex.texts)
    alpha = float(json.loads(tc.ARTEFACT.read_text(encoding="utf-8"))["meta"]["alpha"])
    print("\n### Leave-one-task-out APGR (weak = 7B-class answer, strong = cloud)\n")
    print("| held-out task | n | length | litellm rules | tierlm default (refitted) |")
    print("|---|---:|---:|---:|---:|")
    for t in np.unique(ex.tasks):
        te = ex.tasks == t
        train = ~te & ~hold
        params = tc.fit(ex.subset(train), x[train], alpha)
        texts = [ex.texts[i] for i in np.flatnonzero(te)]
        cols = [
            np.asarray([len(s) for s in texts], dtype=np.float64),
            np.asarray([litellm_score(s) for s in texts]),
            tc.score(params, x[te]),
        ]
        apgrs = [ev.evaluate_scores(c, ex.weak[te], ex.strong[te]).apgr for c in cols]
        print(f"| {t} | {int(te.sum())} | " + " | ".join(f"{a:.3f}" for a in apgrs) + " |")


def simple_stays_simple() -> None:
    from tierlm import Router

    router = Router.from_config(
        preset="full-stack", overrides={"ledger": {"url": "off"}}, env=FULL_STACK_ENV
    )
    for prompt in ("What is the capital of France?", "Turn on pump 3"):
        plan = router.plan(ChatRequest.from_prompt(prompt))
        print(
            f"\n`{prompt}` under full-stack: complexity {plan.complexity:.2f}, tier "
            f"{plan.candidates[0].tier}"
        )
    router.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    labelled_table()
    simple_stays_simple()
    loto_table(args.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
