"""People and context: a name alone is not sensitive, a person plus an attribute is; numbers
the text labels as IDs; public figures; structured records."""

from __future__ import annotations

import pytest

from tierlm.signals import SensitivityDetector

DET = SensitivityDetector()


def kinds(text: str) -> set[str]:
    return {f.kind for f in DET.scan_text(text)}


def found(text: str) -> dict[str, str]:
    return {text[f.start : f.end]: f.kind for f in DET.scan_text(text)}


@pytest.mark.parametrize(
    "text",
    [
        "Schedule a call with Daniel Novak about the conveyor retrofit.",
        "Lade Petra Hoffmann zur Sicherheitsschulung am Montag ein.",
        "Remercie Sophie Girard pour sa présentation d'hier.",
        "Pregunta a Javier Torres si el pedido llegó.",
        "Chiedi a Luca Conti quando arriva il tecnico.",
        "Vraag Bram Visser om de tekening te controleren.",
        "Zapytaj Tomasza Kaczmarka o harmonogram dostaw.",
        "Be Karin Lindgren skicka ritningarna.",
    ],
)
def test_a_name_alone_is_not_sensitive(text: str) -> None:
    assert DET.scan_text(text) == []


@pytest.mark.parametrize(
    ("text", "attribute"),
    [
        ("Rachel Kim's salary goes from $82,000 to $91,500.", "hr"),
        ("Jonas Weber bekommt ab Januar 5.400 € brutto.", "hr"),
        ("Le salaire de Julien Moreau passe à 3 800 € net.", "hr"),
        ("Carmen Ortiz tuvo una evaluación de desempeño insuficiente.", "hr"),
        ("Marco Ferri riceve un richiamo disciplinare.", "hr"),
        ("Het salaris van Sanne de Vries wordt 4.100 euro.", "hr"),
        ("Podwyżka dla Anny Kowalskiej: od marca 9 500 zł brutto.", "hr"),  # inflected name
        ("Pensja Piotra Wiśniewskiego spada do 6 200 zł.", "hr"),
        ("Johan Berg får sparken efter tre varningar.", "hr"),
        ("El hijo de Marta Ruiz está en un centro de menores.", "personal"),
    ],
)
def test_a_person_plus_an_attribute_is_sensitive(text: str, attribute: str) -> None:
    assert {"person_name", attribute} <= kinds(text), found(text)


@pytest.mark.parametrize(
    "text",
    [
        "Ma collègue est enceinte et a un diabète gestationnel.",
        "Min chef har fått diagnosen bröstcancer.",
        "Mój brat ma cukrzycę typu 1 i bierze insulinę.",
        "Mi madre tiene alzhéimer.",
        "Mio marito soffre di sclerosi multipla.",
        "Mijn dochter heeft astma.",
        "Mein Vater hatte letzte Woche einen Herzinfarkt.",
        "I was diagnosed with bipolar disorder last year.",
        "Pani Kowalska jest na zwolnieniu lekarskim z powodu depresji.",
    ],
)
def test_health_facts_about_a_person_in_eight_languages(text: str) -> None:
    assert "health" in kinds(text), found(text)


@pytest.mark.parametrize(
    "text",
    [
        "Quels sont les symptômes du diabète de type 2 ?",
        "Jakie są objawy depresji?",
        "¿Qué es el alzhéimer y cómo se diagnostica?",
        "Wat is het verschil tussen astma en COPD?",
        "What is a typical salary range for a maintenance technician?",
        "Jak napisać wniosek o podwyżkę?",
        "Wie schreibt man eine Abmahnung rechtssicher?",
    ],
)
def test_general_questions_are_not_about_a_person(text: str) -> None:
    assert DET.scan_text(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "What did Marie Curie discover?",
        "Why did Alfred Nobel create the Nobel Prize?",
        "How did Stephen Hawking cope with ALS during his career?",
        "Albert Einstein was born on 14 March 1879 in Ulm.",
        "Quelle était la maladie de Louis Pasteur ?",
        "Co odkryła Maria Skłodowska-Curie?",
    ],
)
def test_public_figures_in_public_contexts(text: str) -> None:
    assert DET.scan_text(text) == []


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("my SSN is 078-05-1120, fill in the W-4", "078-05-1120", "national_id"),
        ("Employee record: SSN 123-45-6789, start date March 3.", "123-45-6789", "national_id"),
        ("Her passport number is C03005988.", "C03005988", "national_id"),
        ("Meine Reisepassnummer lautet C01X00T47.", "C01X00T47", "national_id"),
        ("Mi número de pasaporte es PAA123456.", "PAA123456", "national_id"),
        ("Numéro de dossier patient : 2024-CH-004512, merci.", "2024-CH-004512", "record_id"),
        ("Numero di cartella clinica 778812 del paziente.", "778812", "record_id"),
        ("Personalnummer 004711 soll in die Lohnliste.", "004711", "record_id"),
        ("Patient ID 00482913 needs a discharge letter.", "00482913", "record_id"),
    ],
)
def test_numbers_the_text_labels_as_identifiers(text: str, value: str, kind: str) -> None:
    assert found(text) == {value: kind}


