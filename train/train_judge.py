"""Fit the judge's logistic model and write ``src/tierlm/data/judge.json``.

Run from the repository root (numpy only)::

    .venv/bin/python train/train_judge.py [--data ../shared/data/routing] [--dry-run]

What it does (deterministic):

1. Loads the RouterBench judge examples (``judge_data.py``: the mistral-7b, WizardLM-13B and
   Mixtral answers, each with the other two as ``others``) and measures every feature of
   :mod:`tierlm.judge.model`.
2. Fits ``P(answer correct) = sigmoid(c_task + sum(w_i * standardised x_i) + prior)`` by
   Newton's method with an L2 penalty on ``w`` (one intercept per task, so the weights
   describe what makes an answer better than other answers *of its task*, which is what
   transfers to unseen tasks); the shipped intercept is the mean of the task intercepts.
   The checks in :data:`PRIOR` fire too rarely on these answers to be fitted (a weight
   fitted on a handful of rows runs away); they keep their hand-set weights, as an offset.
3. The L2 strength is chosen by leave-one-task-out APGR (train on two tasks, judge the third),
   and the table of that protocol is printed: judge vs prompt length vs the pre-answer
   complexity score, per held-out task (``bench/bench_judge.py`` prints the same table from
   the shipped artefact).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from train.judge_data import JudgeSet, load  # noqa: E402
from train.routing_data import DEFAULT_DATA  # noqa: E402

from tierlm import evaluation as ev  # noqa: E402
from tierlm.judge.model import ARTEFACT, FEATURES, Judge  # noqa: E402

Array = npt.NDArray[np.float64]
# Default acceptance bar: clean answers without other answers to compare score ~0.45-0.7
# (the training answers are right ~60% of the time); a failed check or disagreement with
# the others takes an answer below 0.4. Deployments set their own (cascade.threshold).
THRESHOLD = 0.4
L2S = (10.0, 30.0, 100.0, 300.0)  # below 10, checks seen a few times get runaway weights
LOGPROB_PRIOR = {"weight": 1.5, "center": -0.6, "floor": -3.0, "cap": 0.0}
# Hand-set logit weights of checks that rarely or never fire on RouterBench answers.
PRIOR = {
    "refusal": -3.0,
    "empty": -4.0,
    "looping": -3.0,
    "truncated": -1.5,
    "bad_json": -3.0,
    "wrong_language": -2.0,
    "no_final_answer": -2.0,
    "bad_arithmetic": -2.0,
    "code_invalid": -2.0,  # MBPP measures about -1.0 (fires on 3%); unusable code counts more
}
# Fitted: the rest, except ``has_others`` (it only switches the agreement term off).
LEARNED = [f for f in FEATURES if f not in PRIOR and f != "has_others"]


def prior_offset(x: Array) -> Array:
    return np.asarray(x[:, [FEATURES.index(f) for f in PRIOR]] @ np.asarray(list(PRIOR.values())))


def fit(x: Array, y: Array, tasks: npt.NDArray[np.str_], l2: float) -> dict[str, Any]:
    """Logistic regression with per-task intercepts (Newton, L2 on the weights only)."""
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-9] = 1.0
    cols = [FEATURES.index(f) for f in LEARNED]
    z = ((x - mean) / scale)[:, cols]
    names = list(np.unique(tasks))
    onehot = np.stack([tasks == t for t in names], 1).astype(np.float64)
    a = np.hstack([z, onehot])
    theta = np.zeros(a.shape[1])
    penalty = np.concatenate([np.full(z.shape[1], l2), np.zeros(len(names))])
    offset = prior_offset(x)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(a @ theta + offset)))
        grad = a.T @ (p - y) + penalty * theta
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty + 1e-6)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    k = z.shape[1]
    coef = np.zeros(len(FEATURES))
    coef[cols] = theta[:k]
    return {
        "features": list(FEATURES),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": coef.tolist(),
        "intercept": float(theta[k:].mean()),
        "task_intercepts": dict(zip(names, theta[k:].tolist(), strict=True)),
        "prior": PRIOR,
        "l2": l2,
    }


def judge_scores(params: dict[str, Any], x: Array) -> Array:
    """P(good) as the runtime computes it (no log-probs in the data)."""
    judge = Judge({**params, "threshold": THRESHOLD, "logprob_prior": LOGPROB_PRIOR})
    return np.asarray([1.0 / (1.0 + math.exp(-judge.logit(row))) for row in x.tolist()])


def apgr(escalate: Array, js: JudgeSet, m: npt.NDArray[np.bool_]) -> float:
    """APGR of escalating the highest ``escalate`` scores (weak = judged answer, strong = GPT-4)."""
    return ev.evaluate_scores(escalate[m], js.correct[m], js.strong[m]).apgr


def loto(js: JudgeSet, l2: float, without: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """Leave-one-task-out APGR per held-out task: judge, prompt length, pre-answer score.
    Features in ``without`` are held at their mean (the judge without that signal)."""
    x = js.x.copy()
    for f in without:
        x[:, FEATURES.index(f)] = x[:, FEATURES.index(f)].mean()
    out: dict[str, dict[str, float]] = {}
    for t in np.unique(js.tasks):
        te = js.tasks == t
        params = fit(x[~te], js.correct[~te], js.tasks[~te], l2)
        esc = 1.0 - judge_scores(params, x)
        out[str(t)] = {
            "judge": apgr(esc, js, te),
            "length": apgr(js.prompt_chars, js, te),
            "complexity": apgr(js.complexity, js, te),
            "n": float(te.sum()),
        }
    return out


def load_l2() -> float:
    """The L2 strength the shipped artefact was fitted with."""
    return float(json.loads(ARTEFACT.read_text(encoding="utf-8"))["l2"])


def print_table(title: str, res: dict[str, dict[str, float]]) -> None:
    print(f"\n### {title}\n")
    print("| held-out task | n | judge | prompt length | complexity (pre-answer) |")
    print("|---|---|---|---|---|")
    for t, r in res.items():
        print(
            f"| {t} | {int(r['n'])} | {r['judge']:.3f} | {r['length']:.3f} | "
            f"{r['complexity']:.3f} |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--dry-run", action="store_true", help="Print, do not write the artefact.")
    args = ap.parse_args(argv)
    js = load(args.data)
    print(f"{len(js.cases)} judged answers, features: {', '.join(FEATURES)}")
    best, best_l2 = -1.0, L2S[0]
    for l2 in L2S:
        res = loto(js, l2)
        worst = min(r["judge"] - max(r["length"], r["complexity"]) for r in res.values())
        mean = float(np.mean([r["judge"] for r in res.values()]))
        print(f"  l2={l2:<6} LOTO mean APGR {mean:.3f}, worst margin over baselines {worst:+.3f}")
        if mean > best:
            best, best_l2 = mean, l2
    res = loto(js, best_l2)
    print_table(f"leave-one-task-out APGR (l2={best_l2})", res)
    params = fit(js.x, js.correct, js.tasks, best_l2)
    params.update(
        threshold=THRESHOLD,
        logprob_prior=LOGPROB_PRIOR,
        trained_on="RouterBench train splits (arc_challenge, mbpp, winogrande): "
        "mistral-7b, WizardLM-13B, Mixtral answers",
        leave_one_task_out=res,
    )
    for name, c in zip(FEATURES, params["coef"], strict=True):
        print(f"  {name:16} {c:+.3f}")
    if not args.dry_run:
        ARTEFACT.write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {ARTEFACT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
