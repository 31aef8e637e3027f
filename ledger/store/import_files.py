"""Importing files into the ledger: what `unsubscribe import`, `consent import` and the admin API share.

A file arrives as a binary handle (a named file, stdin, or an HTTP body spooled to a temporary
file); the pure parser (:mod:`ledger.importing`, :mod:`ledger.import_batch`) validates its rows and
the bulk importers (:mod:`ledger.store.imports`) write them. Bad rows go to a callback with their
file name and line number; a file that cannot be read at all (a CSV header without an e-mail
column, or one that is not UTF-8) raises :class:`UnreadableFile` before anything of it is written.

Suppression files are read in blocks of whole lines. Parsing, validating, keying (HMAC) and
hashing cost ~3 µs a row in Python, as much as writing the row: on a large file the CLI runs them
in worker processes (one per core, forked before the event loop and the database thread exist)
while the main process sorts and writes. Blocks are handed out and their results taken back in
file order, so rejected rows are reported in line order and the import is deterministic. Small
files and stdin are parsed in this process (same code); a server parses in a thread instead
(``offload``), so that its event loop keeps answering other requests during a large import.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from typing import IO

from ledger.errors import LedgerError
from ledger.import_batch import (
    KeyedBlock,
    KeyingParams,
    SuppressionKeyer,
    split_lines,
    worker_block,
    worker_init,
)
from ledger.importing import (
    ConsentRow,
    HashAlgo,
    HashedRow,
    ImportFormat,
    Rejected,
    SuppressionLayout,
    consent_row,
    hashed_row,
    read_records,
    suppression_layout,
)
from ledger.models import ConsentProof
from ledger.store.imports import (
    SORT_WINDOW_ROWS,
    ConsentCounts,
    ImportCounts,
    Progress,
    SuppressionImporter,
    import_consents,
    import_hashed,
)
from ledger.store.ledger_store import SqlLedgerStore

BLOCK_BYTES = 1 << 20
PARALLEL_MIN_BYTES = 4 << 20
# Blocks handed out ahead: enough (~16 MB, ~450k rows) for the workers to parse the next sort
# window while the main process writes this one.
IN_FLIGHT_PER_WORKER = 8
# Consent rows parsed per hop to a thread (offload): ~15 ms of parsing, so the loop stays live.
CONSENT_CHUNK_ROWS = 2_000

Parsed = tuple[KeyedBlock, list[Rejected]]
RejectSink = Callable[[Rejected], None]


class UnreadableFile(LedgerError, ValueError):
    """An import file none of whose rows can be read: a CSV header without an e-mail column, or not UTF-8."""


def worker_count() -> int:
    """Worker processes to parse with: one per core when fork is available (≥ 2 cores), else 0."""
    cores = os.cpu_count() or 1
    if cores < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return cores


def start_pool(params: KeyingParams, workers: int) -> ProcessPoolExecutor:
    """Fork the workers now (call before any thread exists: the event loop, the database thread)."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=worker_init,
        initargs=(params,),
    )
    # With fork, the first submit starts every worker at once: do it while this process is
    # single-threaded.
    pool.submit(os.getpid).result()
    return pool


def blocks(
    handle: IO[bytes], prefix: bytes, start: int, size: int = BLOCK_BYTES
) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines from ``handle`` (after ``prefix``), each with its first line's number."""
    carry = prefix
    line = start
    while True:
        chunk = handle.read(size)
        if not chunk:
            if carry:
                yield carry, line
            return
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        block, carry = (data, b"") if cut == len(data) else (data[:cut], data[cut:])
        yield block, line
        line += block.count(b"\n")


def read_head(
    handle: IO[bytes], fmt: ImportFormat, name: str
) -> tuple[SuppressionLayout | None, list[bytes]]:
    """Read up to the first non-blank line: the file's layout (None when empty) and the lines read.

    Raises :class:`UnreadableFile`, naming the file and line, for a CSV header without an e-mail
    column or one that is not UTF-8 (a spreadsheet saved as UTF-16 or Latin-1: no row could be read).
    """
    head: list[bytes] = []
    while True:
        raw = handle.readline()
        if not raw:
            break
        head.append(raw)
        if raw.strip():
            break
    try:
        return suppression_layout(head, fmt, name), head
    except UnicodeDecodeError as exc:
        raise UnreadableFile(
            f"{name}:{len(head)}: the CSV header is not valid UTF-8 (byte {exc.start + 1}); "
            "save the file as UTF-8"
        ) from None
    except ValueError as exc:
        raise UnreadableFile(str(exc)) from None


