"""Errors of the link service and the one place where any exception becomes an HTTP response.

Every failure to find what a link points at — forged, truncated, expired, unknown-key token, a
deleted client, an unknown subject, an altered click link — is the same plain 404 page, so a
probe learns nothing from the answer.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.responses import Response

from ledger.errors import DatabaseUnavailable, InvalidToken, StoreError, UnknownClient
from smtp_gateway.errors import GatewayError
from smtp_gateway.http.i18n import choose_language, messages
from smtp_gateway.http.pages import PageRenderer

logger = logging.getLogger("consentgate.http")

RETRY_AFTER_SECONDS = "30"


class HttpRequestError(GatewayError):
    """A request the link service refuses; ``status`` is the HTTP status it answers with."""

    status = 400


class BodyTooLarge(HttpRequestError):
    """The request body is larger than the service accepts."""

    status = 413


class UnsupportedBody(HttpRequestError):
    """The body is not ``multipart/form-data`` or ``application/x-www-form-urlencoded``."""

    status = 415


class BadForm(HttpRequestError):
    """The form names no action the service knows (or one the operator has not enabled)."""

    status = 400


_PAGES = {
    400: ("bad_request_title", "bad_request_text"),
    404: ("not_found_title", "not_found_text"),
    405: ("bad_request_title", "bad_request_text"),
    413: ("bad_request_title", "bad_request_text"),
    415: ("bad_request_title", "bad_request_text"),
    500: ("error_title", "error_text"),
    503: ("error_title", "error_text"),
}


def status_for(exc: BaseException) -> int:
    """The HTTP status an exception maps to."""
    if isinstance(exc, InvalidToken | UnknownClient):
        return 404
    if isinstance(exc, ClientDisconnect):
        return 400
    if isinstance(exc, HttpRequestError):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code if exc.status_code in _PAGES else 400
    if isinstance(exc, DatabaseUnavailable | StoreError):
        return 503
    return 500


def error_response(
    conn: HTTPConnection, exc: BaseException, pages: PageRenderer, default_lang: str
) -> Response:
    """The response for ``exc``: a small page in the visitor's language, never a stack trace."""
    status = status_for(exc)
    if status >= 500:
        # Logged without the request's path or headers: the path holds a token, the headers an IP.
        logger.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=status == 500)
    lang = choose_language(
        conn.query_params.get("lang"), conn.headers.get("accept-language", ""), default_lang
    )
    words = messages(lang)
    title_key, text_key = _PAGES[status]
    response = pages.render(
        "message.html",
        lang=lang,
        status_code=status,
        languages=False,
        title=words[title_key],
        text=words[text_key],
    )
    if status == 503:
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    if isinstance(exc, HTTPException) and exc.headers:
        response.headers.update(exc.headers)
    return response


__all__ = [
    "BadForm",
    "BodyTooLarge",
    "HttpRequestError",
    "UnsupportedBody",
    "error_response",
    "status_for",
]
