"""Which language a text is written in: the stopword profile that dominates it.

A cheap, dependency-free detector for the languages tierlm's signals know (en, de, fr, es,
it, nl, pt, pl, sv). It reads the first 1,000 characters and answers only when one profile
clearly dominates (at least three stopwords and twice the runner-up), else ``None``: the
judge uses it to spot an answer in the wrong language, the task signal to tell the policy
which language a request is in.
"""

from __future__ import annotations

import re

__all__ = ["LANGUAGES", "language"]

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_STOP = {
    "en": "the and is are of to that it for with you this what how be not on",
    "de": "der die das und ist nicht ein eine ich sie wir mit zu auf für den dem wie es wenn "
    "bitte auch oder aber bei sind wird kann noch",
    "fr": "le la les et est un une des du pour que qui dans pas avec vous nous sur",
    "es": "el la los las y es un una que de por para con no del se como",
    "it": "il lo la gli le e è un una che di per con non del della sono come",
    "nl": "de het een en is van ik je niet dat met voor op zijn wat hoe",
    "pt": "o a os as e é um uma que de para com não do da em como",
    "pl": "i w z na nie się to jest że do jak co czy od po tak jego dla przez",
    "sv": "och att det som en är på för med inte av till den har jag om vad hur",
}
LANGUAGES = frozenset(_STOP)
_LANGS_OF: dict[str, tuple[str, ...]] = {}  # stopword -> the languages it belongs to
for _lang, _words in _STOP.items():
    for _w in _words.split():
        _LANGS_OF[_w] = (*_LANGS_OF.get(_w, ()), _lang)


def language(text: str) -> str | None:
    """The language whose stopwords dominate ``text``, or None when unsure."""
    words = _WORD.findall(text[:1000].lower())
    if len(words) < 8:
        return None
    counts = dict.fromkeys(_STOP, 0)
    for w in words:
        for lang in _LANGS_OF.get(w, ()):
            counts[lang] += 1
    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
    (best, n1), (_, n2) = ranked[0], ranked[1]
    return best if n1 >= 3 and n1 >= 2 * max(n2, 1) else None
