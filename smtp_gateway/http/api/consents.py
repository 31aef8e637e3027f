"""``/consents``: record an opt-in with its proof."""

from __future__ import annotations

from fastapi import APIRouter

from ledger.models import ConsentProof
from smtp_gateway.http.api.context import ClientId, Ctx, Key, identify
from smtp_gateway.http.api.schemas import ConsentRequest, ConsentResult
from smtp_gateway.http.errors import FieldInvalid

router = APIRouter(tags=["consents"])


@router.post("/clients/{client_id}/consents", summary="Record an opt-in with its proof")
async def add_consent(client_id: ClientId, body: ConsentRequest, key: Key, ctx: Ctx) -> ConsentResult:
    """Record consent; a suppressed address is refused (409) unless ``reconsent`` is true.

    A re-consent lifts only this client's unsubscribe, never a complaint, a bounce or the global list.
    """
    client = await ctx.client_for(key, client_id)
    identity = identify(ctx, body.address)
    now = ctx.clock()
    given = body.at or now
    if given.tzinfo is None:
        raise FieldInvalid("at", "give a time zone (e.g. 2026-11-22T10:00:00Z)")
    if given > now:
        raise FieldInvalid("at", "consent cannot be given in the future")
    proof = ConsentProof(body.source, given, body.method, body.notice_version, body.legal_basis)
    await ctx.service.store.record_consent(client.id, identity, proof, now, reconsent=body.reconsent)
    return ConsentResult(recorded=True)