def read_layout(
    handle: IO[bytes], fmt: ImportFormat, name: str
) -> tuple[SuppressionLayout | None, bytes, int]:
    """Read up to the first non-blank line: (layout, bytes still to parse, their first line number).

    Raises :class:`UnreadableFile` for a CSV header without an e-mail column (see :func:`read_head`).
    """
    layout, head = read_head(handle, fmt, name)
    if layout is None:
        return None, b"", len(head) + 1
    if layout.csv is None:
        return layout, b"".join(head), 1
    return layout, b"", layout.first_data_line


async def parsed_blocks(
    handle: IO[bytes],
    fmt: ImportFormat,
    name: str,
    params: KeyingParams,
    pool: ProcessPoolExecutor | None,
    block_bytes: int = BLOCK_BYTES,
    *,
    offload: bool = False,
) -> AsyncIterator[Parsed]:
    """Keyed rows (each block's sorted by key) and rejections of one file, block by block, in order.

    Without a pool, blocks are parsed in this process: on the event loop's thread, or in a
    worker thread when ``offload`` is set (reading the next block there too).
    """
    layout, prefix, start = read_layout(handle, fmt, name)
    if layout is None:
        return
    if pool is None:
        keyer = SuppressionKeyer(params)
        pieces = blocks(handle, prefix, start, block_bytes)

        def parse_next() -> Parsed | None:
            """The next block parsed, or None at the end of the file."""
            for block, line in pieces:
                return keyer.block(split_lines(block), layout, line, name)
            return None

        while True:
            parsed = await asyncio.to_thread(parse_next) if offload else parse_next()
            if parsed is None:
                return
            yield parsed
            await asyncio.sleep(0)
    limit = IN_FLIGHT_PER_WORKER * worker_count()
    pending: deque[Future[Parsed]] = deque()
    submit: Callable[..., Future[Parsed]] = pool.submit
    try:
        for block, line in blocks(handle, prefix, start, block_bytes):
            pending.append(submit(worker_block, block, layout, line, name))
            if len(pending) >= limit:
                yield await asyncio.wrap_future(pending.popleft())
        while pending:
            yield await asyncio.wrap_future(pending.popleft())
    finally:
        for future in pending:
            future.cancel()


class SuppressionFileImport:
    """One unsubscribe import of one or more files into a scope: keyed rows, or a hashed list.

    Rows already suppressed are counted, not duplicated, so an import can simply be run again.
    Call :meth:`check_scope`, then :meth:`add_file` for each file, then :meth:`finish`.
    """

    def __init__(
        self,
        store: SqlLedgerStore,
        pepper: bytes,
        scope: str,
        source: str,
        now: datetime,
        *,
        on_reject: RejectSink,
        hashed: HashAlgo | None = None,
        dry_run: bool = False,
        pool: ProcessPoolExecutor | None = None,
        offload: bool = False,
        progress: Progress | None = None,
        large_cache: bool = True,
        window_rows: int = SORT_WINDOW_ROWS,
    ) -> None:
        """Import into ``scope`` (a client id or global); ``source`` is the default per-row source.

        ``hashed``: the files hold digests of lower-cased addresses (another provider's list).
        ``pool``: worker processes for large files (see :func:`start_pool`); ``offload``: parse
        in a thread instead of on the event loop. ``large_cache``, ``window_rows`` (rows sorted in memory before writing): see
        :class:`SuppressionImporter`.
        """
        self.store = store
        self.scope = scope
        self.source = source
        self.now = now
        self.hashed = hashed
        self.dry_run = dry_run
        self.on_reject = on_reject
        self.pool = pool
        self.offload = offload
        self.params = KeyingParams(pepper, scope, source, now)
        self._digests: list[HashedRow] = []
        self._importer = (
            None
            if hashed is not None
            else SuppressionImporter(
                store,
                pepper,
                scope,
                source,
                now,
                dry_run=dry_run,
                progress=progress,
                large_cache=large_cache,
                window_rows=window_rows,
            )
        )

    async def check_scope(self) -> None:
        """Raise :class:`UnknownClient` before anything is read if the client does not exist.

        (A hashed list checks when it is written, in :meth:`finish`.)
        """
        if self._importer is not None:
            await self._importer.check_scope()

    async def add_file(
        self, handle: IO[bytes], fmt: ImportFormat, name: str, *, parallel: bool = True
    ) -> None:
        """Read one file (``name`` is how reject messages name it); bad rows go to ``on_reject``.

        ``parallel=False`` keeps this file out of the worker processes (stdin: it cannot be
        read ahead in blocks by size). Raises :class:`UnreadableFile` when no row can be read.
        """
        if self._importer is None:
            read = self._hashed_rows
            self._digests += (
                await asyncio.to_thread(read, handle, fmt, name) if self.offload else read(handle, fmt, name)
            )
            return
        async for keyed, bad in parsed_blocks(
            handle, fmt, name, self.params, self.pool if parallel else None, offload=self.offload
        ):
            for rejected in bad:
                self.on_reject(rejected)
            await self._importer.add_block(keyed)

    def _hashed_rows(self, handle: IO[bytes], fmt: ImportFormat, name: str) -> list[HashedRow]:
        """The valid digests of one hashed-list file (rejections to ``on_reject``)."""
        assert self.hashed is not None
        layout, head = read_head(handle, fmt, name)
        chosen = fmt if layout is None else layout.fmt
        rows: list[HashedRow] = []
        for item in read_records(itertools.chain(head, handle), chosen, name):
            checked = item if isinstance(item, Rejected) else hashed_row(item, self.hashed, name, self.now)
            if isinstance(checked, Rejected):
                self.on_reject(checked)
            else:
                rows.append(checked)
        return rows

    async def finish(self) -> ImportCounts:
        """Write what is left; the totals (in a dry run: what would have been written)."""
        if self._importer is not None:
            return await self._importer.finish()
        assert self.hashed is not None
        return await import_hashed(
            self.store, self.scope, self.hashed, self._digests, self.source, self.now, dry_run=self.dry_run
        )


