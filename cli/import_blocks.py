"""Reading an unsubscribe file in blocks of whole lines, parsed by worker processes when it pays.

Parsing, validating, keying (HMAC) and hashing cost ~3 µs a row in Python, as much as writing
the row: on a large file they run in worker processes (one per core, forked before the event
loop and the database thread exist) while the main process sorts and writes. Blocks are handed
out and their results taken back in file order, so rejected rows are reported in line order and
the import is deterministic. Small files and stdin are parsed in this process (same code).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import IO

from ledger.import_batch import (
    KeyedBlock,
    KeyingParams,
    SuppressionKeyer,
    split_lines,
    worker_block,
    worker_init,
)
from ledger.importing import ImportFormat, Rejected, SuppressionLayout, suppression_layout

BLOCK_BYTES = 1 << 20
PARALLEL_MIN_BYTES = 4 << 20
# Blocks handed out ahead: enough (~16 MB, ~450k rows) for the workers to parse the next sort
# window while the main process writes this one.
IN_FLIGHT_PER_WORKER = 8

Parsed = tuple[KeyedBlock, list[Rejected]]


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


def read_layout(
    handle: IO[bytes], fmt: ImportFormat, name: str
) -> tuple[SuppressionLayout | None, bytes, int]:
    """Read up to the first non-blank line: (layout, bytes still to parse, their first line number).

    Raises ValueError for a CSV header without an e-mail column.
    """
    head: list[bytes] = []
    while True:
        raw = handle.readline()
        if not raw:
            break
        head.append(raw)
        if raw.strip():
            break
    layout = suppression_layout(head, fmt, name)
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
) -> AsyncIterator[Parsed]:
    """Keyed rows (each block's sorted by key) and rejections of one file, block by block, in order."""
    layout, prefix, start = read_layout(handle, fmt, name)
    if layout is None:
        return
    if pool is None:
        keyer = SuppressionKeyer(params)
        for block, line in blocks(handle, prefix, start, block_bytes):
            yield keyer.block(split_lines(block), layout, line, name)
            await asyncio.sleep(0)
        return
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


__all__ = ["BLOCK_BYTES", "PARALLEL_MIN_BYTES", "blocks", "parsed_blocks", "start_pool", "worker_count"]
