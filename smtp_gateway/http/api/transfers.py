"""Bulk transfers: suppression exports (streamed out) and list imports (streamed in).

Both run the code the CLI runs (:mod:`ledger.store.exports`, :mod:`ledger.store.import_files`),
so the rows, the rules and the counts are those of `consentgate suppressions export`,
`unsubscribe import` and `consent import`.

- **Exports** stream from the database's row iterator to the socket; the list is never in
  memory. Suppressions without a stored address (erased people; bulk imports, which keep only
  the keyed hash) cannot be written as an address and are left out, as by the CLI. The count the
  CLI prints on stderr cannot go in a header once the body is streaming: the endpoint's
  description says so instead.
- **Imports** read the body as it arrives into a temporary file (in memory up to
  :data:`SPOOL_MEMORY_BYTES`, then on disk; unnamed, gone when closed: it holds addresses). The
  body limit (``http.api.max_import_bytes``) is enforced by the app's body-limit middleware
  while it is read. The file is then parsed in a worker thread, block by block, and written in
  the importer's batches, so the event loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from datetime import UTC
from typing import IO, Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import StreamingResponse

from ledger.importing import Rejected
from ledger.models import GLOBAL_SCOPE, ConsentProof
from ledger.store.exports import ExportFormat, SuppressionExport
from ledger.store.import_files import SuppressionFileImport, UnreadableFile, import_consent_file
from ledger.store.imports import BATCH_ROWS
from smtp_gateway.http.api.context import ApiContext, ClientId, Ctx, Key
from smtp_gateway.http.api.schemas_transfers import (
    ConsentImportQuery,
    ConsentImportReport,
    RowError,
    SuppressionImportQuery,
    SuppressionImportReport,
)
from smtp_gateway.http.errors import FieldInvalid, UnsupportedBody

router = APIRouter(tags=["imports and exports"])

# How reject messages name the body (the CLI names the file): `<request body>:12: …`.
BODY_NAME = "<request body>"
IMPORT_MEDIA_TYPES = ("text/csv", "text/plain", "application/x-ndjson", "application/jsonl")
_UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})
# Small bodies (a CRM's daily sync) stay in memory; larger ones go to a temporary file.
SPOOL_MEMORY_BYTES = 1 << 20
# Received chunks (~64 KB each) are written in pieces this size, in a thread (disk I/O).
SPOOL_WRITE_BYTES = 1 << 20
# Rows listed in a report; the counts are always complete.
MAX_LISTED_ROWS = 1000

_EXPORT_MEDIA_TYPES = {ExportFormat.CSV: "text/csv", ExportFormat.JSONL: "application/x-ndjson"}
_TEXT_SCHEMA = {"schema": {"type": "string"}}
_EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The suppressions, streamed: CSV with a header, or JSON lines.",
        "content": {media: _TEXT_SCHEMA for media in _EXPORT_MEDIA_TYPES.values()},
    }
}
_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file itself, UTF-8: CSV (a header naming an email column), one address "
        "per line, or JSON lines. Read as it arrives; up to `http.api.max_import_bytes`.",
        # Any text at all is a file to read (bad rows are reported, not refused), so the schema
        # constrains nothing: typed "string", schemathesis sends `{}` as an invalid body and
        # expects a refusal, though as text it is one more row to reject.
        "content": {media: {"schema": {"description": "The file's text."}} for media in IMPORT_MEDIA_TYPES},
    }
}
_EXPORT_NOTES = (
    " Columns: email (or sha256), scope, reason, since, source. Suppressions without a stored "
    "address (erased people, and bulk-imported rows, which keep only a keyed hash) cannot be "
    "exported and are left out."
)

ExportFormatQuery = Annotated[
    ExportFormat, Query(alias="format", description="csv (with a header) or jsonl (one object a line).")
]
HashedQuery = Annotated[
    bool, Query(description="The SHA-256 of the lower-cased address instead of it, plus hashed lists.")
]

# A server import sorts one batch at a time (not the CLI's half-million-row windows): bounded memory
# in a worker that also relays mail.
API_WINDOW_ROWS = BATCH_ROWS


class _Listed:
    """Rows refused during an import: all counted, the first :data:`MAX_LISTED_ROWS` kept."""

    def __init__(self) -> None:
        """Nothing refused yet."""
        self.count = 0
        self.rows: list[RowError] = []

    def add(self, rejected: Rejected) -> None:
        """Count one row (called from the parsing thread while the route awaits it)."""
        self.count += 1
        if len(self.rows) < MAX_LISTED_ROWS:
            self.rows.append(RowError(line=rejected.line, error=rejected.error))

    @property
    def truncated(self) -> bool:
        """Whether rows were left out of :attr:`rows`."""
        return self.count > len(self.rows)


# -- exports ---------------------------------------------------------------------------------------


def _export(ctx: ApiContext, scope: str, fmt: ExportFormat, hashed: bool) -> StreamingResponse:
    """The streamed export of ``scope``."""
    export = SuppressionExport(ctx.service.store.db, scope, hashed=hashed)

    async def body() -> AsyncIterator[bytes]:
        # Closed at once when the client goes away: on PostgreSQL the cursor holds a connection.
        async with aclosing(export.text(fmt)) as pieces:
            async for piece in pieces:
                yield piece.encode("utf-8")

    media = _EXPORT_MEDIA_TYPES[fmt]
    return StreamingResponse(
        body(),
        media_type=f"{media}; charset=utf-8",
        headers={
            # Addresses: never in a shared cache.
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{scope}-suppressions.{fmt.value}"',
        },
    )


@router.get(
    "/clients/{client_id}/suppressions",
    summary="Export a client's suppressions (streamed)",
    response_class=StreamingResponse,
    responses=_EXPORT_RESPONSES,
    description="This client's own suppressions, as `consentgate suppressions export --client ID`"
    " writes them (the global list is not a client's to export)." + _EXPORT_NOTES,
)
async def export_client(
    client_id: ClientId,
    key: Key,
    ctx: Ctx,
    fmt: ExportFormatQuery = ExportFormat.CSV,
    hashed: HashedQuery = False,
) -> StreamingResponse:
    """Stream the client's suppressions."""
    client = await ctx.client_for(key, client_id)
    return _export(ctx, client.id, fmt, hashed)


