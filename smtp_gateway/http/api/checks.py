"""``/check``: may these addresses be mailed? One client's view, or the global list's."""

from __future__ import annotations

from fastapi import APIRouter

from ledger.api_keys import ApiKey
from ledger.models import GLOBAL_SCOPE, Decision, Reason
from smtp_gateway.http.api.context import ClientId, Ctx, Key
from smtp_gateway.http.api.schemas import ApiReason, CheckRequest, CheckResponse, CheckResult, Me

router = APIRouter(tags=["checks"])

# Refusals that come from the person's standing with every client; a client key sees only that
# the global list refuses them, never why (a complaint or an erasure elsewhere is not its business).
_GLOBAL_REASONS = frozenset({Reason.RESTRICTED, Reason.ERASED, Reason.GLOBAL_OPTOUT})


def result(address: str, decision: Decision, key: ApiKey) -> CheckResult:
    """One decision as the key may see it."""
    if decision.allowed:
        return CheckResult(address=address, allowed=True)
    reason = decision.reason
    hidden = decision.scope == GLOBAL_SCOPE or reason in _GLOBAL_REASONS
    if hidden and not key.is_admin:
        return CheckResult(address=address, allowed=False, reason=ApiReason.GLOBAL, scope=GLOBAL_SCOPE)
    return CheckResult(
        address=address,
        allowed=False,
        reason=ApiReason(reason.value) if reason else None,
        scope=decision.scope,
    )


@router.get("/me", summary="Who this key acts for")
async def me(key: Key) -> Me:
    """The key's id, its client (null for an operator key) and whether it is an operator key."""
    return Me(key_id=key.id, client_id=key.client_id, admin=key.is_admin)


@router.post("/clients/{client_id}/check", summary="Check addresses for one client")
async def check_client(client_id: ClientId, body: CheckRequest, key: Key, ctx: Ctx) -> CheckResponse:
    """Decide, for each address, whether the client may mail it: the same decision as at RCPT."""
    client = await ctx.client_for(key, client_id)
    decisions = await ctx.service.check_many(body.addresses, client, ctx.clock())
    return CheckResponse(results=[result(a, d, key) for a, d in zip(body.addresses, decisions, strict=True)])


@router.post("/global/check", summary="Check addresses against the global list")
async def check_global(body: CheckRequest, key: Key, ctx: Ctx) -> CheckResponse:
    """Whether the global list refuses each address (the reason only for an operator key)."""
    decisions = await ctx.service.check_many(body.addresses, None, ctx.clock())
    return CheckResponse(results=[result(a, d, key) for a, d in zip(body.addresses, decisions, strict=True)])
