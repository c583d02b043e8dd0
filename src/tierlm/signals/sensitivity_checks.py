"""Checksum validators for the identifiers the sensitivity detector finds.

Pure functions on the digits/characters of a candidate (separators already removed). A
candidate that fails its checksum is not reported, which keeps order numbers, part numbers
and other digit runs from being taken for cards, IBANs or national IDs.

National IDs covered: US SSN (issuance rules), UK National Insurance number (prefix rules),
German Steuer-ID (ISO 7064 mod 11,10), Dutch BSN (11-proof), French NIR (mod 97 key),
Spanish DNI/NIE (mod 23 letter), Italian codice fiscale (check letter), Polish PESEL
(weighted mod 10), Swedish personnummer (Luhn + date), Finnish HETU (mod 31 + date).
"""

from __future__ import annotations

IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment cards and Swedish personnummer."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_prefix_ok(digits: str) -> bool:
    """Whether the number starts like a card of a known network (IIN ranges) at its length."""
    n = len(digits)
    p2, p4 = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p2 in (34, 37):
        return n == 15  # Amex
    if p2 in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19  # Diners
    if digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649 or p2 == 62:
        return 16 <= n <= 19  # Discover, UnionPay
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19  # JCB
    if p2 in (50, 56, 57, 58, 63, 67) or digits.startswith("6304"):
        return 12 <= n <= 19  # Maestro
    return False


def card_ok(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and card_prefix_ok(digits) and luhn_ok(digits)


def iban_ok(compact: str) -> bool:
    """ISO 13616: the country's length and the mod-97 check (remainder 1)."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """US SSN issuance rules: no area 000, 666 or 9xx, no group 00, no serial 0000."""
    return (
        area not in ("000", "666")
        and area[0] != "9"
        and group != "00"
        and serial != "0000"
        and f"{area}{group}{serial}" not in ("078051120", "123456789")  # famous examples
    )


_NINO_BAD_PREFIX = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def nino_ok(compact: str) -> bool:
    """UK NINO prefix rules (the letter classes are enforced by the pattern)."""
    return compact[:2] not in _NINO_BAD_PREFIX


def steuer_id_ok(digits: str) -> bool:
    """German tax ID (11 digits): ISO 7064 mod 11,10 and the digit-repetition rule."""
    if len(digits) != 11 or digits[0] == "0":
        return False
    counts = [digits[:10].count(d) for d in set(digits[:10])]
    if not (max(counts) in (2, 3) and sum(1 for c in counts if c > 1) == 1):
        return False
    product = 10
    for ch in digits[:10]:
        total = (int(ch) + product) % 10 or 10
        product = (total * 2) % 11
    check = (11 - product) % 10
    return check == int(digits[10])


def bsn_ok(digits: str) -> bool:
    """Dutch BSN (9 digits): the 11-proof with a negative last weight."""
    if len(digits) != 9 or digits == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True))
    return (total - int(digits[8])) % 11 == 0


def nir_ok(compact: str) -> bool:
    """French NIR (15 characters): key = 97 - (first 13 as a number) mod 97; 2A/2B for Corsica."""
    if len(compact) != 15 or compact[0] not in "12":
        return False
    body = compact[:13].replace("2A", "19").replace("2B", "18")
    if not body.isdigit() or not compact[13:].isdigit():
        return False
    return 97 - int(body) % 97 == int(compact[13:])


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def dni_ok(compact: str) -> bool:
    """Spanish DNI (8 digits + letter) or NIE (X/Y/Z + 7 digits + letter): mod-23 letter."""
    head = compact[:-1]
    if head[0] in "XYZ":
        head = str("XYZ".index(head[0])) + head[1:]
    return head.isdigit() and _DNI_LETTERS[int(head) % 23] == compact[-1]


_CF_ODD = {
    **dict(zip("0123456789", (1, 0, 5, 7, 9, 13, 15, 17, 19, 21), strict=True)),
    **dict(
        zip(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10,
             22, 25, 24, 23),
            strict=True,
        )
    ),
}  # fmt: skip


def codice_fiscale_ok(code: str) -> bool:
    """Italian codice fiscale (16 characters): the check letter over odd/even positions."""
    total = 0
    for i, ch in enumerate(code[:15]):
        if i % 2 == 0:  # 1st, 3rd, ... (odd in 1-based terms)
            total += _CF_ODD[ch]
        else:
            total += int(ch) if ch.isdigit() else ord(ch) - 65
    return chr(65 + total % 26) == code[15]


def pesel_ok(digits: str) -> bool:
    """Polish PESEL (11 digits): weights 1,3,7,9 repeated, check = (10 - sum) mod 10."""
    if len(digits) != 11:
        return False
    weights = (1, 3, 7, 9, 1, 3, 7, 9, 1, 3)
    total = sum(int(d) * w for d, w in zip(digits[:10], weights, strict=True))
    month = int(digits[2:4]) % 20
    return 1 <= month <= 12 and (10 - total % 10) % 10 == int(digits[10])


def _date_ok(day: int, month: int) -> bool:
    return 1 <= month <= 12 and 1 <= day <= 31


def personnummer_ok(digits: str) -> bool:
    """Swedish personnummer: YYMMDD + 4 digits (10) or YYYYMMDD + 4 (12); Luhn on the last 10."""
    ten = digits[-10:]
    day = int(ten[4:6])
    day = day - 60 if day > 60 else day  # samordningsnummer
    return _date_ok(day, int(ten[2:4])) and luhn_ok(ten)


_HETU_CHECK = "0123456789ABCDEFHJKLMNPRSTUVWXY"


def hetu_ok(code: str) -> bool:
    """Finnish HETU: DDMMYY, century sign, NNN, check character = number mod 31."""
    digits = code[:6] + code[7:10]
    if not digits.isdigit() or not _date_ok(int(code[:2]), int(code[2:4])):
        return False
    return _HETU_CHECK[int(digits) % 31] == code[10]