@router.get(
    "/global/suppressions",
    summary="Export the global suppression list (operator, streamed)",
    response_class=StreamingResponse,
    responses=_EXPORT_RESPONSES,
    description="The global list, as `consentgate suppressions export --global` writes it." + _EXPORT_NOTES,
)
async def export_global(
    key: Key, ctx: Ctx, fmt: ExportFormatQuery = ExportFormat.CSV, hashed: HashedQuery = False
) -> StreamingResponse:
    """Stream the global suppressions."""
    ctx.require_admin(key)
    return _export(ctx, GLOBAL_SCOPE, fmt, hashed)


# -- imports ---------------------------------------------------------------------------------------


def _check_media_type(request: Request) -> None:
    """Refuse a body that is not a UTF-8 text file of a known kind (415)."""
    media, *params = (part.strip() for part in request.headers.get("content-type", "").split(";"))
    if media.lower() not in IMPORT_MEDIA_TYPES:
        raise UnsupportedBody(f"send the file as one of: {', '.join(IMPORT_MEDIA_TYPES)}")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8_CHARSETS:
            raise UnsupportedBody("send the file as UTF-8 (charset=utf-8)")


@asynccontextmanager
async def _spooled_body(request: Request) -> AsyncIterator[IO[bytes]]:
    """The request body, read as it arrives into a temporary file, positioned at its start."""
    _check_media_type(request)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
        pending = bytearray()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= SPOOL_WRITE_BYTES:
                await asyncio.to_thread(spool.write, bytes(pending))
                pending.clear()
        spool.write(pending)
        spool.seek(0)
        yield spool


