"""Pure bulk-import keying and batch digests: fast paths byte-identical to their references."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from test_importing import BAD_CSV

from ledger.import_batch import (
    Keyer,
    KeyingParams,
    RowHasher,
    SuppressionKeyer,
    batch_detail,
    batch_digest,
    block_rows,
    micros,
    parse_batch_detail,
    parse_removal_detail,
    removal_detail,
    row_content,
    row_hash,
    sorted_batch_digest,
    split_lines,
    verify_batch,
)
from ledger.importing import ImportFormat, Rejected, suppression_layout, suppression_lines
from ledger.store.database import to_db_time

NOW = datetime(2026, 11, 22, tzinfo=UTC)
PARAMS = KeyingParams(b"pepper-" * 5, "acme", "file", NOW)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=150), st.binary(min_size=0, max_size=200))
def test_keyer_is_hmac_sha256(key: bytes, data: bytes) -> None:
    """Keyer (pads hashed once) gives hmac.digest's bytes, for short, block-sized and long keys."""
    assert Keyer(key).digest(data) == hmac.digest(key, data, "sha256")


@settings(max_examples=500, deadline=None)
@given(
    st.text(max_size=20), st.binary(min_size=32, max_size=32), st.text(max_size=20), st.integers(), st.text()
)
def test_row_hasher_matches_the_reference_encoding(
    scope: str, key: bytes, reason: str, since: int, source: str
) -> None:
    """RowHasher hashes exactly row_content's bytes (JSON escapes, non-ASCII, negative times)."""
    content = row_content(scope, key, reason, since, source)
    assert json.loads(content) == [scope, key.hex(), reason, since, source]
    expected = hashlib.sha256(content).digest()
    assert (
        RowHasher(scope).hash(key, reason, since, source)
        == expected
        == row_hash(scope, key, reason, since, source)
    )


def test_micros_is_the_stored_time() -> None:
    """The pure core's microseconds equal the store's to_db_time."""
    for moment in (
        NOW,
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1960, 1, 1, tzinfo=UTC),
    ):
        assert micros(moment) == to_db_time(moment)


# The hostile rows of the importer's own test, without their header, plus a few more.
CSV = BAD_CSV.split(b"\r\n", 1)[1] + (
    b"ann@example.org,complaint,1767225600\r\n"
    b"ivy@example.org,Hard_Bounce,2026-01-02 \r\n"
    b"jo@example.org,frobbed,\r\n"
)


def test_inline_block_equals_the_general_path() -> None:
    """block() (inlined fast path) gives the same sorted rows and rejections as keying suppression_lines."""
    layout = suppression_layout([b"email,reason,date\n"], ImportFormat.AUTO, "f.csv")
    assert layout is not None
    lines = split_lines(CSV)
    keyer = SuppressionKeyer(PARAMS)
    fast, fast_rejected = keyer.block(lines, layout, 2, "f.csv")
    general, general_rejected = keyer.key_rows(suppression_lines(lines, layout, 2, "f.csv", NOW))
    assert fast == general
    assert fast_rejected == general_rejected
    assert [r.line for r in fast_rejected] == [4, 6, 7, 8, 9, 11, 15]
    rows = block_rows(fast)
    assert len(rows) == 6 and [r[0] for r in rows] == sorted(r[0] for r in rows)
    ann = Keyer(PARAMS.pepper).digest(b"ann@example.org")
    # Both of ann's rows are kept here (dedupe is the importer's): the file's first comes first.
    assert [(r[2], r[1]) for r in rows if r[0] == ann] == [
        ("unsubscribed", micros(datetime(2026, 1, 2, tzinfo=UTC))),
        ("complaint", 1767225600 * 1_000_000),
    ]
    for key, since, reason, source, digest in rows:
        assert digest == row_hash("acme", key, reason, since, source) and source == "file"


def test_txt_layout_goes_through_the_general_path() -> None:
    """A plain-text block is keyed like its validated rows; bad lines are rejected by number."""
    layout = suppression_layout([b"a@example.org\n"], ImportFormat.AUTO, "f.txt")
    assert layout is not None and layout.csv is None
    block, rejected = SuppressionKeyer(PARAMS).block(
        [b"a@example.org", b"# note", b"b@@x"], layout, 1, "f.txt"
    )
    assert len(block_rows(block)) == 1 and [(r.line, type(r)) for r in rejected] == [(3, Rejected)]


def test_batch_digest_and_details() -> None:
    """The digest is over row hashes in key order; details round-trip; verify_batch names what is wrong."""
    rows = sorted(
        (hashlib.sha256(bytes([i])).digest(), hashlib.sha256(bytes([i, i])).digest()) for i in range(5)
    )
    digest = batch_digest(reversed(rows))
    assert digest == sorted_batch_digest([r for _k, r in rows])
    assert parse_batch_detail(batch_detail(5, digest)) == (5, digest)
    assert parse_removal_detail(removal_detail(3, rows[0][0], rows[0][1], "erasure")) == (3, *rows[0])
    assert parse_batch_detail("hashed list sha256: 3 digests") is None
    assert verify_batch(1, (5, digest), rows[1:], rows[:1]) is None
    assert "fewer" in (verify_batch(1, (5, digest), rows[1:], []) or "")
    assert "more" in (verify_batch(1, (4, digest), rows, []) or "")
    altered = [(rows[0][0], b"\x00" * 32), *rows[1:]]
    assert "altered" in (verify_batch(1, (5, digest), altered, []) or "")
