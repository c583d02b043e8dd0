"""The shared routing data as training examples, and the held-out split nobody trains on.

Sources (``../shared/data/routing``, see its README):

- RouterBench ARC-Challenge, MBPP, Winogrande: label = 1 if ``mistral-7b-chat`` (the
  7B / tiny class) got the item wrong. Outcomes for APGR: mistral-7b (weak) vs GPT-4 (strong).
  Rows with empty scores are dropped; the few-shot prefix shared by a task is stripped.
- AlpacaEval 2.0: label = share of (cloud model, small model) pairs where the judge preferred
  the cloud answer (``win`` against the same reference). Generator ``example`` and the
  FuseChat-* submissions are not used. Outcomes for APGR: OpenHermes-2.5-Mistral-7B vs
  Claude 2.

Held-out split: every example whose ``sha1(task + NUL + text)`` is 0 mod 5 (about 20% of
each task) is held out. Training and model selection never read it; only the evaluation
tables and ``bench/bench_routing_quality.py`` do.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tierlm import evaluation as ev

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("TIERLM_ROUTING_DATA", REPO.parent / "shared/data/routing"))
ROUTERBENCH_FILES = ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv")
SMALL = (
    "vicuna-7b-v1.5",
    "vicuna-7b-v1.3",
    "gemma-7b-it",
    "OpenHermes-2.5-Mistral-7B",
    "alpaca-7b",
    "falcon-7b-instruct",
    "gemma-2b-it",
    "phi-2",
)
CLOUD = (
    "claude-2",
    "claude-2.1",
    "claude",
    "claude-instant-1.2",
    "gpt-3.5-turbo-1106",
    "gpt4_0613_concise",
)
HOLDOUT_MOD = 5


@dataclass(frozen=True)
class Examples:
    """Texts with their task, training label and weak/strong outcomes."""

    texts: list[str]
    tasks: npt.NDArray[np.str_]
    label: npt.NDArray[np.float64]
    weak: npt.NDArray[np.float64]
    strong: npt.NDArray[np.float64]

    def subset(self, mask: npt.NDArray[np.bool_]) -> Examples:
        idx = np.flatnonzero(mask)
        return Examples(
            texts=[self.texts[i] for i in idx],
            tasks=self.tasks[idx],
            label=self.label[idx],
            weak=self.weak[idx],
            strong=self.strong[idx],
        )


def holdout_mask(tasks: npt.NDArray[np.str_], texts: list[str]) -> npt.NDArray[np.bool_]:
    """True for the held-out ~20% (a hash of task and text, so it never moves)."""
    out = np.zeros(len(texts), dtype=bool)
    for i, (task, text) in enumerate(zip(tasks, texts, strict=True)):
        h = hashlib.sha1(f"{task}\0{text}".encode()).hexdigest()
        out[i] = int(h[:8], 16) % HOLDOUT_MOD == 0
    return out


def _alpaca_labels(data: Path, ids: list[str]) -> npt.NDArray[np.float64]:
    wins = ev.load_alpaca_wins(data / "alpacaeval/per_prompt_preferences_long.csv.gz")
    labels = []
    for i in ids:
        pairs = [
            wins[c][i] > wins[s][i] for c in CLOUD for s in SMALL if i in wins[c] and i in wins[s]
        ]
        labels.append(float(np.mean(pairs)))
    return np.asarray(labels)


def load_examples(data: Path = DEFAULT_DATA) -> Examples:
    """All usable examples of the shared routing data (held-out ones included)."""
    rb = ev.load_routerbench([data / "routerbench" / f for f in ROUTERBENCH_FILES])
    al = ev.load_alpacaeval(
        data / "alpacaeval/per_prompt_preferences_long.csv.gz",
        data / "alpacaeval/instructions.csv",
    )
    assert al.ids is not None
    return Examples(
        texts=rb.texts + al.texts,
        tasks=np.asarray(rb.tasks + al.tasks),
        label=np.concatenate([1.0 - rb.weak, _alpaca_labels(data, al.ids)]),
        weak=np.concatenate([rb.weak, al.weak]),
        strong=np.concatenate([rb.strong, al.strong]),
    )
