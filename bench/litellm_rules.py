"""LiteLLM's rule-based ``complexity_router`` score, rewritten for side-by-side benchmarks.

Not shipped with tierlm. It follows the published method of LiteLLM's default
``classifier_type: heuristic`` (BerriAI/litellm, ``litellm/router_strategy/complexity_router``,
MIT licence): seven weighted dimensions over the lower-cased last user message, summed.

- token count (characters / 4): below 15 scores -1, above 400 scores +1 (weight 0.10);
- code keywords: 1 match 0.5, 2+ matches 1.0 (0.30);
- reasoning markers: 1 match 0.7, 2+ matches 1.0 (0.25);
- technical terms: 2 matches 0.5, 4+ matches 1.0 (0.25);
- simple indicators: any match -1.0 (0.05);
- multi-step patterns ("first ... then", "step 2", numbered lines): 0.5 (0.03);
- more than three question marks: 0.5 (0.02).

Single words match on word boundaries, phrases as substrings. Its tiers cut the sum at 0.15,
0.35 and 0.60, and two or more reasoning markers force the top tier; as a *score* for APGR
and rank correlation the weighted sum is used, with the forced top tier added as +1.
The keyword lists are LiteLLM's defaults as published.
"""

from __future__ import annotations

import re

CODE = (
    "function|class|def|const|let|var|import|export|return|async|await|try|catch|exception|"
    "error|debug|api|endpoint|request|response|database|sql|query|schema|algorithm|implement|"
    "refactor|optimize|python|javascript|typescript|java|rust|golang|react|vue|angular|node|"
    "docker|kubernetes|git|commit|merge|branch|pull request"
)
REASONING = (
    "step by step|think through|let's think|reason through|analyze this|break down|"
    "explain your reasoning|show your work|chain of thought|think carefully|consider all|"
    "evaluate|pros and cons|compare and contrast|weigh the options|logical|deduce|infer|conclude"
)
TECHNICAL = (
    "architecture|distributed|scalable|microservice|machine learning|neural network|"
    "deep learning|encryption|authentication|authorization|performance|latency|throughput|"
    "benchmark|concurrency|parallel|threading|memory|cpu|gpu|optimization|protocol|tcp|http|"
    "grpc|websocket|container|orchestration"
)
SIMPLE = (
    "what is|what's|define|definition of|who is|who was|when did|when was|where is|where was|"
    "how many|how much|yes or no|true or false|simple|brief|short|quick|hello|hi|hey|thanks|"
    "thank you|goodbye|bye|okay"
)
_MULTI_STEP = (
    re.compile(r"\bfirst\b.*?\bthen\b", re.I | re.S),
    re.compile(r"\b(?:step|phase)\s+\d+\b", re.I),
    re.compile(r"(?:^|\n)\s*\d+[.)]\s+"),
)


def _matches(text: str, terms: list[str]) -> int:
    n = 0
    for t in terms:
        if " " in t:
            n += t in text
        else:
            n += re.search(rf"\b{re.escape(t)}\b", text) is not None
    return n


_LISTS = {
    "code": CODE.split("|"),
    "reasoning": REASONING.split("|"),
    "technical": TECHNICAL.split("|"),
    "simple": SIMPLE.split("|"),
}


def litellm_score(ask: str) -> float:
    """The weighted sum (plus 1 when two reasoning markers force the top tier)."""
    text = ask.lower()
    tokens = len(ask) // 4
    code = _matches(text, _LISTS["code"])
    reasoning = _matches(text, _LISTS["reasoning"])
    technical = _matches(text, _LISTS["technical"])
    simple = _matches(text, _LISTS["simple"])
    dims = (
        (0.10, -1.0 if tokens < 15 else 1.0 if tokens > 400 else 0.0),
        (0.30, 1.0 if code >= 2 else 0.5 if code >= 1 else 0.0),
        (0.25, 1.0 if reasoning >= 2 else 0.7 if reasoning >= 1 else 0.0),
        (0.25, 1.0 if technical >= 4 else 0.5 if technical >= 2 else 0.0),
        (0.05, -1.0 if simple >= 1 else 0.0),
        (0.03, 0.5 if any(p.search(ask) for p in _MULTI_STEP) else 0.0),
        (0.02, 0.5 if ask.count("?") > 3 else 0.0),
    )
    score = sum(w * s for w, s in dims)
    return score + (1.0 if reasoning >= 2 and score >= 0.15 else 0.0)
