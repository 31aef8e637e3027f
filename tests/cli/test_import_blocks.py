"""Block-wise parsing of import files, in worker processes and in-process: same rows, same rejects."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from cli.import_blocks import blocks, parsed_blocks, start_pool, worker_count
from ledger.import_batch import KeyingParams, SuppressionKeyer, block_rows
from ledger.importing import ImportFormat, Rejected, parse_suppressions

NOW = datetime(2026, 11, 22, tzinfo=UTC)
PARAMS = KeyingParams(b"k" * 32, "acme", "import", NOW)


def _csv() -> bytes:
    """A semicolon CSV with a BOM, CRLF and LF lines, quoted lines and bad rows of every kind."""
    out = [b"\xef\xbb\xbfEmail;Reason;Date\r\n"]
    for i in range(3000):
        if i % 97 == 5:
            out.append(f"user{i}@@example.org;;\r\n".encode())
        elif i % 97 == 6:
            out.append(f"user{i}@example.org;;2026-02-31\r\n".encode())
        elif i % 97 == 7:
            out.append(b"\xff\xfe@example.org;;\r\n")
        elif i % 97 == 8:
            out.append(f'"user{i}@example.org";"complaint";"2026-01-01"\r\n'.encode())
        elif i % 97 == 9:
            out.append(f"user{i % 50}@example.org;;\r\n".encode())  # a duplicate of an earlier row
        else:
            out.append(f"User{i}@Example{i % 7}.org;{'spam' if i % 3 else ''};\n".encode())
    return b"".join(out)


def _reference(data: bytes, fmt: ImportFormat) -> tuple[list[tuple[object, ...]], list[Rejected]]:
    """The serial path: parse_suppressions over the whole file, keyed in one go."""
    block, rejected = SuppressionKeyer(PARAMS).key_rows(parse_suppressions(io.BytesIO(data), fmt, "f", NOW))
    return sorted(block_rows(block), key=lambda r: r[0]), rejected


async def _blockwise(
    data: bytes, fmt: ImportFormat, parallel: bool
) -> tuple[list[tuple[object, ...]], list[Rejected]]:
    """parsed_blocks with 4 KB blocks, in workers or in-process; rows merged as the importer does."""
    pool = start_pool(PARAMS, 2) if parallel else None
    rows: list[tuple[object, ...]] = []
    rejected: list[Rejected] = []
    try:
        async for block, bad in parsed_blocks(io.BytesIO(data), fmt, "f", PARAMS, pool, block_bytes=4096):
            rows += block_rows(block)
            rejected += bad
    finally:
        if pool is not None:
            pool.shutdown()
    rows.sort(key=lambda r: r[0])
    return rows, rejected


async def test_workers_and_in_process_give_the_serial_result() -> None:
    """Across ~30 blocks: identical keyed rows (stable, duplicates in file order) and rejects in line order."""
    data = _csv()
    expected_rows, expected_rejected = _reference(data, ImportFormat.AUTO)
    assert len(expected_rejected) == 3 * 31 and len(expected_rows) == 3000 - 3 * 31
    for parallel in (False, True) if worker_count() else (False,):
        rows, rejected = await _blockwise(data, ImportFormat.AUTO, parallel)
        assert rows == expected_rows
        assert rejected == expected_rejected
        assert [r.line for r in rejected] == sorted(r.line for r in rejected)


async def test_text_files_and_blocks_without_final_newline() -> None:
    """TXT with a BOM and comments, JSON lines, and a last line without newline: same as serial."""
    txt = (
        b"\xef\xbb\xbfa@example.org\n# comment\n\nb@@example.org\n"
        + b"c@example.org\n" * 500
        + b"d@example.org"
    )
    jsonl = b'{"email": "a@example.org", "reason": "spam"}\n[1]\n' * 300 + b'{"email": "x@example.org"}'
    for data, fmt in ((txt, ImportFormat.AUTO), (jsonl, ImportFormat.JSONL)):
        assert await _blockwise(data, fmt, parallel=False) == _reference(data, fmt)


def test_blocks_cut_at_line_ends_and_number_lines() -> None:
    """Each block holds whole lines and knows its first line's number."""
    data = b"".join(f"line {i}\n".encode() for i in range(1, 1001)) + b"tail"
    seen = list(blocks(io.BytesIO(data), b"", 1, size=100))
    assert b"".join(block for block, _ in seen) == data
    for block, first in seen:
        assert block.startswith(f"line {first}\n".encode()) or block == b"tail"
