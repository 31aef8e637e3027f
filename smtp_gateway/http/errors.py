"""Errors of the link service and the one place where any exception becomes an HTTP response.

Every failure to find what a link points at — forged, truncated, expired, unknown-key token, a
deleted client, an unknown subject, an altered click link — is the same plain 404 page, so a
probe learns nothing from the answer.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.responses import JSONResponse, Response

from ledger.errors import (
    DatabaseUnavailable,
    InvalidAddress,
    InvalidApiKey,
    InvalidToken,
    StoreError,
    SuppressedAddress,
    SuppressionNotRemovable,
    UnknownClient,
)
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


class Unauthorized(HttpRequestError):
    """No API key, or one that is malformed, unknown or revoked."""

    status = 401


class Forbidden(HttpRequestError):
    """The key is valid but may not do this (a client key on an operator endpoint)."""

    status = 403


class NotFound(HttpRequestError):
    """Nothing there for this key (another client's data reads exactly like a missing one)."""

    status = 404


class Conflict(HttpRequestError):
    """The request contradicts the ledger's state."""

    status = 409


class FieldInvalid(HttpRequestError):
    """A field of the request is invalid; ``field`` names it (e.g. ``addresses[3]``)."""

    status = 422

    def __init__(self, field: str, message: str) -> None:
        """Name the field and say what is wrong with it."""
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RateLimited(HttpRequestError):
    """The key has used its request budget; retry after ``retry_after`` seconds."""

    status = 429

    def __init__(self, retry_after: str) -> None:
        """``retry_after`` is the Retry-After header value (whole seconds)."""
        super().__init__(f"rate limit reached; retry after {retry_after} s")
        self.retry_after = retry_after


_PAGES = {
    400: ("bad_request_title", "bad_request_text"),
    404: ("not_found_title", "not_found_text"),
    405: ("bad_request_title", "bad_request_text"),
    409: ("bad_request_title", "bad_request_text"),
    413: ("bad_request_title", "bad_request_text"),
    415: ("bad_request_title", "bad_request_text"),
    500: ("error_title", "error_text"),
    503: ("error_title", "error_text"),
}


def status_for(exc: BaseException) -> int:
    """The HTTP status an exception maps to."""
    if isinstance(exc, InvalidToken | UnknownClient):
        return 404
    if isinstance(exc, InvalidApiKey):
        return 401
    if isinstance(exc, SuppressedAddress | SuppressionNotRemovable):
        return 409
    if isinstance(exc, InvalidAddress):
        return 422
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


PROBLEM_MEDIA_TYPE = "application/problem+json"
_PROBLEM_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid field",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


def problem_response(exc: BaseException, errors: list[dict[str, str]] | None = None) -> Response:
    """The admin API's answer for ``exc``: an RFC 9457 ``application/problem+json`` document.

    ``errors`` (validation) lists ``{"field", "message"}`` pairs. Server errors say nothing of
    their cause; the log has it.
    """
    status = 422 if errors else status_for(exc)
    if isinstance(exc, HTTPException) and exc.status_code not in _PAGES:
        status = exc.status_code if exc.status_code in _PROBLEM_TITLES else status
    if status >= 500:
        logger.error("API request failed: %s: %s", type(exc).__name__, exc, exc_info=status == 500)
    title = _PROBLEM_TITLES.get(status, "Error")
    body: dict[str, object] = {
        "type": f"urn:consentgate:problem:{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
    }
    if status == 404:
        # One text for "missing" and "not yours", so a key learns nothing about other clients.
        body["detail"] = "no such resource for this key"
    elif status == 401:
        # One text for a missing, malformed, unknown, wrong or revoked key: a caller guessing key
        # ids must not learn which exist ("unknown" vs "does not match" told it).
        body["detail"] = "send a valid API key: Authorization: Bearer cg_…"
    elif errors:
        body["detail"] = f"{len(errors)} invalid field(s); see errors"
    elif status < 500:
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        body["detail"] = str(detail)
    if isinstance(exc, FieldInvalid):
        errors = [{"field": exc.field, "message": exc.message}]
    if errors:
        body["errors"] = errors
    headers = {"Cache-Control": "no-store"}
    if isinstance(exc, HTTPException) and exc.headers:
        # Starlette's 405 carries the Allow header RFC 9110 requires (found by schemathesis).
        headers.update(exc.headers)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="consentgate"'
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = exc.retry_after
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "BadForm",
    "BodyTooLarge",
    "Conflict",
    "FieldInvalid",
    "Forbidden",
    "HttpRequestError",
    "NotFound",
    "RateLimited",
    "Unauthorized",
    "UnsupportedBody",
    "error_response",
    "problem_response",
    "status_for",
]
