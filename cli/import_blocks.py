"""Reading an import file in blocks of whole lines, in worker processes when it pays.

The code lives in :mod:`ledger.store.import_files`, shared with the admin API's imports; the CLI
forks the worker pool (:func:`start_pool`) before its event loop and database thread exist.
"""

from __future__ import annotations

from ledger.store.import_files import (
    BLOCK_BYTES,
    IN_FLIGHT_PER_WORKER,
    PARALLEL_MIN_BYTES,
    Parsed,
    blocks,
    parsed_blocks,
    read_layout,
    start_pool,
    worker_count,
)

__all__ = [
    "BLOCK_BYTES",
    "IN_FLIGHT_PER_WORKER",
    "PARALLEL_MIN_BYTES",
    "Parsed",
    "blocks",
    "parsed_blocks",
    "read_layout",
    "start_pool",
    "worker_count",
]
