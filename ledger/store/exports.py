"""Suppression exports: the rows `consentgate suppressions export` and the admin API write.

Rows are read with the database's streaming iterator and written out in pieces, so an export
of millions of rows never holds the list in memory. A suppression whose person has no stored
address cannot be exported as an address: erased people, and bulk imports, which keep only the
keyed hash (DESIGN §2). Those are counted (:attr:`SuppressionExport.skipped`), not written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from enum import StrEnum
from typing import NamedTuple

from ledger.store.database import Database, Row, from_db_time

# Text handed out per piece: large enough that a million-row export is a few hundred writes.
PIECE_CHARS = 64 * 1024


class ExportFormat(StrEnum):
    """The layout of an export."""

    CSV = "csv"
    JSONL = "jsonl"


class ExportRecord(NamedTuple):
    """One exported suppression: the address (or its SHA-256), scope, reason, since, source."""

    value: str
    scope: str
    reason: str
    since: str
    source: str


def _stamp(since: int | None) -> str:
    """A stored time as ISO 8601 ('' when unset)."""
    when = from_db_time(since)
    return when.isoformat() if when else ""


@asynccontextmanager
async def _closing(rows: AsyncIterator[Row]) -> AsyncIterator[AsyncIterator[Row]]:
    """``rows``, closed on leaving: a consumer that stops early (a client gone) frees the cursor at once."""
    try:
        yield rows
    finally:
        # The drivers' iterators are async generators (the protocol only promises iteration).
        if isinstance(rows, AsyncGenerator):
            await rows.aclose()


class SuppressionExport:
    """The suppressions of one scope (or of every scope), as addresses or SHA-256 digests.

    Iterate :meth:`records` (or :meth:`text`) once; :attr:`written` and :attr:`skipped` count
    as it goes.
    """

    def __init__(self, db: Database, scope: str | None, *, hashed: bool = False) -> None:
        """Export ``scope`` (a client id or ``global``; None: every scope).

        ``hashed``: the SHA-256 of the lower-cased address instead of it, and the hashed lists
        imported from other providers as well.
        """
        self.db = db
        self.scope = scope
        self.hashed = hashed
        self.written = 0
        self.skipped = 0

    @property
    def columns(self) -> tuple[str, str, str, str, str]:
        """The column names, in order."""
        return ("sha256" if self.hashed else "email", "scope", "reason", "since", "source")

    async def records(self) -> AsyncGenerator[ExportRecord]:
        """Every exported row, ordered by scope then date (hashed lists last)."""
        where = "" if self.scope is None else "WHERE s.scope = $1"
        args = () if self.scope is None else (self.scope,)
        rows = self.db.iterate(
            "SELECT b.address, s.scope, s.reason, s.since, s.source FROM suppressions s "
            f"LEFT JOIN subjects b ON b.subject_key = s.subject_key {where} ORDER BY s.scope, s.since",
            *args,
        )
        async with _closing(rows):
            async for address, scope, reason, since, source in rows:
                if address is None:
                    self.skipped += 1
                    continue
                value = hashlib.sha256(address.lower().encode()).hexdigest() if self.hashed else address
                self.written += 1
                yield ExportRecord(value, scope, reason, _stamp(since), source)
        if not self.hashed:
            return
        hashed_where = "WHERE algo = 'sha256'" + ("" if self.scope is None else " AND scope = $1")
        digests = self.db.iterate(
            f"SELECT digest, scope, reason, since, source FROM hashed_suppressions {hashed_where}", *args
        )
        async with _closing(digests):
            async for digest, scope, reason, since, source in digests:
                self.written += 1
                yield ExportRecord(bytes(digest).hex(), scope, reason, _stamp(since), source)

    async def text(self, fmt: ExportFormat) -> AsyncGenerator[str]:
        """The export as text in pieces of about :data:`PIECE_CHARS`: CSV with a header, or JSON lines."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if fmt is ExportFormat.CSV:
            writer.writerow(self.columns)
        columns = self.columns
        async with aclosing(self.records()) as records:
            async for record in records:
                if fmt is ExportFormat.CSV:
                    writer.writerow(record)
                else:
                    buffer.write(
                        json.dumps(dict(zip(columns, record, strict=True)), ensure_ascii=False) + "\n"
                    )
                if buffer.tell() >= PIECE_CHARS:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue()


__all__ = ["ExportFormat", "ExportRecord", "SuppressionExport"]