async def _import_suppressions(
    ctx: ApiContext, scope: str, request: Request, query: SuppressionImportQuery
) -> SuppressionImportReport:
    """Import the body into ``scope`` as `unsubscribe import` does."""
    rejects = _Listed()
    importer = SuppressionFileImport(
        ctx.service.store,
        ctx.service.pepper,
        scope,
        query.source,
        ctx.clock(),
        on_reject=rejects.add,
        hashed=query.hashed,
        dry_run=query.dry_run,
        offload=True,
        # The server's shared connection keeps SQLite's default page cache (RSS budget, issue 9).
        large_cache=False,
        window_rows=API_WINDOW_ROWS,
    )
    async with _spooled_body(request) as body:
        await importer.check_scope()
        try:
            await importer.add_file(body, query.format, BODY_NAME, parallel=False)
        except UnreadableFile as exc:
            raise FieldInvalid("body", str(exc)) from None
        counts = await importer.finish()
    return SuppressionImportReport(
        dry_run=query.dry_run,
        imported=counts.imported,
        already_suppressed=counts.already_suppressed,
        duplicates=counts.duplicates,
        rejected=rejects.count,
        rejects=rejects.rows,
        rejects_truncated=rejects.truncated,
    )


@router.post(
    "/clients/{client_id}/suppressions/import",
    summary="Import a client's unsubscribe list (streamed body)",
    openapi_extra=_IMPORT_BODY,
)
async def import_client_suppressions(
    client_id: ClientId,
    request: Request,
    key: Key,
    ctx: Ctx,
    query: Annotated[SuppressionImportQuery, Query()],
) -> SuppressionImportReport:
    """Suppress every valid row for the client; bad rows are reported by line, the others imported.

    Safe to send again: rows already suppressed are counted, not duplicated. The rules and the
    counts are those of `consentgate unsubscribe import --client ID`.
    """
    client = await ctx.client_for(key, client_id)
    return await _import_suppressions(ctx, client.id, request, query)


@router.post(
    "/global/suppressions/import",
    summary="Import a global unsubscribe list (operator, streamed body)",
    openapi_extra=_IMPORT_BODY,
)
async def import_global_suppressions(
    request: Request, key: Key, ctx: Ctx, query: Annotated[SuppressionImportQuery, Query()]
) -> SuppressionImportReport:
    """Suppress every valid row for every client (signed written requests), as `unsubscribe import --global`."""
    ctx.require_admin(key)
    return await _import_suppressions(ctx, GLOBAL_SCOPE, request, query)


@router.post(
    "/clients/{client_id}/consents/import",
    summary="Import opt-ins with their proof (streamed body)",
    openapi_extra=_IMPORT_BODY,
)
async def import_client_consents(
    client_id: ClientId,
    request: Request,
    key: Key,
    ctx: Ctx,
    query: Annotated[ConsentImportQuery, Query()],
) -> ConsentImportReport:
    """Record each row's opt-in; a suppressed address is never re-subscribed.

    Such rows are reported in ``suppressed``, unless ``reconsent`` is set and the row carries its
    own proof of a fresh opt-in (its own date, and source or method). The rules and the counts are
    those of `consentgate consent import`.
    """
    client = await ctx.client_for(key, client_id)
    now = ctx.clock()
    given = query.at or now
    if given.tzinfo is None:
        given = given.replace(tzinfo=UTC)
    if given > now:
        raise FieldInvalid("at", "consent cannot be given in the future")
    defaults = ConsentProof(query.source, given, query.method, query.notice_version, query.legal_basis)
    rejects, refused = _Listed(), _Listed()
    async with _spooled_body(request) as body:
        try:
            imported = await import_consent_file(
                ctx.service.store,
                ctx.service.pepper,
                client.id,
                body,
                query.format,
                BODY_NAME,
                defaults,
                now,
                on_reject=rejects.add,
                on_refused=refused.add,
                reconsent=query.reconsent,
                dry_run=query.dry_run,
            )
        except UnreadableFile as exc:
            raise FieldInvalid("body", str(exc)) from None
    return ConsentImportReport(
        dry_run=query.dry_run,
        imported=imported,
        suppressed_not_imported=refused.count,
        suppressed=refused.rows,
        suppressed_truncated=refused.truncated,
        rejected=rejects.count,
        rejects=rejects.rows,
        rejects_truncated=rejects.truncated,
    )
