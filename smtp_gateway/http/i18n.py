"""The pages' words in English and Romanian, and the choice of language for a request.

The language comes from ``?lang=`` (or the form's hidden ``lang`` field) when it names a
supported one, else from ``Accept-Language`` by quality, else the configured default.
"""

from __future__ import annotations

from collections.abc import Mapping

LANGUAGES = ("en", "ro")
LANGUAGE_NAMES = {"en": "English", "ro": "Română"}
# Accept-Language headers longer than this are cut before parsing (no legitimate one comes close).
MAX_ACCEPT_LANGUAGE_CHARS = 1024

MESSAGES: Mapping[str, Mapping[str, str]] = {
    "en": {
        "confirm_title": "Unsubscribe from {client}?",
        "confirm_text": "Confirm, and this address will no longer receive e-mail campaigns from {client}.",
        "confirm_button": "Unsubscribe",
        "confirm_hint": "Nothing changes until you press the button.",
        "global_title": "Stop e-mail from every sender",
        "global_text": "You can also stop campaigns from every other sender that uses this mailing service.",
        "global_button": "Unsubscribe from all senders",
        "done_title": "You are unsubscribed",
        "done_text": "{client} will not send campaign e-mails to this address any more.",
        "undo_text": "Unsubscribed by mistake? You can subscribe again.",
        "undo_button": "Subscribe again",
        "global_done_title": "You are unsubscribed from all senders",
        "global_done_text": (
            "No campaign sent through this mailing service will reach this address any more. "
            "To receive e-mails again, contact the sender."
        ),
        "resubscribed_title": "You are subscribed again",
        "resubscribed_text": (
            "You will receive campaigns from {client} again. Every e-mail has a link to unsubscribe."
        ),
        "undo_refused_text": (
            "This address is unsubscribed from all senders, so it cannot be subscribed again here. "
            "Please contact the sender."
        ),
        "not_found_title": "Page not found",
        "not_found_text": "This link is not valid.",
        "bad_request_title": "This request could not be handled",
        "bad_request_text": "Please use the link or the button in the e-mail.",
        "error_title": "Something went wrong",
        "error_text": "Nothing was changed. Please try again in a few minutes.",
        "language": "Language",
        "unsubscribed_plain": "Unsubscribed.",
    },
    "ro": {
        "confirm_title": "Vă dezabonați de la {client}?",
        "confirm_text": (
            "Dacă confirmați, această adresă nu va mai primi campanii de e-mail de la {client}."
        ),
        "confirm_button": "Dezabonează-mă",
        "confirm_hint": "Nimic nu se schimbă până nu apăsați butonul.",
        "global_title": "Opriți e-mailurile de la toți expeditorii",
        "global_text": (
            "Puteți opri și campaniile tuturor celorlalți expeditori care folosesc acest serviciu de e-mail."
        ),
        "global_button": "Dezabonează-mă de la toți expeditorii",
        "done_title": "V-ați dezabonat",
        "done_text": "{client} nu va mai trimite campanii de e-mail la această adresă.",
        "undo_text": "V-ați dezabonat din greșeală? Vă puteți abona din nou.",
        "undo_button": "Abonează-mă din nou",
        "global_done_title": "V-ați dezabonat de la toți expeditorii",
        "global_done_text": (
            "Nicio campanie trimisă prin acest serviciu de e-mail nu va mai ajunge la această adresă. "
            "Pentru a primi din nou e-mailuri, contactați expeditorul."
        ),
        "resubscribed_title": "V-ați abonat din nou",
        "resubscribed_text": (
            "Veți primi din nou campaniile {client}. Fiecare e-mail conține un link de dezabonare."
        ),
        "undo_refused_text": (
            "Această adresă este dezabonată de la toți expeditorii și nu poate fi abonată din nou aici. "
            "Vă rugăm să contactați expeditorul."
        ),
        "not_found_title": "Pagina nu a fost găsită",
        "not_found_text": "Acest link nu este valid.",
        "bad_request_title": "Cererea nu a putut fi procesată",
        "bad_request_text": "Vă rugăm să folosiți linkul sau butonul din e-mail.",
        "error_title": "A apărut o eroare",
        "error_text": "Nu s-a schimbat nimic. Vă rugăm să încercați din nou peste câteva minute.",
        "language": "Limba",
        "unsubscribed_plain": "Dezabonare înregistrată.",
    },
}


def supported(lang: str | None) -> str | None:
    """``lang`` when it names a supported language (case-insensitive, region ignored), else None."""
    if not lang:
        return None
    primary = lang.strip().lower().split("-", 1)[0].split("_", 1)[0]
    return primary if primary in LANGUAGES else None


def from_accept_language(header: str) -> str | None:
    """The supported language the client prefers most (by q-value, then order), or None."""
    best: tuple[float, int, str] | None = None
    for index, item in enumerate(header[:MAX_ACCEPT_LANGUAGE_CHARS].split(",")):
        tag, _, params = item.partition(";")
        lang = supported(tag)
        if lang is None:
            continue
        quality = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                continue
        if not 0 < quality <= 1:
            continue
        candidate = (-quality, index, lang)
        if best is None or candidate < best:
            best = candidate
    return None if best is None else best[2]


def choose_language(override: str | None, accept_language: str, default: str = "en") -> str:
    """The page language: an explicit override, else Accept-Language, else ``default``."""
    return supported(override) or from_accept_language(accept_language) or supported(default) or "en"


def messages(lang: str, client_name: str = "") -> dict[str, str]:
    """The words of one language with the client's name filled in (escaped later by Jinja)."""
    table = MESSAGES[supported(lang) or "en"]
    return {key: text.replace("{client}", client_name) for key, text in table.items()}