@pytest.mark.parametrize(
    "text",
    [
        "What format does a US Social Security number have?",
        "My passport expires in 2027, when should I renew it?",
        "Ticket number 448812 was closed yesterday.",
        "Patient safety week starts on 12.05.2025.",
    ],
)
def test_identifier_words_without_an_identifier(text: str) -> None:
    assert DET.scan_text(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Date of birth: 14/03/1987, add it to my profile.", "14/03/1987"),
        ("Ich bin am 3. Mai 1979 geboren.", "3. mai 1979"),
        ("Je suis né le 22 juillet 1990 à Nantes.", "22 juillet 1990"),
        ("Mi fecha de nacimiento es el 5 de octubre de 1985.", "5 de octubre de 1985"),
        ("Urodziłem się 7 listopada 1975 r.", "7 listopada 1975"),
        ("Jag är född den 30 april 1988.", "30 april 1988"),
    ],
)
def test_dates_of_birth(text: str, value: str) -> None:
    got = {text[f.start : f.end].lower(): f.kind for f in DET.scan_text(text)}
    assert got == {value.lower(): "date_of_birth"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Mieszkam przy ulicy Długiej 12/4 w Gdańsku.", "ulicy Długiej 12/4"),
        (
            "Proszę wysłać paczkę do Jana Nowaka, ul. Marszałkowska 84/92.",
            "ul. Marszałkowska 84/92",
        ),
        ("Meine neue Adresse: Lindenstraße 14, 79098 Freiburg.", "Lindenstraße 14"),
        ("J'habite au 12 rue des Lilas, 69003 Lyon.", "12 rue des Lilas"),
        ("Il mio indirizzo è via Garibaldi 45, Torino.", "via Garibaldi 45"),
        ("Ik woon op de Keizersgracht 221 in Amsterdam.", "Keizersgracht 221"),
        ("Min adress är Storgatan 7, Stockholm.", "Storgatan 7"),
        ("I moved to 42 Maple Avenue, Springfield.", "42 Maple Avenue"),
    ],
)
def test_home_addresses(text: str, value: str) -> None:
    assert found(text).get(value) == "address", found(text)


def test_a_company_address_is_not_personal() -> None:
    assert DET.scan_text("Our plant is at Industriestraße 5, deliveries via gate 2.") == []


@pytest.mark.parametrize(
    "text",
    [
        "name;street;city\nHans Meier;Bahnhofstr. 5;Zürich\nLea Roth;Seeweg 2;Luzern",
        "imię,nazwisko,adres\nKatarzyna,Zielińska,ul. Lipowa 5\nMarek,Lewandowski,ul. Polna 8",
        "| Nom | Prénom | Date de naissance |\n| Martin | Léa | 04/05/1996 |",
        '{"name": "Olivia Brown", "dob": "1991-02-17", "city": "Leeds"}',
    ],
)
def test_structured_records_of_people(text: str) -> None:
    assert "record" in kinds(text), found(text)


@pytest.mark.parametrize(
    "text",
    [
        "part_no;description;qty\nP-101;centrifugal pump;2\nV-220;gate valve;5",
        '{"sensor": "TT-301", "unit": "degC", "value": 84.2}',
    ],
)
def test_structured_rows_without_people(text: str) -> None:
    assert DET.scan_text(text) == []
