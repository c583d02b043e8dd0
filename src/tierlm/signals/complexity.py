"""The complexity signal: how strong a model a request needs, as a score in [0, 1].

Strategies with one method, RouteLLM style (``score(request) -> float``, higher = needs a
stronger model); the policy turns the score into a tier (a tier of strength ``s`` clears a
request of quality bar ``q`` iff ``complexity <= s + (0.5 - q)``).

Methods (:func:`load_scorer`):

- ``model`` (default): a linear model over cheap lexical features of the whole conversation
  (:mod:`tierlm.signals.complexity_features`), trained by ``train/train_complexity.py`` on
  per-model benchmark outcomes and shipped as ``tierlm/data/complexity.json``. The score reads
  as the probability that a 7B-class model fails the request: a learned within-task
  difficulty term plus a documented "answer demand" prior (length, open-ended vs. command
  wording; see the artefact), calibrated on the training outcomes. Pure Python, ~tens of
  microseconds, bounded on huge prompts (it reads a fixed window of text).
- ``length``: the prompt-length baseline, a logistic curve over the log character count.
- ``llm``: the tiny model itself rates the request 1-3 (as the simplest edge deployments do);
  the caller supplies ``llm_rate(messages) -> str``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from tierlm.errors import ConfigError
from tierlm.paths import load_artefact
from tierlm.signals.complexity_features import (
    FEATURE_NAMES,
    conversation_text,
    lexical_features,
    window,
)
from tierlm.types import ChatRequest

ARTEFACT = Path(__file__).resolve().parent.parent / "data" / "complexity.json"
METHODS = ("model", "length", "llm")

LlmRate = Callable[[list[dict[str, str]]], str]


class ComplexityScorer(Protocol):
    """Scores a request in [0, 1]; higher = needs a stronger model."""

    name: str

    def score(self, request: ChatRequest) -> float: ...


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _messages(request: ChatRequest) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in request.messages]


def logit_from_features(params: Mapping[str, Any], feats: Sequence[float]) -> float:
    """The model's logit for one feature vector (shared with the training script)."""
    mean, scale, coef = params["mean"], params["scale"], params["coef"]
    z = float(params["ridge_intercept"])
    for x, m, s, c in zip(feats, mean, scale, coef, strict=True):
        z += c * (x - m) / s
    z /= float(params["z_std"])
    logit = float(params["intercept"]) + float(params["slope"]) * z
    return logit + prior_logit(params["prior"], feats)


def prior_logit(terms: Sequence[Mapping[str, Any]], feats: Sequence[float]) -> float:
    """The answer-demand prior: ``sum(weight * (clip(feature, floor, cap) - center))``."""
    total = 0.0
    for term in terms:
        x = feats[FEATURE_NAMES.index(term["feature"])]
        x = min(max(x, float(term.get("floor", -math.inf))), float(term["cap"]))
        total += float(term["weight"]) * (x - float(term["center"]))
    return total


class ModelScorer:
    """The trained lexical model (see module docstring)."""

    name = "model"

    def __init__(self, params: Mapping[str, Any]) -> None:
        if tuple(params["feature_names"]) != FEATURE_NAMES:
            raise ConfigError(
                "complexity artefact was trained on different features; "
                "re-run train/train_complexity.py"
            )
        self.params = params

    def score_messages(self, messages: Sequence[tuple[str, str]]) -> float:
        text, total = conversation_text(messages)
        last = next((t for _, t in reversed(messages) if t), "")
        feats = lexical_features(text, total, len(messages), last[:200])
        return _sigmoid(logit_from_features(self.params, feats))

    def score(self, request: ChatRequest) -> float:
        return self.score_messages(_messages(request))


class LengthScorer:
    """Baseline: longer conversations score higher (logistic in log characters).

    About 0.07 at 30 characters, 0.5 at 250 and 0.93 at 2,000.
    """

    name = "length"

    def __init__(self, midpoint_chars: float = 250.0, steepness: float = 1.2) -> None:
        self.center = math.log1p(midpoint_chars)
        self.steepness = steepness

    def score(self, request: ChatRequest) -> float:
        total = sum(len(m.text) for m in request.messages)
        return _sigmoid(self.steepness * (math.log1p(total) - self.center))


RATING_SYSTEM = (
    "You sort requests for an AI assistant by difficulty. Reply with one digit only.\n"
    "1 = simple: a short command, a greeting, a yes/no or a single fact.\n"
    "2 = moderate: a short explanation, summary or small edit.\n"
    "3 = hard: multi-step reasoning, math, code, a plan or design, or long writing."
)
RATING_SCORES = {1: 0.15, 2: 0.5, 3: 0.85}
_DIGIT = re.compile(r"(?<!\d)([1-3])(?!\d)")
_WORDS = (
    (re.compile(r"\b(simple|easy|trivial|one|low)\b", re.I), 1),
    (re.compile(r"\b(moderate|medium|two|intermediate)\b", re.I), 2),
    (re.compile(r"\b(hard|difficult|complex|three|high)\b", re.I), 3),
)


def rating_messages(messages: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The chat messages that ask a small model to rate a conversation 1-3."""
    text, _ = conversation_text(messages)
    return [
        {"role": "system", "content": RATING_SYSTEM},
        {"role": "user", "content": f"Request:\n{window(text)}\n\nDifficulty (1, 2 or 3):"},
    ]


def parse_rating(answer: str) -> int | None:
    """The 1-3 rating in a model's answer (first digit, else a rating word), or None."""
    m = _DIGIT.search(answer)
    if m:
        return int(m.group(1))
    for pattern, value in _WORDS:
        if pattern.search(answer):
            return value
    return None


class LlmScorer:
    """The tiny model rates the request 1-3; 1/2/3 map to 0.15/0.5/0.85.

    An answer with no rating in it scores 0.5 (undecided), so the request goes to the
    middle of the hierarchy rather than silently to either end.
    """

    name = "llm"

    def __init__(self, llm_rate: LlmRate) -> None:
        self.llm_rate = llm_rate

    def score(self, request: ChatRequest) -> float:
        answer = self.llm_rate(rating_messages(_messages(request)))
        rating = parse_rating(answer)
        return RATING_SCORES[rating] if rating is not None else 0.5


def load_params(path: Path = ARTEFACT) -> dict[str, Any]:
    """The trained artefact (read once per path, then cached)."""
    return load_artefact(path, "complexity")


def load_scorer(method: str = "model", *, llm_rate: LlmRate | None = None) -> ComplexityScorer:
    """A scorer by name: ``model`` (default), ``length`` or ``llm`` (needs ``llm_rate``)."""
    if method == "model":
        return ModelScorer(load_params())
    if method == "length":
        return LengthScorer()
    if method == "llm":
        if llm_rate is None:
            raise ConfigError("complexity method 'llm' needs a local model to rate requests")
        return LlmScorer(llm_rate)
    raise ConfigError(f"unknown complexity method {method!r} (expected one of: {METHODS})")
