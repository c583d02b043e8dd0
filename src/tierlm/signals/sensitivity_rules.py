"""Pattern rules of the sensitivity detector: identifiers, contact data and secrets.

:class:`PatternRules` compiles every regex once (per detector) and returns raw hits
``(kind, start, end)`` for one text. Every quantifier is bounded and every rule either runs
behind a cheap substring prefilter or anchors on a literal, so a scan is linear in the text
length. Candidates are validated (checksums, reserved ranges, context words) before they
become hits; overlaps are resolved by the caller.

What counts (and what deliberately does not):

- ``email``: any address (also URL-encoded, ``%40``) except reserved and obvious example
  domains (RFC 2606/6761: example.com/.org/.net, ``*.example``, ``*.test``, ``*.invalid``,
  ``*.localhost``; example.fr, beispiel.de, ejemplo.es, esempio.it, voorbeeld.nl, ...) and
  ``git@host`` remotes.
- ``phone``: numbers written with ``+``/``00`` country code, US ``(NXX) NXX-XXXX`` shapes,
  European trunk-prefix shapes (``0171 1234567``, ``0171 / 482 93 05``), or any 7-15 digit
  number after a phone word (tel, phone, call, mobile, Handy, portable, móvil, cellulare,
  ...). Dates, versions and numbers after order/part/serial/ticket words are not phones;
  nor are the reserved 555-0100..0199 and all-zero numbers (documentation placeholders).
- ``ip_address``: IPv4/IPv6 addresses, private ranges included (plant network layout is
  sensitive); loopback, unspecified, netmasks and documentation ranges (192.0.2.0/24,
  198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are not; nor are ``v1.2.3.4`` versions.
- ``payment_card`` (Luhn + network prefix) in any grouping, with spaces, non-breaking
  spaces, tabs, dots, dashes or a line break between the groups; ``iban`` (length + mod 97),
  upper or lower case, with the same separators; ``national_id`` (see
  :mod:`tierlm.signals.sensitivity_checks` for the countries and checks).
- ``secret:*``: provider keys by their documented prefixes, private key blocks, JWTs,
  credentials in URLs and connection strings, ``password: ...`` and ``api_key = ...``
  assignments whose value looks like a real secret (placeholders are skipped, and so are
  keys that are mostly one character: ``AKIAXXXXXXXXXXXXXXXX``, ``ghp_xxxx...``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator

from tierlm.signals import sensitivity_checks as chk

Hit = tuple[str, int, int]

_RESERVED_MAIL = re.compile(
    r"(?:^|\.)(?:(?:example|exemple|ejemplo|esempio|beispiel|voorbeeld|przyklad|exempel|"
    r"your-?domain|your-?company|domain)\.[a-z]{2,6}|example|test|invalid|localhost)$",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(
    r"^(?:<[^>]*>?|\$\{?[\w.]*\}?|\{\{.*|%[sd]|x{3,}|\*{3,}|\.{3,}|_+|-+|null|none|"
    r"password|passwd|pass|pwd|secret|changeme|your[\w-]*|example[\w-]*|my[\w-]*|"
    r"redacted|\[redacted\]|placeholder|dummy|test|foo|bar|abc|123|1234|12345|123456)$",
    re.IGNORECASE,
)

# (sub-kind, needles of which one must occur (case-sensitive), pattern). Patterns have no
# leading look-behind (so the regex engine can jump to the literal prefix); the character
# before a match is checked in Python instead.
_PROVIDER_KEYS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("anthropic_key", ("sk-ant-",), r"sk-ant-(?:api|admin|oat)\d{2}-[\w-]{20,300}"),
    ("openrouter_key", ("sk-or-",), r"sk-or-v\d-[0-9a-f]{32,128}"),
    ("openai_key", ("sk-",), r"sk-(?:proj-|svcacct-|admin-|None-)?[\w-]{20,300}"),
    ("aws_access_key", ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
     r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Z0-9])"),
    ("github_token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
     r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_\w{22,255})"),
    ("gitlab_token", ("glpat-",), r"glpat-[\w-]{20,100}"),
    ("slack_token", ("xox",), r"xox[abposr]-[A-Za-z0-9-]{10,250}"),
    ("slack_webhook", ("hooks.slack.com",), r"https://hooks\.slack\.com/services/[\w/]{20,200}"),
    ("google_api_key", ("AIza",), r"AIza[\w-]{35}"),
    ("stripe_key", ("_live_",), r"(?:sk|rk)_live_[0-9A-Za-z]{16,250}"),
    ("stripe_key", ("_test_",), r"(?:sk|rk)_test_[0-9A-Za-z]{16,250}"),
    ("huggingface_token", ("hf_",), r"hf_[A-Za-z0-9]{30,60}"),
    ("npm_token", ("npm_",), r"npm_[A-Za-z0-9]{36}"),
    ("groq_key", ("gsk_",), r"gsk_[A-Za-z0-9]{40,60}"),
    ("xai_key", ("xai-",), r"xai-[A-Za-z0-9]{60,100}"),
    ("sendgrid_key", ("SG.",), r"SG\.[\w-]{22}\.[\w-]{43}"),
    ("twilio_key", ("SK",), r"SK[0-9a-f]{32}(?![\w])"),
)  # fmt: skip

_SECRET_WORD = (
    r"api[_-]?key|apikey|secret|token|passw(?:or)?d|passwort|kennwort|passphrase|pwd|"
    r"pw\b|credentials?|accountkey|sharedaccesskey|access[_-]?key|private[_-]?key|auth"
)  # literals first, no \b: the regex engine skips to their letters ("pw" checked per match)
_PASSWORD_WORDS = ("pass", "pw", "kennwort")
_PHONE_WORDS = re.compile(
    r"(?:\btel|phone|\bcall|mobile|\bcell|\bfax|handy|telefon|t[ée]l[ée]phone|whatsapp|\bsms|"
    r"\bring|reach (?:me|him|her|us)|\bmob|hotline|\bdial|rückruf|callback|portable|m[óo]vil|"
    r"cellulare|mobiel|bel me|kom[óo]rk|m[óo]j numer|my number|meine nummer|mon numéro|"
    r"mi número|il mio numero|mijn nummer|mitt nummer|llámame|chiamami|zadzwoń)",
)
_NOT_PHONE_WORDS = re.compile(
    r"(?:order|invoice|ticket|serial|part|\bpo\b|item|sku|\bref|batch|\blot\b|case|version|"
    r"\bv\d|article|artikel|auftrag|bestell|material|asset|tag|id\b|#)"
)
_ID_WORDS = re.compile(
    r"(?:ssn|social security|bsn|burgerservice|sofinummer|steuer|idnr|identifikationsnummer|"
    r"tax id|tax number|tin\b|pesel|national id|personal id|id number|id no|identity)"
)  # literals first (fast); "tin" must start a word, checked in _id_word
_WORDISH = re.compile(r"[\w-]")
_HEX_COLON = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f:]")  # some IPv6 shape before the full pattern
_VERSION_BEFORE = re.compile(r"(?:\bv|\bver\.?|version|release|firmware|build)\s{0,2}$")
_DATE = re.compile(r"^\d{1,4}([./-])\d{1,2}\1\d{1,4}$")
_US_PHONE = re.compile(r"^(?:\+?1[ .-]?)?\(?[2-9]\d{2}\)?[ .-]?[2-9]\d{2}[ .-]\d{4}$")
_EU_TRUNK = re.compile(r"^\(?0[1-9]\d{0,4}\)?(?:[ /.-]| ?/ ?)\d")


class PatternRules:
    """Every regex rule, compiled once. ``scan(text)`` yields raw hits."""

    def __init__(self) -> None:
        c = re.compile
        self._digit = c(r"\d")
        self._email = c(
            r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@((?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24})"
            r"(?![\w-])"
        )
        self._ipv4 = c(
            r"\d(?<![\w.]\d)\d{0,2}\.(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){2}"
            r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:/\d{1,2})?(?![\w]|\.\d)"
        )
        self._ipv6 = c(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
        self._phone = c(
            r"(?<![\w+/.-])(?:\+|00)?(?:\(\d{1,5}\)\d{0,8}|\d{1,15})"
            r"(?:(?:[ .\-/]| ?/ ?|  )(?:\(\d{1,5}\)\d{0,8}|\d{1,8})){0,6}(?![\w-]|[./]\d)"
        )
        # digit groups with separators (spaces, dots, dashes, a line break) between them
        self._digit_chain = c(
            r"\d(?<![\w.,/-]\d)\d{0,18}(?:(?:[ .-]{1,3}| {0,3}\r?\n {0,3})\d{1,19}){0,9}"
        )
        self._digit_group = c(r"\d+")
        # starts on the check digits (the engine then only tries digits); the country code
        # is checked by the look-behind, and the match is extended back over it
        self._iban = c(
            r"\d(?<=(?<![A-Za-z0-9])[A-Za-z]{2}\d)\d"
            r"(?:(?:[ .-]{0,2}| ?\r?\n ?)[A-Za-z0-9]){10,34}"
        )
        self._ssn = c(r"(\d(?<![\d-]\d)\d{2})-(\d{2})-(\d{4})(?![\d-])")
        self._nino = c(
            r"[A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9][A-Z])[A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
            r"(?![A-Za-z0-9])"
        )
        self._nir = c(
            r"[12](?<!\w[12]) ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?![\w])"
        )
        self._dni = c(r"\d(?<!\w\d)\d{7}-?[A-Z](?![\w])")  # one start class each: fast
        self._nie = c(r"[XYZ](?<!\w[XYZ])-?\d{7}-?[A-Z](?![\w])")
        self._cf = c(
            r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]{5}\d{2}[A-EHLMPR-T]\d{2}[A-Z]\d{3}[A-Z](?![A-Za-z0-9])"
        )
        self._pnr = c(r"\d(?<![\d-]\d)(?:\d{2})?\d{5}[-+]\d{4}(?![\d-])")
        self._hetu = c(r"\d(?<!\w\d)\d{5}[-+A-FU-Y]\d{3}[0-9A-FHJ-NPR-Y](?![\w])")
        self._simple_ids: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = (
            (self._nino, lambda r: chk.nino_ok(r.replace(" ", ""))),
            (self._nir, lambda r: chk.nir_ok(r.replace(" ", ""))),
            (self._dni, lambda r: chk.dni_ok(r.replace("-", ""))),
            (self._nie, lambda r: chk.dni_ok(r.replace("-", ""))),
            (self._cf, chk.codice_fiscale_ok),
            (self._pnr, lambda r: chk.personnummer_ok(r.replace("-", "").replace("+", ""))),
            (self._hetu, chk.hetu_ok),
        )
        self._ctx_digits = c(r"\d(?<![\w.-]\d)(?:[ .-]?\d){8,10}(?![\w]|[.-]\d)")
        self._providers = [(sub, needles, c(p)) for sub, needles, p in _PROVIDER_KEYS]
        self._pem = c(r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
        self._jwt = c(r"eyJ[\w-]{8,3000}\.eyJ[\w-]{8,8000}\.[\w-]{8,3000}")
        self._url_cred = c(
            r"(?<![\w+.-])[A-Za-z][A-Za-z0-9+.:-]{1,30}://([^\s:/@]{1,128}):([^\s@/]{1,256})@"
            r"[^\s/?#\"'<>]{1,255}"
        )
        self._secret_word = c(_SECRET_WORD)  # searched in the lower-cased text
        self._assign_tail = c(
            r"[\w.-]{0,24}[\"']?\s{0,3}(?:(?:=>|[:=]|\s(?:is|ist|est|es|was)\b)\s{0,3}[:=]?"
            r"\s{0,3}([\"'`]?)|\s{1,3}([\"'`]))([^\s\"'`,;<>(){}\[\]]{4,256})"
        )
        self._bearer = c(r"Bearer\s{1,3}([\w\-.=+/~]{16,4096})")

    # -- the scan -----------------------------------------------------------------------

    def scan(self, text: str, lower: str) -> list[Hit]:
        """Raw hits; ``lower`` is ``text`` lower-cased with the same length."""
        hits: list[Hit] = []
        if "@" in text or "%40" in text:
            hits.extend(self._emails(text))
        if "://" in text:
            hits.extend(self._url_credentials(text))
        hits.extend(self._secrets(text, lower))
        if self._digit.search(text) is not None:
            hits.extend(self.numbers(text, lower))
        if text.count(":") >= 2 and _HEX_COLON.search(text) is not None:
            hits.extend(self._ipv6s(text))
        return hits

    def numbers(self, text: str, lower: str) -> Iterator[Hit]:
        """Hits of the number rules only (cards, IBANs, IDs, IPs, phones)."""
        yield from self._cards(text)
        yield from self._ibans(text)
        yield from self._national_ids(text, lower)
        yield from self._ipv4s(text, lower)
        yield from self._phones(text, lower)

    # -- contact data -------------------------------------------------------------------

    def _emails(self, text: str) -> Iterator[Hit]:
        if "%40" in text:
            text = text.replace("%40", "%%@")  # URL-encoded: same length, same spans
        for m in self._email.finditer(text):
            domain = m.group(1)
            if reserved_mail(domain) or text.startswith("git@", m.start()):
                continue
            yield "email", m.start(), m.end()

    def _phones(self, text: str, lower: str) -> Iterator[Hit]:
        for m in self._phone.finditer(text):
            s, e = m.span()
            raw = m.group()
            n = sum(ch.isdigit() for ch in raw)
            if n < 7 or n > 15 or _DATE.match(raw):
                continue
            before = lower[max(0, s - 32) : s]
            context = _PHONE_WORDS.search(before) is not None
            intl = raw[0] == "+" or (raw.startswith("00") and n >= 10)
            shaped = _US_PHONE.match(raw) is not None or (
                _EU_TRUNK.match(raw) is not None and 9 <= n <= 12
            )
            if _reserved_phone(raw):
                continue
            if context or ((intl or shaped) and not _NOT_PHONE_WORDS.search(before[-20:])):
                yield "phone", s, e

    def _ipv4s(self, text: str, lower: str) -> Iterator[Hit]:
        for m in self._ipv4.finditer(text):
            s, e = m.span()
            raw = m.group().split("/")[0]
            if (
                _VERSION_BEFORE.search(lower, max(0, s - 12), s)
                or max(map(len, raw.split("."))) == 1
            ):
                continue  # v1.2.3.4, version 10.0.2.1, 1.2.4.0
            if _ip_public_interest(raw):
                yield "ip_address", s, e

    def _ipv6s(self, text: str) -> Iterator[Hit]:
        for m in self._ipv6.finditer(text):
            raw = m.group()
            groups = sum(1 for g in raw.split(":") if g)
            if ("::" not in raw and raw.count(":") < 7) or groups < 2:
                continue  # also [::50] slices, a::b scopes
            if not any(ch.isdigit() for ch in raw) or _ip_public_interest(raw) is False:
                continue
            yield "ip_address", m.start(), m.end()

    # -- financial ----------------------------------------------------------------------

    def _cards(self, text: str) -> Iterator[Hit]:
        """Card numbers in runs of digit groups: any separators, any grouping, as long as
        every group but the last has three or more digits (so lists of small numbers and
        dates do not add up to a card)."""
        for m in self._digit_chain.finditer(text):
            if m.end() - m.start() < 13:
                continue
            groups = [(g.start(), g.end()) for g in self._digit_group.finditer(text, *m.span())]
            i = 0
            while i < len(groups):
                j = _card_window(text, groups, i)
                if j is None:
                    i += 1
                    continue
                yield "payment_card", groups[i][0], groups[j][1]
                i = j + 1

    def _ibans(self, text: str) -> Iterator[Hit]:
        for m in self._iban.finditer(text):
            start = m.start() - 2
            raw = text[start : m.end()]
            length = chk.IBAN_LENGTHS.get(raw[:2].upper())
            if length is None:
                continue
            keep = [i for i, ch in enumerate(raw) if ch.isalnum()][:length]
            compact = "".join(raw[i] for i in keep).upper()
            if len(compact) == length and chk.iban_ok(compact):
                yield "iban", start, start + keep[-1] + 1

    # -- national identifiers -----------------------------------------------------------

    def _national_ids(self, text: str, lower: str) -> Iterator[Hit]:
        for m in self._ssn.finditer(text):
            if chk.ssn_ok(m.group(1), m.group(2), m.group(3)):
                yield "national_id", m.start(), m.end()
        for pattern, valid in self._simple_ids:
            for m in pattern.finditer(text):
                if valid(m.group()):
                    yield "national_id", m.start(), m.end()
        if not _id_word(lower, 0, len(lower)):
            return
        for m in self._ctx_digits.finditer(text):
            s = m.start()
            if not _id_word(lower, max(0, s - 48), s):
                continue
            digits = re.sub(r"[ .-]", "", m.group())
            if _context_id_ok(digits):
                yield "national_id", s, m.end()

    # -- secrets ------------------------------------------------------------------------

    def _secrets(self, text: str, lower: str) -> Iterator[Hit]:
        for sub, needles, pattern in self._providers:
            if any(needle in text for needle in needles):
                for m in pattern.finditer(text):
                    if (m.start() and _WORDISH.match(text, m.start() - 1)) or _filler(m.group()):
                        continue
                    if sub != "openai_key" or _mixed(m.group()[3:]):
                        yield f"secret:{sub}", m.start(), m.end()
        if "PRIVATE KEY" in text:
            yield from self._private_keys(text)
        if "eyJ" in text:
            for m in self._jwt.finditer(text):
                yield "secret:jwt", m.start(), m.end()
        if "Bearer" in text:
            for m in self._bearer.finditer(text):
                if _looks_secret(m.group(1)):
                    yield "secret:token", m.start(1), m.end(1)
        yield from self._assignments(text, lower)

    def _private_keys(self, text: str) -> Iterator[Hit]:
        for m in self._pem.finditer(text):
            end = text.find("-----END", m.end(), m.end() + 16384)
            if end < 0:
                yield "secret:private_key", m.start(), min(len(text), m.end() + 4096)
                continue
            close = text.find("-----", end + 8, end + 80)
            yield "secret:private_key", m.start(), (close + 5) if close >= 0 else end + 8

    def _url_credentials(self, text: str) -> Iterator[Hit]:
        for m in self._url_cred.finditer(text):
            password = m.group(2)
            if not _PLACEHOLDER.match(password):
                yield "secret:connection_string", m.start(), m.end()

    def _assignments(self, text: str, lower: str) -> Iterator[Hit]:
        """``password: x``, ``api_key = "..."``, ``Passwort ist ...``: the value is the hit."""
        if not any(w in lower for w in ("pass", "pw", "key", "secret", "token", "cred", "auth")):
            return
        for m in self._secret_word.finditer(lower):
            if m.group() == "pw" and m.start() and lower[m.start() - 1].isalnum():
                continue  # "pw" must start a word
            tail = self._assign_tail.match(text, m.end())
            if tail is None:
                continue
            quoted, value = tail.group(1) or tail.group(2), tail.group(3)
            word = m.group().lower()
            if any(w in word for w in _PASSWORD_WORDS):
                if _looks_password(value, bool(quoted)):
                    yield "secret:password", tail.start(3), tail.end(3)
            elif _looks_secret(value):
                yield "secret:api_key", tail.start(3), tail.end(3)


# -- helpers ----------------------------------------------------------------------------

_DOC_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def _ip_public_interest(raw: str) -> bool | None:
    """True for an address worth protecting; False for reserved/doc ones; None if invalid."""
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if ip.is_loopback or ip.is_unspecified or any(ip in net for net in _DOC_NETS):
        return False
    return not (ip.version == 4 and raw.startswith("255."))


def reserved_mail(domain: str) -> bool:
    """A documentation or placeholder domain (example.com, ejemplo.es, *.test, ...)."""
    return _RESERVED_MAIL.search(domain) is not None


def _card_window(text: str, groups: list[tuple[int, int]], i: int) -> int | None:
    """The last group j such that groups i..j spell a valid card number, or None."""
    digits = ""
    for j in range(i, len(groups)):
        s, e = groups[j]
        digits += text[s:e]
        if len(digits) > 19:
            return None
        if len(digits) >= 13 and chk.card_ok(digits):
            return j
        if e - s < 3:
            return None  # only the last group may be short
    return None


_FICTION_PHONE = re.compile(r"(?:\+?1)?(?:\d{3})?55501\d\d$")


def _reserved_phone(raw: str) -> bool:
    """555-0100..0199 (reserved for fiction and documentation) and all-zero numbers."""
    digits = "".join(ch for ch in raw if ch.isdigit())
    if _FICTION_PHONE.match(digits):
        return True
    rest = digits[3:]  # past a country or trunk code
    return len(rest) >= 6 and max(rest.count(d) for d in set(rest)) >= len(rest) - 1


def _filler(value: str) -> bool:
    """A placeholder key: one character (x, X, 0, *) makes up most of it."""
    body = value[-16:]
    return max(body.count(ch) for ch in set(body)) >= 12


def _id_word(lower: str, start: int, end: int) -> bool:
    """An identifier word in ``lower[start:end]`` ("tin" only as a word of its own)."""
    for m in _ID_WORDS.finditer(lower, start, end):
        if m.group() != "tin" or not m.start() or not lower[m.start() - 1].isalpha():
            return True
    return False


def _context_id_ok(digits: str) -> bool:
    if len(digits) == 9:
        return chk.bsn_ok(digits) or chk.ssn_ok(digits[:3], digits[3:5], digits[5:])
    if len(digits) == 11:
        return chk.steuer_id_ok(digits) or chk.pesel_ok(digits)
    return False


def _mixed(value: str) -> bool:
    """At least two of lower/upper/digit: real keys are; words and identifiers mostly not."""
    classes = (
        any(ch.islower() for ch in value)
        + any(ch.isupper() for ch in value)
        + any(ch.isdigit() for ch in value)
    )
    return classes >= 2


def _looks_secret(value: str) -> bool:
    if len(value) < 16 or _PLACEHOLDER.match(value) or not _mixed(value):
        return False
    if "." in value and value.replace(".", "").replace("_", "").isalpha():
        return False  # os.environ.get, settings.api_key
    return len(set(value)) >= 8


_CODE_REF = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|%\w+%|\$\w+")


def _looks_password(value: str, quoted: bool) -> bool:
    if _PLACEHOLDER.match(value) or len(value) > 128 or _CODE_REF.fullmatch(value):
        return False  # placeholders, getpass.getpass, os.environ.get, %PASSWORD%
    if quoted:
        return True
    has_digit = any(ch.isdigit() for ch in value)
    has_symbol = any(not ch.isalnum() for ch in value)
    return len(value) >= 6 and (has_digit or has_symbol or _mixed(value[1:]))
