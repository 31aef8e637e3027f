"""Bulk suppression imports, fast and tamper-evident (pure: no I/O, no clock, secrets passed in).

A bulk import does not write one hash-chained ledger event per person (four row writes per
address cap SQLite near 70k rows/s before any parsing, see docs/benchmarks.md). Instead each
*batch* of new suppressions is recorded by ONE ledger event on the scope's import-batch chain
(subject :data:`IMPORT_BATCHES_SUBJECT`) whose detail carries the number of rows and a digest:
SHA-256 over the sorted SHA-256 hashes of the rows' canonical content (scope, subject key,
reason, since, source). Each suppression row names its batch, so ``ledger verify`` recomputes
the digest and finds any row altered, deleted or slipped into a batch. Erasure, re-consent and
rectification, which legitimately change such rows, first record the row's hash in a
``suppression_removed`` event on the same chain (:func:`removal_detail`), so verify still passes.

This module also holds the per-row work of an import, tight enough for a million rows:
:class:`Keyer` (HMAC-SHA256 with the pads hashed once), :class:`RowHasher` (the row hash from
cached JSON fragments) and :class:`SuppressionKeyer` (parse + validate + key + hash a block of
lines, as a worker process does).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ledger.identity import normalise_fast
from ledger.importing import (
    _REASONS,
    DATE_CACHE_SIZE,
    Record,
    Rejected,
    SuppressionLayout,
    SuppressionRow,
    _csv_record,
    _printable,
    parse_when,
    suppression_lines,
    suppression_row,
)
from ledger.models import GLOBAL_SCOPE, Reason

# The subject key the batch events of every scope are chained under (no person has it: it is
# not an HMAC of any address under the pepper, only a fixed SHA-256).
IMPORT_BATCHES_SUBJECT = hashlib.sha256(b"consentgate:suppression-import-batches").digest()

# A keyed row: (subject key, since in µs since the epoch, reason, source, row hash). A plain tuple:
# a million are built and sorted (stably, by key: the file's first row of a key wins) per import.
KeyedRow = tuple[bytes, int, str, str, bytes]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_SHA256_BLOCK = 64

_BATCH_DETAIL = re.compile(r"import batch: (\d+) suppression\(s\), rows sha256 ([0-9a-f]{64})")
_REMOVAL_DETAIL = re.compile(
    r"removed from import batch (\d+): subject ([0-9a-f]{64}) row ([0-9a-f]{64}) \((.*)\)", re.DOTALL
)


def micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (the ledger's stored time)."""
    return (moment - _EPOCH) // _MICROSECOND


class Keyer:
    """HMAC-SHA256 under one key, with the key's inner and outer pads hashed once.

    Byte-identical to ``hmac.digest(key, data, "sha256")`` (RFC 2104; a property test checks it)
    at ~0.7 µs instead of ~1.6 µs: the one-shot function re-hashes both 64-byte pads per call.
    """

    def __init__(self, key: bytes) -> None:
        """Prepare the two pad states."""
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        padded = key.ljust(_SHA256_BLOCK, b"\x00")
        self._inner = hashlib.sha256(padded.translate(_IPAD))
        self._outer = hashlib.sha256(padded.translate(_OPAD))

    def digest(self, data: bytes) -> bytes:
        """HMAC-SHA256(key, data)."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def row_content(scope: str, subject_key: bytes, reason: str, since: int, source: str) -> bytes:
    """The canonical bytes a suppression row is hashed over (the reference encoding)."""
    return json.dumps(
        [scope, subject_key.hex(), reason, since, source], separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def row_hash(scope: str, subject_key: bytes, reason: str, since: int, source: str) -> bytes:
    """SHA-256 of :func:`row_content`."""
    return hashlib.sha256(row_content(scope, subject_key, reason, since, source)).digest()


class RowHasher:
    """:func:`row_hash` for the rows of one scope, from cached JSON fragments (byte-identical).

    Exact because hex digits and integers never need JSON escaping; the strings that might
    (scope, reason, source) are encoded by ``json.dumps`` once each.
    """

    def __init__(self, scope: str) -> None:
        """Encode the scope once."""
        self._head = json.dumps([scope], ensure_ascii=True)[:-1] + ',"'
        self._strings: dict[str, str] = {}

    def _json(self, text: str) -> str:
        """``json.dumps(text)``, cached (reasons and sources repeat)."""
        found = self._strings.get(text)
        if found is None:
            if len(self._strings) > 10_000:
                self._strings.clear()
            found = self._strings[text] = json.dumps(text, ensure_ascii=True)
        return found

    def hash(self, subject_key: bytes, reason: str, since: int, source: str) -> bytes:
        """The row hash of (this scope, subject_key, reason, since, source)."""
        text = f'{self._head}{subject_key.hex()}",{self._json(reason)},{since},{self._json(source)}]'
        return hashlib.sha256(text.encode("ascii")).digest()


def batch_digest(rows: Iterable[tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over a batch's row hashes in subject-key order, from (subject key, row hash) pairs.

    The import hands them in key order already (its batches are sorted), so it sorts nothing;
    verify, which reads rows in any order and adds the removed ones, sorts.
    """
    return hashlib.sha256(b"".join([row for _key, row in sorted(rows)])).digest()


