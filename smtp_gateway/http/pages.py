"""HTML pages: Jinja2 templates (built in, overridable per client), the client's look, the words.

A client's own templates live in ``templates_dir/<client id>/`` and replace built-in pages of
the same name (``confirm.html``, ``done.html``, ``global_done.html``, ``resubscribed.html``,
``message.html``, ``base.html``); anything missing falls back to the built-in page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, StrictUndefined
from starlette.responses import HTMLResponse

from ledger.models import Client, is_valid_client_id
from smtp_gateway.http.i18n import LANGUAGE_NAMES, LANGUAGES, messages

DEFAULT_ACCENT = "#1d4ed8"
# Pure black, not a softer dark grey: for any colour, black or white reaches at least √21 ≈ 4.58.
_BLACK = "#000000"
_WHITE = "#ffffff"
_HEX_COLOUR_RE = re.compile(r"#[0-9a-fA-F]{6}")
# Only plain absolute URLs: no quotes, spaces or angle brackets (Jinja escapes anyway; this also
# keeps javascript: and data: out of an <img src>).
_LOGO_URL_RE = re.compile(r"https?://[^\s\"'<>\\]{1,2000}", re.IGNORECASE)
# WCAG AA for normal text.
MIN_CONTRAST = 4.5

# Pages are per recipient and may name the client: never cached, never framed, no script at all.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: http:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


def _luminance(colour: str) -> float:
    """WCAG relative luminance of a ``#rrggbb`` colour."""
    channels = []
    for i in (1, 3, 5):
        value = int(colour[i : i + 2], 16) / 255
        channels.append(value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4)
    red, green, blue = channels
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast(first: str, second: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21)."""
    high, low = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def theme(settings: Mapping[str, str]) -> dict[str, str]:
    """The client's accent colour (with a readable text colour on it) and logo URL, validated.

    An accent colour that is not ``#rrggbb`` or a logo URL that is not http(s) is ignored rather
    than trusted into the page.
    """
    accent = settings.get("accent_color", "")
    if not isinstance(accent, str) or not _HEX_COLOUR_RE.fullmatch(accent):
        accent = DEFAULT_ACCENT
    accent_text = _WHITE if contrast(accent, _WHITE) >= contrast(accent, _BLACK) else _BLACK
    logo = settings.get("logo_url", "")
    if not isinstance(logo, str) or not _LOGO_URL_RE.fullmatch(logo):
        logo = ""
    return {"accent": accent.lower(), "accent_text": accent_text, "logo_url": logo}


class PageRenderer:
    """Renders the link service's pages, with per-client template overrides."""

    def __init__(self, templates_dir: Path | None = None) -> None:
        """Load the built-in templates; ``templates_dir`` holds optional per-client folders."""
        self.templates_dir = templates_dir
        self._builtin = self._environment(None)
        self._per_client: dict[str, Environment] = {}

    @staticmethod
    def _environment(folder: Path | None) -> Environment:
        """A Jinja environment reading ``folder`` first, then the built-in templates."""
        builtin = PackageLoader("smtp_gateway.http", "templates")
        loader = ChoiceLoader([FileSystemLoader(folder), builtin]) if folder else builtin
        return Environment(loader=loader, autoescape=True, undefined=StrictUndefined)

    def environment(self, client: Client | None) -> Environment:
        """The environment for ``client``: its own folder when one exists, else the built-in one."""
        if client is None or self.templates_dir is None or not is_valid_client_id(client.id):
            return self._builtin
        cached = self._per_client.get(client.id)
        if cached is None:
            folder = self.templates_dir / client.id
            cached = self._environment(folder) if folder.is_dir() else self._builtin
            self._per_client[client.id] = cached
        return cached

    def render(
        self,
        page: str,
        *,
        lang: str,
        client: Client | None = None,
        status_code: int = 200,
        languages: bool = True,
        **extra: Any,
    ) -> HTMLResponse:
        """Render ``page`` (e.g. ``"confirm.html"``) in ``lang`` for ``client`` (None: no branding)."""
        name = client.name if client else ""
        context: dict[str, Any] = {
            "lang": lang,
            "t": messages(lang, name),
            "client_name": name,
            "languages": [(code, LANGUAGE_NAMES[code], f"?lang={code}") for code in LANGUAGES if code != lang]
            if languages
            else [],
            "offer_global": False,
            **theme(client.settings if client else {}),
            **extra,
        }
        html = self.environment(client).get_template(page).render(context)
        return HTMLResponse(html, status_code=status_code, headers={**PAGE_HEADERS, "Content-Language": lang})
