"""The sensitivity signal: every detector, checksums, spans, redaction, the labelled set."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from tierlm.signals import SensitivityDetector, count_kinds, scan_view
from tierlm.signals.sensitivity_checks import iban_ok, luhn_ok
from tierlm.types import ChatRequest, Message, ToolCall

DATA = Path(__file__).parent / "data" / "sensitivity_prompts.jsonl"
TERMS = ("Project Falcon", "Kestrel-7", "Northwind Pharma")


@pytest.fixture(scope="module")
def det() -> SensitivityDetector:
    return SensitivityDetector(TERMS)


def kinds_of(det: SensitivityDetector, text: str) -> dict[str, str]:
    """{value: kind} of every finding (the test may look at values; the detector never)."""
    return {text[f.start : f.end]: f.kind for f in det.scan_text(text)}


# (text, the exact value that must be found, its kind)
POSITIVES = [
    ("Mail john.doe@acme-corp.de today", "john.doe@acme-corp.de", "email"),
    ("call +49 171 4829305 now", "+49 171 4829305", "phone"),
    ("callback (415) 555-2671 please", "(415) 555-2671", "phone"),
    ("Tel. 030 84719220 hotline", "030 84719220", "phone"),
    ("card 4111 1111 1111 1111 exp 09/28", "4111 1111 1111 1111", "payment_card"),
    ("amex 3782 822463 10005.", "3782 822463 10005", "payment_card"),
    ("pay to 5555555555554444 now", "5555555555554444", "payment_card"),
    ("IBAN DE89 3704 0044 0532 0130 00 EUR", "DE89 3704 0044 0532 0130 00", "iban"),
    ("IBAN GB82WEST12345698765432.", "GB82WEST12345698765432", "iban"),
    ("SSN 536-22-8714 on file", "536-22-8714", "national_id"),
    ("NINO JG 10 37 24 D ok", "JG 10 37 24 D", "national_id"),
    ("DNI 48213907L listo", "48213907L", "national_id"),
    ("CF RSSMRA85T10A562S ok", "RSSMRA85T10A562S", "national_id"),
    ("HETU 131052-308T ok", "131052-308T", "national_id"),
    ("personnummer 850709-9805 ok", "850709-9805", "national_id"),
    ("BSN: 111222333 ok", "111222333", "national_id"),
    ("PLC at 10.14.2.37 down", "10.14.2.37", "ip_address"),
    ("camera fe80::1ff:fe23:4567:890a lost", "fe80::1ff:fe23:4567:890a", "ip_address"),
    (
        "key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z done",
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
        "secret:openai_key",
    ),
    (
        "k=sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe-AA end",
        "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe-AA",
        "secret:anthropic_key",
    ),
    ("id AKIAT1EEOFRC8JH0MYVU x", "AKIAT1EEOFRC8JH0MYVU", "secret:aws_access_key"),
    (
        "t ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8 x",
        "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "secret:github_token",
    ),
    ("s xoxb-123456789012-abcDEF123456 x", "xoxb-123456789012-abcDEF123456", "secret:slack_token"),
    (
        "g AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q x",
        "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        "secret:google_api_key",
    ),
    ("password: Sommer2024! please", "Sommer2024!", "secret:password"),
    ("Mein Passwort ist Sonnenblume#12.", "Sonnenblume#12.", "secret:password"),
    ('api_key: "Zq8xW3vB7nM2kL9pR4tY6uI1"', "Zq8xW3vB7nM2kL9pR4tY6uI1", "secret:api_key"),
    (
        "postgresql://mes:Gr33nValve@db01.plant.internal:5432/mes",
        "postgresql://mes:Gr33nValve@db01.plant.internal:5432",
        "secret:connection_string",
    ),
    (
        "tok eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9P end",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9P",
        "secret:jwt",
    ),
    ("The salary of Thomas Becker rises in May", "Thomas Becker", "person_name"),
    ("Dr. Weber is on sick leave", "Dr. Weber", "person_name"),
    ("Frau Müller ist krankgeschrieben", "Frau Müller", "person_name"),
    ("My name is Jonas Lindqvist, born 12.03.1990.", "Jonas Lindqvist", "person_name"),
    (
        "Kontakt: Dr. med. Hans-Peter Schäfer, Tel. 030 84719220",
        "Dr. med. Hans-Peter Schäfer",
        "person_name",
    ),
    ("Cliente: José Álvarez García, DNI 48213907L", "José Álvarez García", "person_name"),
    ("Handy von Herrn Yilmaz: 0151 23456789", "Herrn Yilmaz", "person_name"),
    ("My colleague was diagnosed with epilepsy", "diagnosed with", "health"),
    ("the technician has diabetes", "diabetes", "health"),
    ("Status of project falcon?", "project falcon", "org_term"),
    ("The Kestrel-7 margin", "Kestrel-7", "org_term"),
]


@pytest.mark.parametrize(("text", "value", "kind"), POSITIVES)
def test_each_detector_finds_the_exact_span(
    det: SensitivityDetector, text: str, value: str, kind: str
) -> None:
    assert kinds_of(det, text).get(value) == kind, kinds_of(det, text)


NEGATIVES = [
    "Order number 4500012877 was delivered partially.",
    "Part no. 445-221-3390 is out of stock.",
    "Upgrade from version 2.14.3 to 3.0.1; firmware v1.2.3.4.",
    "Maintenance window 2024-11-23 22:00 to 04:00.",
    "UUID 3f1c9a7e-2b4d-4c8e-9f0a-1b2c3d4e5f60 twice",
    "user@example.com and noreply@test.invalid are placeholders",
    "docs use 192.0.2.10, 2001:db8::1, 127.0.0.1 and 255.255.255.0",
    "git@github.com:acme/mes-config.git rejects my push",
    "api_key = os.environ['OPENAI_API_KEY']",
    "Replace YOUR_API_KEY_HERE with your key",
    "Our password policy requires 12 characters.",
    "postgres://user:password@localhost/db is the sample",
    "What are the common symptoms of type 2 diabetes?",
    "Ask Anna about it. Thanks, John.",
    "The Jordan Valve regulator and the May Report.",
    "std::vector<int>::iterator and 12:30:45.123 and 00:1A:2B:3C:4D:5E and reqs[::50]",
    "def resolve(self, name: Any, patient: Optional[str]) -> str: ...",
    "password = getpass.getpass(); token = os.environ.get('TOKEN'); pw=%DB_PW%",
    "self.secret_key = settings.SECRET_KEY; headers = {'Authorization': 'Bearer ${TOKEN}'}",
    "SHA d41d8cd98f00b204e9800998ecf8427e and commit a3f5c9e2b7d14e6f8a9b0c1d2e3f4a5b6c7d8e9f",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_hard_negatives_are_not_findings(det: SensitivityDetector, text: str) -> None:
    assert kinds_of(det, text) == {}


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("4111 1111 1111 1111", "4111 1111 1111 1112"),
        ("5555555555554444", "5555555555554445"),
        ("DE89 3704 0044 0532 0130 00", "DE88 3704 0044 0532 0130 00"),
        ("GB82WEST12345698765432", "GB82WEST12345698765433"),
        ("file 536-22-8714", "file 666-22-8714"),
        ("file 536-22-8714", "file 536-00-8714"),
        ("DNI 48213907L", "DNI 48213907M"),
        ("CF RSSMRA85T10A562S", "CF RSSMRA85T10A562T"),
        ("NINO JG 10 37 24 D", "NINO GB 10 37 24 D"),
        ("HETU 131052-308T", "HETU 131052-308U"),
    ],
)
def test_checksums_separate_valid_from_invalid(
    det: SensitivityDetector, good: str, bad: str
) -> None:
    assert det.scan_text(good), good
    assert det.scan_text(bad) == [], bad


def test_checksum_functions_directly() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert not iban_ok("DE8937040044053201300")  # wrong length for DE


def test_context_gated_ids_need_their_word(det: SensitivityDetector) -> None:
    assert det.scan_text("Steuer-ID 12345678995")  # valid mod 11,10
    assert det.scan_text("reference 12345678995 in the ledger") == []
    assert det.scan_text("PESEL 89071412349")
    assert det.scan_text("order 89071412349") == []


def test_findings_never_carry_values(det: SensitivityDetector) -> None:
    text = "SSN 536-22-8714, mail a.b@firma.de, key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    findings = det.scan_text(text)
    assert len(findings) == 3
    dumped = repr(findings) + str(findings) + json.dumps([f.to_dict() for f in findings])
    for value in ("536-22-8714", "a.b@firma.de", "sk-proj", "8714", "firma"):
        assert value not in dumped
    assert "Falcon" not in repr(det) and "Kestrel" not in repr(det)
    assert count_kinds(findings) == {"national_id": 1, "email": 1, "secret:openai_key": 1}


def test_overlaps_keep_the_stronger_kind(det: SensitivityDetector) -> None:
    text = "use smtp://alerts:Mailer2024x@smtp.plant-mail.de:587 and 10.1.1.5"
    findings = det.scan_text(text)
    assert [f.kind for f in findings] == ["secret:connection_string", "ip_address"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


def test_redact_replaces_each_span(det: SensitivityDetector) -> None:
    text = "Mail j.ortega@globalparts.es, card 4111 1111 1111 1111, pw: Qw3rty!!x"
    out = det.redact(text)
    assert out == "Mail [EMAIL], card [PAYMENT_CARD], pw: [SECRET:PASSWORD]"
    assert det.scan_text(out) == []
    assert det.redact("nothing here") == "nothing here"


def _request() -> ChatRequest:
    return ChatRequest(
        messages=[
            Message(role="system", content="You help plant staff."),
            Message(
                role="user",
                content=[
                    {"type": "text", "text": "Ask Thomas Becker"},
                    {"type": "text", "text": "ok"},
                ],
            ),
            Message(
                role="assistant",
                tool_calls=[
                    ToolCall(
                        id="c1",
                        function={
                            "name": "send_mail",
                            "arguments": json.dumps({"to": "m.keller@rheinwerk.de", "n": 3}),
                        },
                    )
                ],
            ),
            Message(role="tool", tool_call_id="c1", content="sent from host 10.14.2.37"),
            Message(role="user", content=""),
        ]
    )


def test_scan_request_covers_parts_tool_calls_and_tool_results(det: SensitivityDetector) -> None:
    request = _request()
    findings = det.scan(request)
    got = {
        (f.message_index, scan_view(request.messages[f.message_index])[f.start : f.end], f.kind)
        for f in findings
    }
    assert got == {
        (1, "Thomas Becker", "person_name"),
        (2, "m.keller@rheinwerk.de", "email"),
        (3, "10.14.2.37", "ip_address"),
    }


def test_redact_request_is_a_redacted_copy(det: SensitivityDetector) -> None:
    request = _request()
    before = request.model_dump()
    redacted = det.redact_request(request)
    assert request.model_dump() == before  # the original is untouched
    assert det.scan(redacted) == []
    assert redacted.messages[1].text == "Ask [PERSON_NAME]\nok"
    args = json.loads(redacted.messages[2].tool_calls[0].function["arguments"])  # type: ignore[index]
    assert args == {"to": "[EMAIL]", "n": 3}
    assert redacted.messages[3].text == "sent from host [IP_ADDRESS]"


def test_switches_and_terms() -> None:
    plain = SensitivityDetector(names=False, health=False)
    text = "Thomas Becker was diagnosed with asthma; Project Falcon"
    assert plain.scan_text(text) == []  # a name alone is not a finding
    full = SensitivityDetector(["Project Falcon", "  ", ""])
    assert {f.kind for f in full.scan_text(text)} == {"person_name", "health", "org_term"}
    assert full.scan_text("Falconry and project falcons") == []


def test_empty_and_odd_inputs(det: SensitivityDetector) -> None:
    assert det.scan_text("") == []
    assert det.scan(ChatRequest(messages=[Message(role="user", content=None)])) == []
    odd = "\udcff\x00İİİ\u0301 mail a.b@firma.de \ufffd\U0001f600 end"
    findings = det.scan_text(odd)
    assert [odd[f.start : f.end] for f in findings] == ["a.b@firma.de"]
    assert det.redact(odd).count("[EMAIL]") == 1


def test_huge_prompt_scales_with_its_content(det: SensitivityDetector) -> None:
    chunk = (
        "Pump P-101 at 10.14.2.37 tripped; mail j.ortega@globalparts.es, card "
        "4111 1111 1111 1111. Thomas Becker has asthma. Order 4500012877, v2.14.3. "
    )
    one = len(det.scan_text(chunk))
    assert one == 5
    repeats = 1_000_000 // len(chunk)
    assert len(det.scan_text(chunk * repeats)) == one * repeats


@pytest.mark.parametrize(
    "text",
    [
        "1" * 300_000,
        "a" * 150_000 + "@" + "b" * 150_000,
        "1." * 150_000,
        "a:" * 150_000,
        "1 " * 150_000,
        "Anna " * 60_000,
        "password: " * 30_000,
        "-----BEGIN PRIVATE KEY-----" * 10_000,
    ],
)
def test_adversarial_inputs_finish(det: SensitivityDetector, text: str) -> None:
    found = det.scan_text(text)  # completes (every quantifier is bounded); no timing assertion
    assert all(0 <= f.start < f.end <= len(text) for f in found)


def _labelled() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]


def _row_request(row: dict[str, Any]) -> ChatRequest:
    """A labelled row as a request: one prompt, or consecutive user messages."""
    if "messages" in row:
        return ChatRequest(messages=[Message(role="user", content=m) for m in row["messages"]])
    return ChatRequest.from_prompt(row["prompt"])


LANGUAGES = {"en", "de", "fr", "es", "it", "nl", "pl", "sv"}


def test_labelled_set_shape() -> None:
    rows = _labelled()
    sensitive = [r for r in rows if r["sensitive"]]
    assert len(rows) >= 400
    assert 0.4 <= len(sensitive) / len(rows) <= 0.6
    assert all(r["kinds"] for r in sensitive)
    assert not any(r["kinds"] for r in rows if not r["sensitive"])
    assert all(r["category"] and r["lang"] and r["origin"] for r in rows)
    for lang in LANGUAGES:  # every language has sensitive prompts and look-alikes
        assert {r["sensitive"] for r in rows if r["lang"] == lang} == {True, False}
    blind = sum(1 for r in rows if r["origin"] == "blind")
    assert blind >= (len(rows) - 212) / 2  # half the new prompts were written blind


def test_labelled_set_recall_is_one_and_false_positives_are_rare(
    det: SensitivityDetector,
) -> None:
    rows = _labelled()
    missed, false_pos = [], []
    for i, row in enumerate(rows):
        found = {f.kind.split(":")[0] for f in det.scan(_row_request(row))}
        expected = set(row["kinds"])
        if row["sensitive"] and not expected <= found:
            missed.append((i, sorted(expected - found)))
        if not row["sensitive"] and found:
            false_pos.append((i, sorted(found)))
    negatives = sum(1 for r in rows if not r["sensitive"])
    print(f"labelled set: missed={len(missed)} false_positive_rate={len(false_pos) / negatives}")
    assert missed == [], missed
    assert len(false_pos) / negatives <= 0.05, false_pos
