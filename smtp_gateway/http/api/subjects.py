"""``/subjects/…``: data-subject requests (GDPR Art. 15-18, 20), operator keys only.

The same store calls as ``consentgate subject …`` (:class:`ledger.store.subjects.SubjectStore`,
``set_restricted``), so the API and the CLI cannot answer a request differently. A person spans
every client, so a client key may never make one (403).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from ledger.store.subjects import SameSubject, SubjectStore
from smtp_gateway.http.api.context import ApiContext, Ctx, Key, identify
from smtp_gateway.http.api.schemas_subjects import (
    ErasureResult,
    RectifyRequest,
    RectifyResult,
    RestrictionResult,
    SubjectChangeRequest,
    SubjectExport,
    SubjectRequest,
)
from smtp_gateway.http.errors import FieldInvalid

router = APIRouter(tags=["data-subject requests"])

# Marks an operation for a client reading the schema (and the docs page) as operator-only.
OPERATOR_ONLY: dict[str, Any] = {"x-consentgate-key": "operator"}


@router.post(
    "/subjects/export",
    summary="Export everything held about a person (operator)",
    openapi_extra=OPERATOR_ONLY,
)
async def export_subject(body: SubjectRequest, key: Key, ctx: Ctx, response: Response) -> SubjectExport:
    """Suppressions (including imported hashed lists), relationships, consent events with their
    proof and interaction events, across every client: what ``consentgate subject export`` prints."""
    ctx.require_admin(key)
    data = await SubjectStore(ctx.service.store).export(identify(ctx, body.address))
    # Personal data: no proxy or browser keeps a copy.
    response.headers["Cache-Control"] = "no-store"
    return SubjectExport.model_validate(data)


@router.post("/subjects/erase", summary="Erase a person (operator)", openapi_extra=OPERATOR_ONLY)
async def erase_subject(body: SubjectChangeRequest, key: Key, ctx: Ctx) -> ErasureResult:
    """Art. 17: everything personal goes; only the keyed hash stays (with a global ``erased``
    suppression), so the person is never mailed or re-added. Cannot be undone."""
    ctx.require_admin(key)
    report = await SubjectStore(ctx.service.store).erase(
        identify(ctx, body.address), body.source, ctx.clock()
    )
    return ErasureResult.model_validate(report, from_attributes=True)


async def _restrict(ctx: ApiContext, body: SubjectChangeRequest, restricted: bool) -> RestrictionResult:
    """Set or lift the restriction of processing of ``body.address``."""
    await ctx.service.store.set_restricted(identify(ctx, body.address), restricted, body.source, ctx.clock())
    return RestrictionResult(restricted=restricted)


@router.post(
    "/subjects/restrict", summary="Restrict processing of a person (operator)", openapi_extra=OPERATOR_ONLY
)
async def restrict_subject(body: SubjectChangeRequest, key: Key, ctx: Ctx) -> RestrictionResult:
    """Art. 18: every client's mail to the address is refused with ``restricted`` until lifted."""
    ctx.require_admin(key)
    return await _restrict(ctx, body, True)


@router.post(
    "/subjects/unrestrict", summary="Lift a restriction of processing (operator)", openapi_extra=OPERATOR_ONLY
)
async def unrestrict_subject(body: SubjectChangeRequest, key: Key, ctx: Ctx) -> RestrictionResult:
    """Lift the restriction; suppressions and consent are as they were."""
    ctx.require_admin(key)
    return await _restrict(ctx, body, False)


@router.post(
    "/subjects/rectify",
    summary="Move a person's data to a corrected address (operator)",
    openapi_extra=OPERATOR_ONLY,
)
async def rectify_subject(body: RectifyRequest, key: Key, ctx: Ctx) -> RectifyResult:
    """Art. 16: consent, suppressions, engagement and events move to ``new_address``; the wrong
    address is removed. Both addresses the same person once normalised: 422 on ``new_address``."""
    ctx.require_admin(key)
    old = identify(ctx, body.old_address, "old_address")
    new = identify(ctx, body.new_address, "new_address")
    try:
        moved = await SubjectStore(ctx.service.store).rectify(old, new, body.source, ctx.clock())
    except SameSubject as exc:
        raise FieldInvalid("new_address", str(exc)) from None
    return RectifyResult(**moved)
