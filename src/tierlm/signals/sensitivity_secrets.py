"""Secrets without a known prefix: passwords said in words, credentials in code, encodings.

The provider-prefixed keys, JWTs, PEM blocks, URL credentials and ``key = value``
assignments are in :mod:`tierlm.signals.sensitivity_rules`; this module adds what users
write around them (sub-kinds of ``secret:``):

- ``password``: a password statement in English, German, French, Spanish, Italian, Dutch,
  Polish or Swedish ("le mot de passe VPN c'est ...", "het wachtwoord ... is ...",
  "hasło do routera to ...", "lösenordet ... är ..."): the value is the first token after
  a connector ("is", "ist", "lautet", "c'est", "es", "è", "to", "är", ":", "=") or right
  after the word, and must look like a password (letters with digits or symbols, 6-64
  characters; plain words, numbers, paths and code references do not).
- ``password`` again for positional arguments of a login/connect call
  (``connect("db01", "admin", "S3cret!")``); keyword arguments are assignments.
- ``basic_auth``: the base64 of ``user:password`` after ``Basic`` (HTTP headers, curl).
- ``api_key``: a high-entropy token (Shannon entropy per character >= 3.0 for hex,
  >= 3.5 otherwise, letters and digits mixed, 16-128 characters) within 80 characters after
  a credential word in one of the eight languages (key, token, secret, clé, Schlüssel,
  clave, chiave, sleutel, klucz, nyckel, ...). Across two messages the caller scans the
  junction, so "API key, first half ... | second half ..." is found in both.
- Base64 blobs (>= 20 characters) that decode to text are scanned as text, and a finding in
  the decoded text is reported over the whole blob, with the decoded finding's kind.

Why hand-written rules and not detect-secrets: its plugins were measured on this
project's labelled set (``bench/bench_signals.py`` with detect-secrets 1.5.0 installed):
KeywordDetector, the two high-entropy plugins and BasicAuthDetector found 9 of 57 labelled
secrets (English keywords, quoted strings, no ``Basic`` base64), flagged 2 of 34
look-alikes, and cost 0.85 ms CPU for a 2 KB prompt (almost half the decision budget) plus
two dependencies (requests, PyYAML). The ideas kept from it: its entropy thresholds and its
keyword list (which already had "contraseña").
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator

from tierlm.signals.sensitivity_lexicon import word_start

Hit = tuple[str, int, int]

# Patterns searched over whole texts start with a literal (no \b): the regex engine then
# skips to candidate characters; the word boundary is checked on the few matches.
_PW_WORD = re.compile(
    r"(?:passw(?:or)?d|passwort|kennwort|passcode|passphrase|mot de passe|mdp\b|"
    r"contraseña|contrasena|parola d['’]ordine|wachtwoord|has[łl][oa]|l[öo]senord|"
    r"pin(?:[ -]code)?\b)"
)
_CONNECTORS = frozenset(
    """: = => is ist lautet est c'est c’est es era è é e to jest brzmi är blir wordt was war
    sera será sarà lyder heißt heisst vaut""".split()  # noqa: SIM905
)
_FILLERS = frozenset("nu now jetzt maintenant ahora ora adesso teraz nun".split())  # noqa: SIM905
_TOKEN = re.compile(r"=>|[:=]|[^\s\"'`«»„“”,;()<>\[\]{}:=]+")
_COMMON = re.compile(r"^(?:[a-zà-ÿ]+|\d+|[A-ZÀ-Ý][a-zà-ÿ]+|[A-Z]+)$")
_CODE_LIKE = re.compile(
    r"://|^[/~.]|[/\\]\w|^\$\{?(?:[A-Z][A-Z0-9_]*|[a-z][a-z0-9_]*)\}?$|^%\w+%$|^\{|\w\(|"
    r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$|"
    r"^[A-Z][A-Z_]*_[A-Z0-9_]+$|^[A-Z]+$|^[a-z]+(?:_[a-z]+)+$|"
    r"^(?:your|my|tu|votre|ton|dein|ihr|tuo|jouw|twoje|ditt)_"
)
_CRED_WORD = re.compile(  # stems of the other languages take their endings (nyckeln, klucza)
    r"(?:api[ _-]?key|key|keys|token|secret|credentials?|bearer|auth|apikey|clé|cle|"
    r"passwort|password)\b|(?:schlüssel|schluessel|clave|chiave|sleutel|klucz|nyckel|nøgle)\w*"
)
_HIGH_ENTROPY = re.compile(r"(?<![\w/+=-])[A-Za-z0-9+/_=-]{16,128}+(?![\w/+=-])")
_PARTS = re.compile(r"[-_./]")
_BASIC = re.compile(r"\b[Bb]asic[ :]{1,3}([A-Za-z0-9+/]{8,400}={0,2})(?![\w+/=])")
_BLOB = re.compile(r"(?<![\w+/=-])[A-Za-z0-9+/]{20,4096}+={0,2}+(?![\w+/=-])")
_CALL = re.compile(
    r"(?:connect|login|log_in|authenticate|auth|credentials|Credentials|Client|session|bind)"
    r"\s{0,2}\(([^()\n]{3,400})\)"
)
_QUOTED = re.compile(r"([\"'])([^\"'\n]{1,128})\1")


def strong_password(value: str) -> bool:
    """Looks like a chosen password: not a word, number, path, URL or code reference."""
    if not 6 <= len(value) <= 64 or _COMMON.match(value) or _CODE_LIKE.search(value):
        return False
    letters = sum(ch.isalpha() for ch in value)
    digits = sum(ch.isdigit() for ch in value)
    symbols = len(value) - letters - digits
    if letters == 0 or value.lower().strip("!*.") in {"password", "passwort", "changeme"}:
        return False
    return digits > 0 or symbols > 0 or any(ch.isupper() for ch in value[1:])


_PW_WORDS = frozenset(
    """password passwords passwort kennwort passcode passphrase passwd mot mdp contraseña
    contrasena parola wachtwoord hasło haslo hasła lösenord lösenordet losenord pin""".split()  # noqa: SIM905
)
_CRED_WORDS = frozenset(
    """key keys apikey token tokens secret secrets credential credentials bearer auth clé cle
    clave chiave chiavi schlüssel schluessel sleutel sleutels klucz klucza kluczem nyckel
    nyckeln nøgle nøglen passwort password""".split()  # noqa: SIM905
)
_LONG_RUN = re.compile(r"[A-Za-z0-9+/]{20}")


def password_statements(text: str, lower: str, words: set[str]) -> Iterator[Hit]:
    """``secret:password`` values stated in words in the eight languages; ``words``: the
    lower-cased text's words."""
    if _PW_WORDS.isdisjoint(words):
        return
    for m in _PW_WORD.finditer(lower):
        if not word_start(lower, m.start()):
            continue
        end = text.find("\n", m.end(), m.end() + 72)
        window = list(_TOKEN.finditer(text, m.end(), end if end >= 0 else m.end() + 72))
        value = _stated_value(window, m.group().startswith("pin"))
        if value is not None:
            yield "secret:password", value[0], value[1]


