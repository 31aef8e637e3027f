"""``/suppressions``: add one (a client's or the global list), remove a ``manual`` one (operator).

An unsubscribe, a complaint or a bounce is never removed here: only the person's re-consent
(``/consents`` with ``reconsent``) lifts it.
"""

from __future__ import annotations

from fastapi import APIRouter

from ledger.models import GLOBAL_SCOPE, Reason
from smtp_gateway.http.api.context import ApiContext, ClientId, Ctx, Key, identify
from smtp_gateway.http.api.schemas import (
    GlobalSuppressionRequest,
    RemovalRequest,
    RemovalResult,
    SuppressionRequest,
    SuppressionResult,
)
from smtp_gateway.http.errors import NotFound

router = APIRouter(tags=["suppressions"])


async def _remove(ctx: ApiContext, scope: str, body: RemovalRequest) -> RemovalResult:
    """Remove the manual suppression of ``body.address`` in ``scope``; 404 when there is none."""
    identity = identify(ctx, body.address)
    if not await ctx.service.store.remove_suppression(scope, identity.subject_key, body.source, ctx.clock()):
        raise NotFound("no suppression of that address here")
    return RemovalResult(removed=True)


@router.post("/clients/{client_id}/suppressions", summary="Suppress an address for one client")
async def add_client_suppression(
    client_id: ClientId, body: SuppressionRequest, key: Key, ctx: Ctx
) -> SuppressionResult:
    """Record an unsubscribe (say, by phone) or a manual do-not-contact entry; idempotent."""
    client = await ctx.client_for(key, client_id)
    identity = identify(ctx, body.address)
    added = await ctx.service.store.suppress(
        client.id, identity, Reason(body.reason), body.source, ctx.clock()
    )
    return SuppressionResult(added=added)


@router.post(
    "/clients/{client_id}/suppressions/remove", summary="Remove a client's manual suppression (operator)"
)
async def remove_client_suppression(
    client_id: ClientId, body: RemovalRequest, key: Key, ctx: Ctx
) -> RemovalResult:
    """Remove a ``manual`` entry; any other reason is 409 (only the person's re-consent lifts it)."""
    ctx.require_admin(key)
    client = await ctx.client_for(key, client_id)
    return await _remove(ctx, client.id, body)


@router.post("/global/suppressions", summary="Suppress an address for every client (operator)")
async def add_global_suppression(body: GlobalSuppressionRequest, key: Key, ctx: Ctx) -> SuppressionResult:
    """Record a global opt-out or a manual global entry; idempotent."""
    ctx.require_admin(key)
    identity = identify(ctx, body.address)
    added = await ctx.service.store.suppress(
        GLOBAL_SCOPE, identity, Reason(body.reason), body.source, ctx.clock()
    )
    return SuppressionResult(added=added)


@router.post("/global/suppressions/remove", summary="Remove a manual global suppression (operator)")
async def remove_global_suppression(body: RemovalRequest, key: Key, ctx: Ctx) -> RemovalResult:
    """Remove a ``manual`` global entry; any other reason is 409."""
    ctx.require_admin(key)
    return await _remove(ctx, GLOBAL_SCOPE, body)