def sorted_batch_digest(row_hashes: Iterable[bytes]) -> bytes:
    """:func:`batch_digest` of row hashes already in subject-key order."""
    return hashlib.sha256(b"".join(row_hashes)).digest()


def batch_detail(count: int, digest: bytes) -> str:
    """The detail text of a batch's ledger event."""
    return f"import batch: {count} suppression(s), rows sha256 {digest.hex()}"


def parse_batch_detail(detail: str) -> tuple[int, bytes] | None:
    """(row count, digest) of a batch event's detail, or None if it is not one."""
    match = _BATCH_DETAIL.fullmatch(detail)
    return None if match is None else (int(match.group(1)), bytes.fromhex(match.group(2)))


def removal_detail(batch: int, subject_key: bytes, row: bytes, why: str) -> str:
    """The detail of a ``suppression_removed`` event: which batch, the row's key and hash, and why."""
    return f"removed from import batch {batch}: subject {subject_key.hex()} row {row.hex()} ({why})"


def parse_removal_detail(detail: str) -> tuple[int, bytes, bytes] | None:
    """(batch, subject key, row hash) of a removal event's detail, or None if it is not one."""
    match = _REMOVAL_DETAIL.fullmatch(detail)
    if match is None:
        return None
    return int(match.group(1)), bytes.fromhex(match.group(2)), bytes.fromhex(match.group(3))


def verify_batch(
    batch: int,
    recorded: tuple[int, bytes],
    stored: list[tuple[bytes, bytes]],
    removed: list[tuple[bytes, bytes]],
) -> str | None:
    """Why batch ``batch`` does not verify (None when it does).

    ``recorded`` is (count, digest) from its event; ``stored`` the (subject key, row hash) of the
    rows that name it now; ``removed`` those recorded by legitimate removals.
    """
    count, digest = recorded
    found = len(stored) + len(removed)
    if batch_digest([*stored, *removed]) == digest and found == count:
        return None
    if found < count:
        what = f"{count - found} row(s) fewer than recorded (a suppression was deleted)"
    elif found > count:
        what = f"{found - count} row(s) more than recorded (a row was added to the batch)"
    else:
        what = "a suppression row was altered"
    return f"import batch {batch}: its suppressions do not match its digest: {what}"


@dataclass(frozen=True, slots=True)
class KeyingParams:
    """What every worker needs to key rows: the pepper, the scope and the defaults."""

    pepper: bytes
    scope: str
    source: str
    now: datetime


# A block's keyed rows in columns, sorted by key (stably: file order among equal keys): keys and
# row hashes as concatenated 32-byte strings, then since, reason and source per row. Columns
# pickle ~8x faster than a list of tuples, which matters when a worker process hands them back.
KeyedBlock = tuple[bytes, bytes, list[int], list[str], list[str]]


def block_rows(block: KeyedBlock) -> list[KeyedRow]:
    """The rows of a :data:`KeyedBlock`, as tuples again (in the same order)."""
    keys, hashes, sinces, reasons, sources = block
    size = 32 * len(sinces)
    return list(
        zip(
            [keys[i : i + 32] for i in range(0, size, 32)],
            sinces,
            reasons,
            sources,
            [hashes[i : i + 32] for i in range(0, size, 32)],
            strict=True,
        )
    )