def _stated_value(tokens: list[re.Match[str]], pin: bool) -> tuple[int, int] | None:
    """The value after a connector, or right after the word (not for "PIN": a PIN needs
    "is"/":" before it)."""
    for i, tok in enumerate(tokens):
        if tok.group().lower() in _CONNECTORS:
            for nxt in tokens[i + 1 : i + 3]:
                if _value_ok(nxt):
                    return _trimmed(nxt)
                if nxt.group().lower() not in _FILLERS:
                    break
            return None
        if i == 0 and not pin and _value_ok(tok):  # "mot de passe Lavande_93"
            return _trimmed(tok)
    return None


def _value_ok(tok: re.Match[str]) -> bool:
    s, e = _trimmed(tok)
    before = tok.string[s - 1] if s else " "
    return before not in "<{[" and strong_password(tok.string[s:e])


def _trimmed(tok: re.Match[str]) -> tuple[int, int]:
    """The token's span without trailing sentence punctuation."""
    value = tok.group().rstrip(".,:;?")
    return tok.start(), tok.start() + (len(value) or len(tok.group()))


def call_arguments(text: str) -> Iterator[Hit]:
    """``secret:password``: a password-like positional argument of a login/connect call."""
    for m in _CALL.finditer(text):
        quoted = list(_QUOTED.finditer(text, *m.span(1)))
        if len(quoted) < 2:
            continue
        for q in quoted[1:]:
            value = q.group(2)
            if text[q.start() - 1] == "[":
                continue  # a subscript (os.environ["DB_USER"]), not an argument
            if "." not in value and strong_password(value):
                yield "secret:password", q.start(2), q.end(2)


def basic_auth(text: str) -> Iterator[Hit]:
    """``secret:basic_auth``: ``Basic <base64 of user:password>``."""
    for m in _BASIC.finditer(text):
        decoded = _decode(m.group(1))
        if decoded is not None and ":" in decoded.strip(":"):
            yield "secret:basic_auth", m.start(1), m.end(1)


def entropy_tokens(text: str, lower: str, words: set[str]) -> Iterator[Hit]:
    """``secret:api_key``: high-entropy tokens shortly after a credential word; ``words``:
    the lower-cased text's words."""
    if _CRED_WORDS.isdisjoint(words):
        return
    end = 0
    for word in _CRED_WORD.finditer(lower):
        if not word_start(lower, word.start()):
            continue
        for m in _HIGH_ENTROPY.finditer(text, max(end, word.end()), word.end() + 80 + 128):
            if m.start() - word.end() > 80:
                break
            end = m.end()
            if _high_entropy(m.group()):
                yield "secret:api_key", m.start(), m.end()


def _high_entropy(value: str) -> bool:
    has_digit = any(ch.isdigit() for ch in value)
    has_alpha = any(ch.isalpha() for ch in value)
    if not (has_digit and has_alpha) or value.count("-") > 4 or "=" in value.rstrip("="):
        return False
    parts = _PARTS.split(value)
    if len(parts) >= 3 and 2 * sum(len(p) >= 3 and p.isalpha() for p in parts) >= len(parts):
        return False  # an identifier, path or model name: claude-3-5-haiku-latest, /v1/chat
    counts = Counter(value)
    entropy = -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())
    hexish = all(ch in "0123456789abcdefABCDEF" for ch in value)
    return entropy >= (3.0 if hexish else 3.5)


def encoded_blobs(text: str, scan: Callable[[str], list[str]]) -> Iterator[Hit]:
    """Base64 text blobs whose decoded text holds a finding: ``scan`` returns its kinds."""
    first = _LONG_RUN.search(text)
    if first is None:
        return
    for m in _BLOB.finditer(text, first.start()):
        raw = m.group()
        if len(raw) % 4:
            continue
        decoded = _decode(raw)
        if decoded is None:
            continue
        kinds = scan(decoded)
        if kinds:
            yield kinds[0], m.start(), m.end()


def _decode(raw: str) -> str | None:
    """The UTF-8 text a base64 token decodes to, or None (not base64, not text)."""
    try:
        data = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        decoded = data.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in decoded)
    return decoded if decoded and printable / len(decoded) >= 0.95 else None
