"""The admin HTTP API under ``/api/v1``: FastAPI (its OpenAPI document comes from the models).

Mounted by :func:`smtp_gateway.http.app.build_app` on the link service's listener. Errors are
RFC 9457 problem documents, made in one place (:func:`smtp_gateway.http.errors.problem_response`).
FastAPI's own docs pages load scripts from a CDN (they would not work offline and would tell a
third party who reads the docs), so they are off; ``/api/v1/docs`` is served from the schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from ledger.errors import LedgerError
from ledger.service import LedgerService
from ledger.store.api_keys import ApiKeyStore
from smtp_gateway.errors import GatewayError
from smtp_gateway.http.api import checks, consents, docs, reports, subjects, suppressions, transfers
from smtp_gateway.http.api.config import ApiConfig
from smtp_gateway.http.api.context import ApiContext
from smtp_gateway.http.api.ratelimit import RateLimiter
from smtp_gateway.http.api.schemas import Problem
from smtp_gateway.http.errors import PROBLEM_MEDIA_TYPE, problem_response

API_PREFIX = "/api/v1"
API_VERSION = "1.0.0"

_PROBLEM = {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}
# Every route may answer these; listing them keeps the schema true for clients and schemathesis.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {**_PROBLEM, "description": text}
    for status, text in (
        (400, "Malformed request"),
        (401, "Missing, unknown or revoked API key"),
        (403, "The key may not use this endpoint"),
        (404, "Not found (or not this key's)"),
        (409, "Conflicts with the ledger's state"),
        (413, "Body too large"),
        (415, "Unsupported body type"),
        (422, "Invalid field"),
        (429, "Rate limit reached (see Retry-After)"),
        (503, "Database unavailable (see Retry-After)"),
    )
}


def _field_name(location: Sequence[int | str]) -> str:
    """``("body", "addresses", 3)`` → ``addresses[3]``: the field as the caller wrote it."""
    parts = [p for p in location if p not in ("body", "query", "path", "header")]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(api: FastAPI, request: Request) -> str:
    """Every method of every route on the request's path (RFC 9110 ``Allow`` on a 405).

    Starlette's 405 names only the first route that matched the path, so a path with a GET and a
    POST route (export and add) answered ``Allow: POST`` (found by schemathesis).
    """
    # Each method is tried against the routes (FastAPI nests included routers, so the routes'
    # own method sets are not at hand); a full match means the path takes that method.
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in api.router.routes
        )
    ]
    return ", ".join(allowed)


def build_api(
    service: LedgerService,
    config: ApiConfig,
    clock: Callable[[], datetime],
    monotonic: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The API app, ready to mount at ``/api/v1``."""
    api = FastAPI(
        title="consentgate admin API",
        version=API_VERSION,
        summary="Suppressions, consents, checks, imports, exports, data-subject requests and reports.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        responses=PROBLEM_RESPONSES,
    )
    api.state.api = ApiContext(
        service=service,
        keys=ApiKeyStore(service.store),
        limiter=RateLimiter(config.rate_per_minute, config.burst, monotonic),
        config=config,
        clock=clock,
    )

    async def validation_failed(request: Request, exc: Exception) -> Response:
        """Pydantic's errors, each naming its field."""
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": _field_name(e.get("loc", ())), "message": str(e.get("msg", ""))} for e in exc.errors()
        ]
        return problem_response(exc, errors)

    async def failed(request: Request, exc: Exception) -> Response:
        """Every other exception, through the one mapping."""
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            exc.headers = {"Allow": _allowed_methods(api, request)}
        return problem_response(exc)

    api.add_exception_handler(RequestValidationError, validation_failed)
    for kind in (HTTPException, LedgerError, GatewayError):
        api.add_exception_handler(kind, failed)
    for module in (checks, suppressions, consents, subjects, reports, transfers, docs):
        api.include_router(module.router)
    return api