class SuppressionKeyer:
    """Turns lines (or validated rows) into keyed rows plus rejections: the per-row work of an import."""

    def __init__(self, params: KeyingParams) -> None:
        """Prepare the keyer and the row hasher."""
        self.params = params
        self._keyer = Keyer(params.pepper)
        self._hasher = RowHasher(params.scope)
        self._now_us = micros(params.now)
        self._default_reason = str(
            Reason.GLOBAL_OPTOUT if params.scope == GLOBAL_SCOPE else Reason.UNSUBSCRIBED
        )
        # The reason column's accepted spellings, straight to the stored reason text.
        self._reasons = {
            text: self._default_reason if reason is None else str(reason) for text, reason in _REASONS.items()
        }

    def key_rows(self, rows: Iterable[SuppressionRow | Rejected]) -> tuple[KeyedBlock, list[Rejected]]:
        """Key validated rows (rejections pass through) into a sorted :data:`KeyedBlock`."""
        columns: tuple[list[bytes], list[int], list[str], list[str], list[bytes]] = ([], [], [], [], [])
        rejected: list[Rejected] = []
        for row in rows:
            self._add(row, columns, rejected)
        return self._sorted(columns), rejected

    def _add(
        self,
        row: SuppressionRow | Rejected,
        columns: tuple[list[bytes], list[int], list[str], list[str], list[bytes]],
        rejected: list[Rejected],
    ) -> None:
        """Key one validated row into ``columns`` (or file its rejection): the general path."""
        if isinstance(row, Rejected):
            rejected.append(row)
            return
        since = self._now_us if row.at is None else micros(row.at)
        reason = self._default_reason if row.reason is None else str(row.reason)
        source = row.source or self.params.source
        key = self._keyer.digest(row.address.encode("utf-8"))
        columns[0].append(key)
        columns[1].append(since)
        columns[2].append(reason)
        columns[3].append(source)
        columns[4].append(self._hasher.hash(key, reason, since, source))

    @staticmethod
    def _sorted(columns: tuple[list[bytes], list[int], list[str], list[str], list[bytes]]) -> KeyedBlock:
        """The columns reordered by key (a stable sort: file order among equal keys)."""
        keys, sinces, reasons, sources, hashes = columns
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return (
            b"".join([keys[i] for i in order]),
            b"".join([hashes[i] for i in order]),
            [sinces[i] for i in order],
            [reasons[i] for i in order],
            [sources[i] for i in order],
        )

    def block(
        self, lines: list[bytes], layout: SuppressionLayout, start: int, file_name: str
    ) -> tuple[KeyedBlock, list[Rejected]]:
        """Parse, validate, key and hash one block of a file's data lines (line ``start`` first).

        Gives exactly what :meth:`key_rows` of :func:`suppression_lines` gives (a test checks
        it); unquoted CSV lines, nearly all of a real file, are done inline here: every function
        call, tuple and datetime saved is a few hundred nanoseconds times a million rows.
        """
        now = self.params.now
        if layout.csv is None:
            return self.key_rows(suppression_lines(lines, layout, start, file_name, now))
        csv_layout = layout.csv
        columns: tuple[list[bytes], list[int], list[str], list[str], list[bytes]] = ([], [], [], [], [])
        keys, sinces, reasons_out, sources, hashes = columns
        rejected: list[Rejected] = []
        names = list(csv_layout.columns)
        delimiter, width = csv_layout.delimiter, len(names)
        email_i, reason_i = csv_layout.email_i, csv_layout.reason_i
        source_i, date_i = csv_layout.source_i, csv_layout.date_i
        fast = normalise_fast
        reasons = self._reasons
        default_source = self.params.source
        now_us = self._now_us
        inner, outer = self._keyer._inner.copy, self._keyer._outer.copy
        sha256 = hashlib.sha256
        head = self._hasher._head
        json_of = self._hasher._json
        since_of: dict[str, int] = {}
        for number, raw in enumerate(lines, start=start):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                rejected.append(
                    Rejected(file_name, number, f"not valid UTF-8 (byte {exc.start + 1})", _printable(raw))
                )
                continue
            if '"' in line or not line.strip():
                if line.strip():
                    record = _csv_record(line, number, file_name, names, delimiter)
                    general = (
                        record if isinstance(record, Rejected) else suppression_row(record, file_name, now)
                    )
                    self._add(general, columns, rejected)
                continue
            parts = line.split(delimiter)
            if len(parts) != width:
                rejected.append(
                    Rejected(file_name, number, f"expected {width} columns, found {len(parts)}", line)
                )
                continue
            address = fast(parts[email_i].strip())
            reason = reasons.get(parts[reason_i].strip().lower() if reason_i >= 0 else "")
            since: int | None = now_us
            if date_i >= 0:
                date_text = parts[date_i].strip()
                if date_text:
                    # Exports repeat the same dates (and often the same times): parse each once.
                    since = since_of.get(date_text)
                    if since is None:
                        try:
                            since = micros(parse_when(date_text, now))
                        except (ValueError, OverflowError, OSError):
                            address = None
                        else:
                            if len(since_of) > DATE_CACHE_SIZE:
                                since_of.clear()
                            since_of[date_text] = since
            if address is None or reason is None or since is None:
                # Anything unusual (non-ASCII or odd address, unknown reason, bad date) takes the
                # general path, which owns the error messages.
                record = Record(number, {c: v.strip() for c, v in zip(names, parts, strict=True)}, line)
                self._add(suppression_row(record, file_name, now), columns, rejected)
                continue
            source = (parts[source_i].strip() if source_i >= 0 else "") or default_source
            hmac_inner = inner()
            hmac_inner.update(address.encode("ascii"))
            hmac_outer = outer()
            hmac_outer.update(hmac_inner.digest())
            key = hmac_outer.digest()
            keys.append(key)
            sinces.append(since)
            reasons_out.append(reason)
            sources.append(source)
            hashes.append(
                sha256(
                    f'{head}{key.hex()}",{json_of(reason)},{since},{json_of(source)}]'.encode("ascii")
                ).digest()
            )
        return self._sorted(columns), rejected


_WORKER: SuppressionKeyer | None = None


def worker_init(params: KeyingParams) -> None:
    """Process-pool initialiser: build this worker's keyer once."""
    global _WORKER
    _WORKER = SuppressionKeyer(params)


def worker_block(
    data: bytes, layout: SuppressionLayout, start: int, file_name: str
) -> tuple[KeyedBlock, list[Rejected]]:
    """Process-pool task: ``data`` is whole lines of a file (split here, off the main process)."""
    assert _WORKER is not None, "worker_init was not run"
    return _WORKER.block(split_lines(data), layout, start, file_name)


def split_lines(data: bytes) -> list[bytes]:
    """Whole lines of a block, as iterating over a binary file gives them (line ends kept off)."""
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines
