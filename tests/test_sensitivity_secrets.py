"""Secrets without a known prefix, and placeholders that are not secrets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierlm.signals import SensitivityDetector

DET = SensitivityDetector()


def found(text: str) -> dict[str, str]:
    return {text[f.start : f.end]: f.kind for f in DET.scan_text(text)}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Le mot de passe du serveur est Tournesol!2024, merci.", "Tournesol!2024"),
        ("mon mot de passe VPN c'est Marseille87kx", "Marseille87kx"),
        ("Het wachtwoord voor de werkplek is Molenwiek77!", "Molenwiek77!"),
        ("Mijn wachtwoord is nu Tulpen2023veld", "Tulpen2023veld"),
        ("Hasło do routera w hali B to Kotek#8812, dopisz je.", "Kotek#8812"),
        ("La contraseña del wifi es Girasol_9921", "Girasol_9921"),
        ("La password dell'account è Pomodoro!77", "Pomodoro!77"),
        ("Lösenordet till datorn är Älgstig42!", "Älgstig42!"),
        ("Das Kennwort lautet Kranich$551.", "Kranich$551"),
        ("The wifi password is now Harbour7Light", "Harbour7Light"),
        ("identifiant ftp_usine, mot de passe Lavande_93 ;", "Lavande_93"),
    ],
)
def test_password_statements_in_eight_languages(text: str, value: str) -> None:
    assert found(text) == {value: "secret:password"}


@pytest.mark.parametrize(
    "text",
    [
        "What makes a password strong? Give me five rules.",
        "Wie oft sollte man ein Passwort ändern?",
        "Comment réinitialiser un mot de passe oublié ?",
        "Het wachtwoord is verlopen, hoe reset ik het?",
        "Hasło musi mieć 12 znaków.",
        "La contraseña es demasiado corta.",
        "Mitt lösenord är för kort enligt policyn.",
        "password = getpass.getpass(); token = os.environ.get('TOKEN')",
        'conn = psycopg2.connect(host=os.environ["DB_HOST"], user=os.environ["DB_USER"])',
        "Para la demo usa la contraseña <tu_contraseña>.",
    ],
)
def test_password_talk_without_a_password(text: str) -> None:
    assert found(text) == {}


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ('psycopg2.connect(host="db01", user="mes_app", password="Blu3Heron!88")', "Blu3Heron!88",
         "secret:password"),
        ('pymysql.connect("localhost", "root", "Tr0ub4dor&3", "erp")', "Tr0ub4dor&3",
         "secret:password"),
        ('ftp.login("admin", "Sommer2024!")', "Sommer2024!", "secret:password"),
        ("Server=sql01;Database=Mes;User Id=mesuser;Password=Gr4nite!Peak;", "Gr4nite!Peak",
         "secret:password"),
        ("jdbc:postgresql://db02:5432/lager?user=lager_app&password=Fichte2024x", "Fichte2024x",
         "secret:password"),
        ("export STRIPE_SECRET=9fK2mQ7xL4pZ8vR1tW6yB3nH5jD0cS", "9fK2mQ7xL4pZ8vR1tW6yB3nH5jD0cS",
         "secret:api_key"),
        ("the Datadog API key: a3f9c2e7b18d4f609e1d7c3b5a2f8e04 works?",
         "a3f9c2e7b18d4f609e1d7c3b5a2f8e04", "secret:api_key"),
        ("der Schlüssel für die Schnittstelle ist 7Hq2Lx9Vw4Zp8Rt3Nm6Kb", "7Hq2Lx9Vw4Zp8Rt3Nm6Kb",
         "secret:api_key"),
    ],
)  # fmt: skip
def test_credentials_in_code_and_connection_strings(text: str, value: str, kind: str) -> None:
    assert found(text).get(value) == kind, found(text)


def test_high_entropy_needs_a_credential_context() -> None:
    assert found("commit a3f9c2e7b18d4f609e1d7c3b5a2f8e04 broke the build") == {}
    assert found("UUID 3f1c9a7e-2b4d-4c8e-9f0a-1b2c3d4e5f60 twice in the table") == {}


@pytest.mark.parametrize(
    "text",
    [
        "the backend model id (pin); ``max_completion_tokens`` wins over max_tokens",
        "API key auth. Routes: ``/v1/chat/completions``, ``/v1/models``",
        "token: env vars nested with __ (TIERLM_ROUTING__QUALITY=0.7)",
        'api_key for "meta-llama/Llama-3.3-70B-Instruct-Turbo" and claude-3-5-haiku-latest',
    ],
)
def test_identifiers_near_credential_words_are_not_secrets(text: str) -> None:
    """Found in this project's own docstrings while measuring false positives on code."""
    assert found(text) == {}


@settings(max_examples=100, deadline=None)
@given(
    password=st.text(
        "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!#$%&*", min_size=8, max_size=20
    ).filter(
        lambda p: (
            any(c.isdigit() for c in p)
            and any(c.isalpha() for c in p)
            and not re.fullmatch(r"\$\w+|%\w+%", p)
        )  # read as $VARIABLE / %VARIABLE% references
    ),
    sentence=st.sampled_from(
        [
            "my password is {}",
            "mein Passwort ist {}",
            "mon mot de passe est {}",
            "mi contraseña es {}",
            "la mia password è {}",
            "mijn wachtwoord is {}",
            "moje hasło to {}",
            "mitt lösenord är {}",
        ]
    ),
)
def test_any_stated_password_is_found_and_redacted(password: str, sentence: str) -> None:
    text = sentence.format(password) + " - please keep it."
    assert password not in DET.redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "Use AKIAXXXXXXXXXXXXXXXX as the access key in the example config.",
        "The docs show token ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx, replace it.",
        "Set OPENAI_API_KEY=YOUR_KEY_HERE before running the script.",
        'api_key: "0000000000000000000000000000000000000000" is the default.',
        "Replace sk-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX with your key.",
        "Dans l'exemple : prenom.nom@example.fr et +33 1 00 00 00 00.",
        "For the tutorial call +1-555-0100 or +1-555-0199, both fictional.",
        "Write a sample record with jane.doe@example.org and phone 555-0142.",
        "Im Beispiel steht max.mustermann@beispiel.de.",
        "Para la demo usa usuario@ejemplo.com.",
    ],
)
def test_placeholders_are_not_data(text: str) -> None:
    assert found(text) == {}


def test_real_keys_next_to_placeholders_still_count() -> None:
    assert found("id AKIAT1EEOFRC8JH0MYVU x") == {"AKIAT1EEOFRC8JH0MYVU": "secret:aws_access_key"}
    assert found("call +1 415 555 2671 now") == {"+1 415 555 2671": "phone"}
