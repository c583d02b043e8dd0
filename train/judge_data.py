"""RouterBench answers as judge examples: (request, cheap answer, other cheap answers, correct).

Source: ``../shared/data/routing/routerbench`` (see its README). For every row with all
scores present and every judged model (:data:`JUDGED`: mistral-7b, WizardLM-13B, Mixtral),
one example: the request (the shared few-shot prefix of its task stripped), that model's
answer, the other two judged models' answers to the same row as ``others``, and the 0/1
correctness of the answer (the label) and of GPT-4's answer (the strong side of APGR).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tierlm import evaluation as ev
from tierlm.judge import FEATURES, Case, Judge

JUDGED = (
    "mistralai/mistral-7b-chat",
    "WizardLM/WizardLM-13B-V1.2",
    "mistralai/mixtral-8x7b-chat",
)
STRONG = "gpt-4-1106-preview"
FILES = ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv")


@dataclass(frozen=True)
class JudgeSet:
    """One row per (request, judged model)."""

    cases: list[Case]
    tasks: npt.NDArray[np.str_]
    models: npt.NDArray[np.str_]
    correct: npt.NDArray[np.float64]  # the judged answer was right
    strong: npt.NDArray[np.float64]  # GPT-4 was right
    prompt_chars: npt.NDArray[np.float64]
    complexity: npt.NDArray[np.float64]  # the default pre-answer score
    x: npt.NDArray[np.float64]  # features, in FEATURES order


def _answer(raw: str) -> str:
    try:
        parts = ast.literal_eval(raw) if raw.startswith("[") else raw
    except (ValueError, SyntaxError):
        return raw
    return "".join(str(p) for p in parts) if isinstance(parts, list) else str(parts)


def load(data: Path, *, with_others: bool = True) -> JudgeSet:
    """All judge examples of the RouterBench train splits under ``data``."""
    judge = Judge(params=_dummy_params())
    cases: list[Case] = []
    cols: dict[str, list[object]] = {k: [] for k in ("task", "model", "y", "s", "len", "cx")}
    for name in FILES:
        _, rows = ev._read_csv(data / "routerbench" / name)
        keep = [r for r in rows if all(r[m].strip() for m in (*JUDGED, STRONG))]
        prompts = ev.strip_common_prefix([ev._parse_prompt(r["prompt"]) for r in keep])
        task = Path(name).stem.removesuffix("_train")
        for row, prompt in zip(keep, prompts, strict=True):
            cx = judge.complexity(prompt)
            answers = {m: _answer(row[f"{m}|model_response"]) for m in JUDGED}
            for m in JUDGED:
                others = [answers[o] for o in JUDGED if o != m] if with_others else []
                cases.append(Case(question=prompt, answer=answers[m], others=others, complexity=cx))
                for k, v in zip(
                    cols,
                    (task, m, float(row[m]), float(row[STRONG]), float(len(prompt)), cx),
                    strict=True,
                ):
                    cols[k].append(v)
    x = np.asarray([judge.measure(c)[0] for c in cases], dtype=np.float64)
    return JudgeSet(
        cases=cases,
        tasks=np.asarray(cols["task"]),
        models=np.asarray(cols["model"]),
        correct=np.asarray(cols["y"], dtype=np.float64),
        strong=np.asarray(cols["s"], dtype=np.float64),
        prompt_chars=np.asarray(cols["len"], dtype=np.float64),
        complexity=np.asarray(cols["cx"], dtype=np.float64),
        x=x,
    )


def _dummy_params() -> dict[str, object]:
    """Parameters that let :class:`Judge` measure before any artefact exists."""
    n = len(FEATURES)
    return {
        "features": list(FEATURES),
        "mean": [0.0] * n,
        "scale": [1.0] * n,
        "coef": [0.0] * n,
        "intercept": 0.0,
        "threshold": 0.5,
        "prior": {},
        "logprob_prior": {"weight": 0.0, "center": 0.0, "floor": -10.0, "cap": 0.0},
    }
