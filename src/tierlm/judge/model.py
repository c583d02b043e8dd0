"""The judge: the probability that an answer to a request is good enough, with its reasons.

:class:`Judge` measures the checks of :mod:`tierlm.judge.checks`, the agreement with other
cheap answers (:mod:`tierlm.judge.agreement`), the request's pre-answer difficulty (the
default complexity score) and, where given, the answer's token log-probabilities, and
combines them with a logistic model shipped as ``tierlm/data/judge.json``:

    logit = intercept + sum(coef_i * (x_i - mean_i) / scale_i)
            + sum(prior_j * x_j) + logprob_prior(mean token log-prob)
    score = sigmoid(logit);  accept = score >= threshold

The weights are fitted by ``train/train_judge.py`` on RouterBench (the 7B, 13B and Mixtral
answers, judged against their recorded correctness). Checks that rarely or never fire on
those answers (refusals, empty answers, JSON, wrong language, ...) cannot be fitted there,
so each carries a hand-set prior weight (``prior`` in the artefact, a fixed offset during
the fit, so the fitted weights come on top of it). No training row carries log-probs, so
their term is a prior too (mean token log-prob, centred at -0.6 nats): it moves the score
only when a caller passes ``logprobs``.

Pure Python, no model call: well under a millisecond for a typical answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierlm.errors import ConfigError
from tierlm.judge import checks
from tierlm.judge.agreement import agreement
from tierlm.paths import load_artefact
from tierlm.types import ChatRequest

ARTEFACT = Path(__file__).resolve().parent.parent / "data" / "judge.json"
FEATURES = (
    "refusal",
    "hedging",
    "empty",
    "looping",
    "truncated",
    "bad_json",
    "wrong_language",
    "no_final_answer",
    "bad_arithmetic",
    "code_invalid",
    "off_topic",
    "agreement",
    "has_others",
    "complexity",
)


@dataclass(slots=True)
class Case:
    """One answer to judge. ``question`` is the request's text (all messages joined)."""

    question: str
    answer: str
    others: Sequence[str] = ()
    logprobs: Sequence[float] | None = None
    finish_reason: str | None = None
    complexity: float | None = None  # None: the default complexity score of ``question``
    response_format: Mapping[str, Any] | None = None
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_calls: Sequence[Mapping[str, Any]] | None = None


def case_for(
    request: ChatRequest,
    answer: str,
    *,
    others: Sequence[str] = (),
    logprobs: Sequence[float] | None = None,
    finish_reason: str | None = None,
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
) -> Case:
    """The case of ``answer`` to ``request`` (its text, ``response_format`` and tools)."""
    rf = request.extra.get("response_format")
    return Case(
        question=request.prompt_text,
        answer=answer,
        others=others,
        logprobs=logprobs,
        finish_reason=finish_reason,
        response_format=rf if isinstance(rf, Mapping) else None,
        tools=request.tools,
        tool_calls=tool_calls,
    )


@dataclass(slots=True)
class Verdict:
    score: float  # the probability that the answer is good enough
    accept: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "accept": self.accept, "reasons": self.reasons}


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def measure(case: Case) -> tuple[list[float], list[str]]:
    """The feature vector (in :data:`FEATURES` order) and the reasons of the checks that fired.

    ``complexity`` must already be set on the case (see :meth:`Judge.measure`)."""
    q, a = case.question, case.answer
    reasons: list[str] = []
    values = {
        "refusal": checks.refusal(a),
        "hedging": checks.hedging(a),
        "empty": 1.0 if not a.strip() and not case.tool_calls else 0.0,
        "looping": checks.looping(a),
        "truncated": checks.truncated(a, case.finish_reason),
        "wrong_language": checks.wrong_language(q, a),
        "no_final_answer": checks.no_final_answer(q, a),
        "off_topic": checks.off_topic(q, a),
    }
    for name, why in (
        ("refusal", "the answer refuses"),
        ("empty", "the answer is empty"),
        ("truncated", "the answer was cut off"),
        ("wrong_language", "the answer is in another language than the request"),
        ("no_final_answer", "no final answer where one was asked for"),
    ):
        if values[name]:
            reasons.append(why)
    if values["hedging"] >= 2 / 3:
        reasons.append("the answer hedges")
    if values["looping"] > 0.3:
        reasons.append(f"the answer repeats itself ({values['looping']:.0%} repeated 4-grams)")
    if values["off_topic"] > 0.8:
        reasons.append("the answer shares few words with the question")
    problem = checks.json_problem(q, a, case.response_format, case.tools, case.tool_calls)
    values["bad_json"] = 1.0 if problem else 0.0
    checked, wrong = checks.arithmetic_errors(a)
    values["bad_arithmetic"] = wrong / checked if checked else 0.0
    code = checks.code_problem(q, a)
    values["code_invalid"] = 1.0 if code else 0.0
    reasons += [r for r in (problem, code) if r]
    if wrong:
        reasons.append(f"{wrong} of {checked} calculations in the answer do not hold")
    agree, how = agreement(a, case.others, q)
    values["agreement"] = 0.5 if agree is None else agree
    values["has_others"] = 0.0 if agree is None else 1.0
    if agree is not None:
        reasons.append(f"{how} agreement with {len(case.others)} other answer(s): {agree:.2f}")
    values["complexity"] = float(case.complexity or 0.0)
    return [values[f] for f in FEATURES], reasons


