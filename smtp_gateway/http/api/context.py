"""What every API route needs, and the checks that decide what a key may see.

Tenant isolation lives here, once: :meth:`ApiContext.client_for` is the only way a route gets a
client, and it answers a client key asking for another client exactly as for a client that does
not exist (404), so a key learns nothing about who else is served.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request

from ledger.api_keys import ApiKey
from ledger.errors import InvalidAddress, UnknownClient
from ledger.identity import Identity
from ledger.models import CLIENT_ID_PATTERN, Client
from ledger.service import LedgerService
from ledger.store.api_keys import ApiKeyStore
from smtp_gateway.http.api.config import ApiConfig
from smtp_gateway.http.api.ratelimit import RateLimiter, retry_after_header
from smtp_gateway.http.errors import FieldInvalid, Forbidden, NotFound, RateLimited, Unauthorized


@dataclass
class ApiContext:
    """The API's dependencies (built once per app)."""

    service: LedgerService
    keys: ApiKeyStore
    limiter: RateLimiter
    config: ApiConfig
    clock: Callable[[], datetime]

    async def authenticate(self, request: Request) -> ApiKey:
        """The key in ``Authorization: Bearer …``, rate-limited; 401 or 429 otherwise."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send an API key: Authorization: Bearer cg_…")
        key = await self.keys.authenticate(token.strip(), self.clock())
        wait = self.limiter.acquire(key.id)
        if wait > 0:
            raise RateLimited(retry_after_header(wait))
        return key

    async def client_for(self, key: ApiKey, client_id: str) -> Client:
        """The client ``key`` may act on; another client's id reads like an unknown one (404)."""
        if key.client_id is not None and key.client_id != client_id:
            raise NotFound("no such client")
        try:
            return await self.service.store.get_client(client_id)
        except UnknownClient:
            raise NotFound("no such client") from None

    @staticmethod
    def require_admin(key: ApiKey) -> None:
        """Refuse a client key on an operator endpoint (403: the endpoint exists, the key may not use it)."""
        if not key.is_admin:
            raise Forbidden("this endpoint needs an operator key")


def api_context(request: Request) -> ApiContext:
    """The context stored on the app (FastAPI dependency)."""
    context: ApiContext = request.app.state.api
    return context


# Declares the bearer scheme in the OpenAPI document; the check itself is ApiContext.authenticate.
_BEARER = HTTPBearer(auto_error=False, description="An API key: `consentgate client api-key create ID`.")


async def current_key(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> ApiKey:
    """The authenticated, rate-limited key of this request (FastAPI dependency)."""
    return await api_context(request).authenticate(request)


Ctx = Annotated[ApiContext, Depends(api_context)]
Key = Annotated[ApiKey, Depends(current_key)]
ClientId = Annotated[
    str, Path(pattern=CLIENT_ID_PATTERN.pattern, max_length=63, description="The client's id.")
]


def identify(ctx: ApiContext, address: str, field: str = "address") -> Identity:
    """The subject of ``address``, or a 422 naming ``field``."""
    try:
        return ctx.service.identify(address)
    except InvalidAddress as exc:
        raise FieldInvalid(field, str(exc)) from None