def parse_consents(
    handle: IO[bytes], fmt: ImportFormat, name: str, now: datetime
) -> Iterator[tuple[ConsentRow | Rejected, str]]:
    """Validated opt-in rows (or rejections) of one file, each with its line as read.

    Raises :class:`UnreadableFile`, before the first row, when no row can be read.
    """
    layout, head = read_head(handle, fmt, name)
    chosen = fmt if layout is None else layout.fmt
    for item in read_records(itertools.chain(head, handle), chosen, name):
        if isinstance(item, Rejected):
            yield item, item.raw
        else:
            yield consent_row(item, name, now), item.raw


async def import_consent_file(
    store: SqlLedgerStore,
    pepper: bytes,
    client_id: str,
    handle: IO[bytes],
    fmt: ImportFormat,
    name: str,
    defaults: ConsentProof,
    now: datetime,
    *,
    on_reject: RejectSink,
    on_refused: RejectSink,
    reconsent: bool = False,
    dry_run: bool = False,
) -> int:
    """Import a file of opt-ins with :func:`import_consents`, parsed in a thread a chunk at a time.

    For a server: neither the whole file in memory nor its parsing on the event loop. Bad rows
    go to ``on_reject``, rows refused because the address is suppressed to ``on_refused`` (with
    the reason); returns how many were imported (in a dry run: would be). Raises
    :class:`UnreadableFile` (nothing written) when no row can be read.
    """
    await store.get_client(client_id)
    rows = parse_consents(handle, fmt, name, now)

    def take() -> list[ConsentRow] | None:
        """The good rows among the next chunk of rows; None at the end of the file."""
        good: list[ConsentRow] = []
        taken = 0
        for checked, _raw in rows:
            taken += 1
            if isinstance(checked, Rejected):
                on_reject(checked)
            else:
                good.append(checked)
            if taken >= CONSENT_CHUNK_ROWS:
                return good
        return good if taken else None

    imported = 0
    while (chunk := await asyncio.to_thread(take)) is not None:
        counts: ConsentCounts = await import_consents(
            store, pepper, client_id, chunk, defaults, now, reconsent=reconsent, dry_run=dry_run
        )
        imported += counts.imported
        for line, why in counts.suppressed:
            on_refused(Rejected(name, line, why, ""))
    return imported


__all__ = [
    "BLOCK_BYTES",
    "PARALLEL_MIN_BYTES",
    "RejectSink",
    "SuppressionFileImport",
    "UnreadableFile",
    "blocks",
    "import_consent_file",
    "parse_consents",
    "parsed_blocks",
    "read_head",
    "read_layout",
    "start_pool",
    "worker_count",
]
