"""Normalisation: separators, spelled digits, at/dot words, encodings, values split across
messages. Findings always index the original text."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierlm.signals import SensitivityDetector, scan_view
from tierlm.signals.sensitivity_checks import card_ok, iban_ok
from tierlm.types import ChatRequest, Message

DET = SensitivityDetector(["Project Falcon", "Kestrel-7"])
SEPARATORS = [" ", "\u00a0", "  ", "-", ".", "\t", "\n", " \n", "\u202f", ""]


def found(text: str) -> dict[str, str]:
    """{value: kind} of every finding (the test may look at values; the detector never)."""
    return {text[f.start : f.end]: f.kind for f in DET.scan_text(text)}


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if card_ok(body + check):
            return body + check
    raise AssertionError(body)


@settings(max_examples=150, deadline=None)
@given(
    body=st.text("0123456789", min_size=14, max_size=14),
    seps=st.lists(st.sampled_from(SEPARATORS), min_size=3, max_size=3),
    before=st.sampled_from(["card ", "Karte: ", "my card is ", "n° ", ""]),
)
def test_any_valid_card_with_any_separators_is_found(
    body: str, seps: list[str], before: str
) -> None:
    number = _luhn_complete("4" + body)
    groups = [number[i : i + 4] for i in range(0, 16, 4)]
    written = groups[0] + "".join(sep + g for sep, g in zip(seps, groups[1:], strict=True))
    text = f"{before}{written}, exp 09/28"
    cards = [f for f in DET.scan_text(text) if f.kind == "payment_card"]
    assert len(cards) == 1, (text, DET.scan_text(text))
    span = text[cards[0].start : cards[0].end]
    assert "".join(ch for ch in span if ch.isdigit()) == number


def _iban(country: str, bban: str) -> str:
    check = 98 - int("".join(str(int(ch, 36)) for ch in bban + country + "00")) % 97
    return f"{country}{check:02d}{bban}"


@settings(max_examples=100, deadline=None)
@given(
    bban=st.text("0123456789", min_size=18, max_size=18),
    sep=st.sampled_from(SEPARATORS),
    lower=st.booleans(),
)
def test_any_valid_iban_lower_case_or_separated_is_found(bban: str, sep: str, lower: bool) -> None:
    iban = _iban("DE", bban)
    assert iban_ok(iban)
    written = sep.join(iban[i : i + 4] for i in range(0, len(iban), 4))
    written = written.lower() if lower else written
    text = f"Bitte überweise an {written} bis Freitag."
    ibans = [f for f in DET.scan_text(text) if f.kind == "iban"]
    assert len(ibans) == 1, text
    assert "".join(ch for ch in text[ibans[0].start : ibans[0].end] if ch.isalnum()).upper() == iban


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=0, max_size=300), st.sampled_from(["4111 1111 1111 1111", "a@firma.de", ""])
)
def test_spans_always_index_the_original_text(noise: str, value: str) -> None:
    text = f"{noise} {value} {noise[::-1]}"
    findings = DET.scan_text(text)
    previous_end = 0
    for f in findings:
        assert previous_end <= f.start < f.end <= len(text)
        previous_end = f.end
    if value and not any(ch.isdigit() or ch in "@%" for ch in noise):  # noise cannot extend it
        assert any(text[f.start : f.end] == value for f in findings)
        assert value not in DET.redact(text)


DIGITS = {
    "en": "zero one two three four five six seven eight nine",
    "de": "null eins zwei drei vier fünf sechs sieben acht neun",
    "fr": "zéro un deux trois quatre cinq six sept huit neuf",
    "es": "cero uno dos tres cuatro cinco seis siete ocho nueve",
    "it": "zero uno due tre quattro cinque sei sette otto nove",
    "nl": "nul één twee drie vier vijf zes zeven acht negen",
    "pl": "zero jeden dwa trzy cztery pięć sześć siedem osiem dziewięć",
    "sv": "noll ett två tre fyra fem sex sju åtta nio",
}


@pytest.mark.parametrize("lang", sorted(DIGITS))
def test_card_spelled_digit_by_digit_in_each_language(lang: str) -> None:
    words = DIGITS[lang].split()
    spelled = " ".join(words[int(d)] for d in "4012888888881881")
    text = f"Card: {spelled}."
    assert found(text) == {spelled: "payment_card"}


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("Mon portable : zéro six douze trente-quatre cinquante-six soixante-dix-huit.",
         "zéro six douze trente-quatre cinquante-six soixante-dix-huit", "phone"),
        ("Mój numer to sześćset jeden dwieście trzydzieści cztery pięćset sześćdziesiąt siedem.",
         "sześćset jeden dwieście trzydzieści cztery pięćset sześćdziesiąt siedem", "phone"),
        ("Call me on plus four four seven seven zero zero nine zero zero one two three.",
         "plus four four seven seven zero zero nine zero zero one two three", "phone"),
        ("IBAN: D E acht neun drei sieben null vier null null vier vier null fünf drei zwei null "
         "eins drei null null null",
         "D E acht neun drei sieben null vier null null vier vier null fünf drei zwei null eins "
         "drei null null null", "iban"),
    ],
)  # fmt: skip
def test_numbers_spelled_in_words(text: str, value: str, kind: str) -> None:
    assert found(text) == {value: kind}


def test_a_few_number_words_in_prose_are_not_numbers() -> None:
    text = "We need two or three people, one at each of the four presses, for five days."
    assert found(text) == {}


@pytest.mark.parametrize(
    "value",
    [
        "john dot smith at gmail dot com",
        "anna punkt weiss ät posteo punkt de",
        "claire point dubois arobase orange point fr",
        "e . adeyemi @ outlook . com",
        "m.berger(at)stadtwerke-ulm(dot)de",
        "r.okafor [at] protonmail [dot] com",
        "lucia punto moreno arroba gmail punto com",
        "giulia chiocciola libero punto it",
        "pieter punt jansen apenstaartje ziggo punt nl",
        "tomasz kropka nowak małpa wp kropka pl",
        "erik punkt lund snabel-a telia punkt se",
        "john.doe%40gmail.com",
    ],
)
def test_addresses_written_with_at_and_dot_words(value: str) -> None:
    text = f"Please write to {value} today."
    assert found(text) == {value: "email"}


@pytest.mark.parametrize(
    "text",
    [
        "The pump at station point de livraison is down.",
        "Meet me at the office dot matrix printer.",
        "Write to prenom.nom@example.fr or jane (at) example (dot) org in the docs.",
        "Punkt 3 der Tagesordnung: Wartung at Linie 2.",
    ],
)
def test_at_and_dot_prose_is_not_an_address(text: str) -> None:
    assert found(text) == {}


def test_configured_terms_with_other_spacing() -> None:
    for text in (
        "Project\u00a0Falcon",
        "project-falcon",
        "Project  Falcon",
        "Kestrel 7",
        "kestrel_7",
    ):
        assert set(found(f"Status of {text}?").values()) == {"org_term"}, text
    assert found("Projects of falconry") == {}


def test_base64_encodings() -> None:
    token = base64.b64encode(b"admin:SuperSecret123").decode()
    assert found(f'curl -H "Authorization: Basic {token}" https://h') == {
        token: "secret:basic_auth"
    }
    blob = base64.b64encode(b"card 4111 1111 1111 1111 please").decode()
    assert found(f"decode this: {blob}") == {blob: "payment_card"}
    harmless = base64.b64encode(b"Hello world, nothing here").decode()
    assert found(f"decode this: {harmless}") == {}


def _split_request(first: str, second: str) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="user", content=first), Message(role="user", content=second)]
    )


@pytest.mark.parametrize(
    ("first", "second", "pieces"),
    [
        ("My card: 4111 1111", "1111 1111", ("4111 1111", "1111 1111")),
        ("First part of my card: 4111 1111", "second part: 1111 1111", ("4111 1111", "1111 1111")),
        ("My SSN is 536-22", "-8714, sorry it got cut", ("536-22", "-8714")),
        ("Meine Nummer: +49 171", "4829305", ("+49 171", "4829305")),
    ],
)
def test_values_split_across_two_messages(first: str, second: str, pieces: tuple[str, str]) -> None:
    """One finding in each message, each span in its own message; redaction covers both."""
    request = _split_request(first, second)
    findings = DET.scan(request)
    got = {
        (f.message_index, scan_view(request.messages[f.message_index])[f.start : f.end])
        for f in findings
    }
    assert got == {(0, pieces[0]), (1, pieces[1])}
    redacted = DET.redact_request(request)
    assert pieces[0] not in redacted.messages[0].text
    assert pieces[1] not in redacted.messages[1].text


def test_split_api_key_across_messages() -> None:
    request = _split_request(
        "Here is our Datadog API key, first half a3f9c2e7b18d4f60",
        "and the second half 9e1d7c3b5a2f8e04, please set up the integration.",
    )
    assert {f.message_index for f in DET.scan(request)} == {0, 1}


def test_unrelated_consecutive_messages_do_not_combine() -> None:
    request = _split_request("Order 4500", "12877 please check the status.")
    assert DET.scan(request) == []
