"""``/check``: may these addresses be mailed? One client's view, or the global list's."""

from __future__ import annotations

import json

from fastapi import APIRouter
from starlette.responses import Response

from ledger.api_keys import ApiKey
from ledger.models import GLOBAL_SCOPE, Decision, Reason
from smtp_gateway.http.api.context import ClientId, Ctx, Key
from smtp_gateway.http.api.schemas import ApiReason, CheckRequest, CheckResponse, Me

router = APIRouter(tags=["checks"])

# Refusals that come from the person's standing with every client; a client key sees only that
# the global list refuses them, never why (a complaint or an erasure elsewhere is not its business).
_GLOBAL_REASONS = frozenset({Reason.RESTRICTED, Reason.ERASED, Reason.GLOBAL_OPTOUT})


def result(address: str, decision: Decision, key: ApiKey) -> dict[str, object]:
    """One decision as the key may see it (a :class:`CheckResult` as a plain dict)."""
    if decision.allowed:
        return {"address": address, "allowed": True, "reason": None, "scope": None}
    reason = decision.reason
    hidden = decision.scope == GLOBAL_SCOPE or reason in _GLOBAL_REASONS
    if hidden and not key.is_admin:
        return {"address": address, "allowed": False, "reason": ApiReason.GLOBAL.value, "scope": GLOBAL_SCOPE}
    return {
        "address": address,
        "allowed": False,
        "reason": ApiReason(reason.value).value if reason else None,
        "scope": decision.scope,
    }


def answer(addresses: list[str], decisions: list[Decision], key: ApiKey) -> Response:
    """The :class:`CheckResponse` for ``decisions``, serialised once.

    Written by hand for the hot path (issue 7: 1,000 addresses in < 100 ms): building 1,000
    CheckResult models and letting FastAPI validate and dump them again cost ~6 ms of a call;
    plain dicts through ``json.dumps`` cost ~1 ms. The route still declares ``CheckResponse``
    (the OpenAPI document), and the schemathesis run checks the answers against it.
    """
    body = {"results": [result(a, d, key) for a, d in zip(addresses, decisions, strict=True)]}
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


@router.get("/me", summary="Who this key acts for")
async def me(key: Key) -> Me:
    """The key's id, its client (null for an operator key) and whether it is an operator key."""
    return Me(key_id=key.id, client_id=key.client_id, admin=key.is_admin)


@router.post(
    "/clients/{client_id}/check", summary="Check addresses for one client", response_model=CheckResponse
)
async def check_client(client_id: ClientId, body: CheckRequest, key: Key, ctx: Ctx) -> Response:
    """Decide, for each address, whether the client may mail it: the same decision as at RCPT."""
    client = await ctx.client_for(key, client_id)
    decisions = await ctx.service.check_many(body.addresses, client, ctx.clock())
    return answer(body.addresses, decisions, key)


@router.post("/global/check", summary="Check addresses against the global list", response_model=CheckResponse)
async def check_global(body: CheckRequest, key: Key, ctx: Ctx) -> Response:
    """Whether the global list refuses each address (the reason only for an operator key)."""
    decisions = await ctx.service.check_many(body.addresses, None, ctx.clock())
    return answer(body.addresses, decisions, key)