def prior_logit(prior: Mapping[str, float], feats: Sequence[float]) -> float:
    """The hand-set part: ``sum(weight * x)`` over the checks named in ``prior``."""
    return sum(float(w) * feats[FEATURES.index(name)] for name, w in prior.items())


def mean_logprob(logprobs: Sequence[float] | None) -> float | None:
    vals = [float(x) for x in (logprobs or []) if math.isfinite(float(x))]
    return sum(vals) / len(vals) if vals else None


class Judge:
    """Scores answers with the trained artefact (see module docstring)."""

    def __init__(
        self, params: Mapping[str, Any] | None = None, *, threshold: float | None = None
    ) -> None:
        self.params = params if params is not None else load_params()
        if tuple(self.params["features"]) != FEATURES:
            raise ConfigError("judge artefact was trained on other features; run train_judge.py")
        self.threshold = float(self.params["threshold"] if threshold is None else threshold)
        self._scorer: Any = None

    def complexity(self, question: str) -> float:
        if self._scorer is None:
            from tierlm.signals.complexity import load_scorer

            self._scorer = load_scorer("model")
        return float(self._scorer.score_messages([("user", question)]))

    def measure(self, case: Case) -> tuple[list[float], list[str]]:
        if case.complexity is None:
            case.complexity = self.complexity(case.question)
        return measure(case)

    def logit(self, feats: Sequence[float], logprobs: Sequence[float] | None = None) -> float:
        p = self.params
        z = float(p["intercept"]) + prior_logit(p["prior"], feats)
        others = feats[FEATURES.index("has_others")] > 0
        for name, x, m, s, c in zip(FEATURES, feats, p["mean"], p["scale"], p["coef"], strict=True):
            if name != "agreement" or others:  # no other answers: no agreement term
                z += c * (x - m) / s
        lp = mean_logprob(logprobs)
        if lp is not None:
            prior = p["logprob_prior"]
            lp = min(max(lp, prior["floor"]), prior["cap"])
            z += prior["weight"] * (lp - prior["center"])
        return z

    @staticmethod
    def early_reasons(question: str, prefix: str) -> list[str]:
        """Checks that a partial answer can already fail: refusal, wrong language, looping."""
        reasons = []
        if checks.refusal(prefix):
            reasons.append("the answer refuses")
        if checks.wrong_language(question, prefix):
            reasons.append("the answer is in another language than the request")
        if checks.looping(prefix) > 0.3:
            reasons.append("the answer repeats itself")
        return reasons

    def judge(self, case: Case) -> Verdict:
        feats, reasons = self.measure(case)
        score = _sigmoid(self.logit(feats, case.logprobs))
        lp = mean_logprob(case.logprobs)
        if lp is not None:
            reasons.append(f"mean token log-prob {lp:.2f}")
        return Verdict(score=score, accept=score >= self.threshold, reasons=reasons)


def load_params(path: Path = ARTEFACT) -> dict[str, Any]:
    """The trained artefact (read once per path)."""
    return load_artefact(path, "judge")
