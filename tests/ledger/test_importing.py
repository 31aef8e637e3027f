"""Pure import parsing: layouts, bad rows with line numbers, the fast address path, batch hashing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.chain import GENESIS_HASH, event_hash
from ledger.chain_batch import EventHasher
from ledger.errors import InvalidAddress
from ledger.identity import normalise
from ledger.importing import (
    ImportFormat,
    Rejected,
    SuppressionRow,
    detect_format,
    normalise_address,
    normalise_fast,
    parse_suppressions,
    read_records,
    suppression_row,
)
from ledger.models import LedgerEvent, LedgerEventKind, Reason

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def _parse(
    data: bytes, fmt: ImportFormat = ImportFormat.AUTO, name: str = "f"
) -> list[SuppressionRow | Rejected]:
    """Parse bytes as a file."""
    return list(parse_suppressions(data.splitlines(keepends=True), fmt, name, NOW))


def _general(data: bytes, name: str = "f") -> list[SuppressionRow | Rejected]:
    """The general (record) path, for comparison."""
    out: list[SuppressionRow | Rejected] = []
    for item in read_records(data.splitlines(keepends=True), ImportFormat.AUTO, name):
        out.append(item if isinstance(item, Rejected) else suppression_row(item, name, NOW))
    return out


BAD_CSV = (
    b"\xef\xbb\xbfEmail,Reason,Date\r\n"
    b"Ann@Example.org,,2026-01-02\r\n"
    b"\r\n"
    b"not-an-address,,\r\n"
    b"bob@example.org,spam,\r\n"
    b"carl@example.org,,2026-02-30\r\n"
    b"dan@example.org,,2030-01-01\r\n"
    b"eve@example.org,unsubscribed\r\n"
    b"\xff\xfe@example.org,,\r\n"
    b'"fay@example.org","bounce","2026-03-04T10:00:00Z"\r\n'
    b'"gus@example.org,,\r\n'
    b"h\xc3\xa9l\xc3\xa8ne@b\xc3\xbccher.example,,\r\n"
)


def test_bad_rows_are_named_by_line_and_good_rows_kept() -> None:
    """BOM, CRLF, blank lines, bad address/date/columns/encoding/quoting: each bad line named."""
    rows = _parse(BAD_CSV, name="list.csv")
    good = [r for r in rows if isinstance(r, SuppressionRow)]
    bad = {r.line: r.error for r in rows if isinstance(r, Rejected)}
    assert [(r.line, r.address) for r in good] == [
        (2, "ann@example.org"),
        (5, "bob@example.org"),
        (10, "fay@example.org"),
        (12, "hélène@xn--bcher-kva.example"),
    ]
    assert good[0].at == datetime(2026, 1, 2, tzinfo=UTC) and good[1].reason is Reason.COMPLAINT
    assert good[2].reason is Reason.HARD_BOUNCE
    assert sorted(bad) == [4, 6, 7, 8, 9, 11]
    assert "valid address" in bad[4] and "bad date" in bad[6] and "future" in bad[7]
    assert bad[8] == "expected 3 columns, found 2" and "UTF-8" in bad[9] and "CSV" in bad[11]
    assert all(r.file == "list.csv" for r in rows if isinstance(r, Rejected))
    assert rows == _general(BAD_CSV, "list.csv")


def test_layouts_are_detected() -> None:
    """Plain text and JSON lines are recognised; comments and blank lines skipped."""
    assert detect_format("a@b.org") is ImportFormat.TXT
    assert detect_format('{"email": "a@b.org"}') is ImportFormat.JSONL
    assert detect_format("email;date") is ImportFormat.CSV
    assert detect_format("x", "list.jsonl") is ImportFormat.JSONL
    txt = _parse(b"# exported\nA@B.org\n\nnope\n")
    assert [(r.line, type(r).__name__) for r in txt] == [(2, "SuppressionRow"), (4, "Rejected")]
    jsonl = _parse(b'{"email": "a@b.org", "date": 1700000000}\n[1]\n{"email": 5}\n{bad\n')
    assert isinstance(jsonl[0], SuppressionRow) and jsonl[0].at == datetime.fromtimestamp(1700000000, UTC)
    assert [r.line for r in jsonl if isinstance(r, Rejected)] == [2, 3, 4]


def test_header_without_email_column_fails_the_file() -> None:
    """A CSV whose header names no e-mail column cannot be read at all: one clear error."""
    with pytest.raises(ValueError, match=r"f:1: the CSV header .* has no e-mail column"):
        _parse(b"name,date\nx,y\n")


def test_fast_path_covers_the_common_case() -> None:
    """Plain ASCII addresses take the fast path; IDNA, quoted, special-use and odd ones do not."""
    assert normalise_fast("John.Smith+tag@Mail.Example.COM") == "john.smith+tag@mail.example.com"
    for odd in (
        "a@xn--bcher-kva.example",
        "a@b.test",
        "a..b@c.org",
        '"a b"@c.org',
        "a@c",
        "a@-b.org",
        "é@b.org",
    ):
        assert normalise_fast(odd) is None
    assert normalise_address(" <Ann@Example.ORG> ") == "ann@example.org"
    with pytest.raises(InvalidAddress):
        normalise_address("ann@@example.org")


_LOCAL = st.text(alphabet="abcXYZ019._+-!#'\"é", min_size=0, max_size=12)
_LABEL = st.text(alphabet="abzAZ09-_", min_size=0, max_size=10)
_TLD = st.sampled_from(["org", "COM", "test", "local", "io", "x", "c0m", "xn--p1ai", "localhost", "arpa"])


@settings(max_examples=3000, deadline=None)
@given(_LOCAL, st.lists(_LABEL, min_size=0, max_size=3), _TLD)
def test_fast_path_agrees_with_email_validator(local: str, labels: list[str], tld: str) -> None:
    """Whenever the fast path answers, email-validator accepts the address and normalises it identically."""
    address = f"{local}@{'.'.join([*labels, tld])}"
    fast = normalise_fast(address)
    if fast is None:
        return
    assert normalise(address) == fast


def test_batch_hasher_matches_event_hash() -> None:
    """EventHasher produces the bytes chain.event_hash does, for new and continued chains."""
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    for seq, prev, source in ((1, GENESIS_HASH, 'written "request" é'), (7, b"\x01" * 32, "")):
        event = LedgerEvent(
            "acme", b"\xab" * 32, seq, LedgerEventKind.COMPLAINT, at, source=source, detail="complaint"
        )
        hasher = EventHasher("acme", LedgerEventKind.COMPLAINT, detail="complaint")
        assert hasher.hash(b"\xab" * 32, seq, at, source, prev) == event_hash(event, prev)
    assert EventHasher("a", LedgerEventKind.OPT_OUT).hash(
        b"\x00" * 32, 1, at - timedelta(days=1), "", GENESIS_HASH
    )
