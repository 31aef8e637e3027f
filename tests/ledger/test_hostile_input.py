"""Hostile input to the pure core: address spellings, the importer's fast path, CSV files (hypothesis, bounded)."""

from __future__ import annotations

import string

from conftest import NOW
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import InvalidAddress
from ledger.identity import normalise
from ledger.importing import ImportFormat, Rejected, SuppressionRow, normalise_address, parse_suppressions

# Characters that break naive address handling: case folds, look-alikes, separators, IDNA.
TRICKY = (
    string.ascii_letters
    + string.digits
    + ".-_+%!'\"@<> \t,;:()[]\\"
    + "\u212a"  # KELVIN SIGN, folds to k
    + "\u0130ß\u00e9e\u0301\uff20\u3002"  # dotted I, sharp s, é composed and decomposed, fullwidth @, ideographic dot
    + "\x00\r\n"
)
PARTS = st.text(alphabet=TRICKY, min_size=0, max_size=20)
LABELS = st.sampled_from(
    ["example", "EXAMPLE", "xn--bcher-kva", "bücher", "b--x", "localhost", "test", "org", "co"]
)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    """Mostly address-shaped strings built from tricky pieces."""
    local = draw(PARTS)
    labels = draw(st.lists(LABELS | PARTS, min_size=1, max_size=4))
    wrap = draw(st.sampled_from(["{}", "<{}>", " {} ", "{}\r\n"]))
    return wrap.format(f"{local}@{'.'.join(labels)}")


def _outcome(function: object, text: str) -> str | None:
    """The normalised address, or None when refused as invalid (any other exception propagates)."""
    try:
        return function(text)  # type: ignore[operator, no-any-return]
    except InvalidAddress:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(addresses())
def test_importer_and_gateway_agree_on_every_spelling(text: str) -> None:
    """The importer's fast path never disagrees with the gateway's normalisation: no suppression misses its key."""
    candidate = text.strip()
    if candidate.startswith("<") and candidate.endswith(">"):
        candidate = candidate[1:-1]
    assert _outcome(normalise_address, text) == _outcome(normalise, candidate)


@settings(max_examples=300, deadline=None)
@given(addresses())
def test_normalised_form_is_a_fixed_point_and_case_blind(text: str) -> None:
    """A normalised address normalises to itself, and its upper-case spelling is the same subject."""
    first = _outcome(normalise, text)
    if first is None:
        return
    assert normalise(first) == first
    upper = _outcome(normalise, first.upper())
    assert upper in (first, None)  # some upper-case forms (ß → SS) are other mailboxes or invalid


CSV_GARBAGE = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")) | st.text(
    alphabet="\",;\t'\\ =+-@\x00abc\u00e9", max_size=40
).map(lambda t: t.encode("utf-8"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.booleans(), CSV_GARBAGE), max_size=30),
    st.sampled_from([b"email,reason,source", b"Email;Reason", b"\xef\xbb\xbfe-mail\tsource", b"address"]),
)
def test_csv_import_never_loses_or_invents_rows(lines: list[tuple[bool, bytes]], header: bytes) -> None:
    """Random CSV bodies: each planted good address is imported, every other line is rejected or skipped, nothing raises."""
    body = [header + b"\n"]
    planted = []
    delimiter = b";" if b";" in header else b"\t" if b"\t" in header else b","
    columns = len(header.split(delimiter))
    for number, (good, garbage) in enumerate(lines):
        if good:
            address = f"Good.{number}@Example.org"
            planted.append(address.lower())
            body.append(address.encode() + delimiter * (columns - 1) + b"\r\n")
        else:
            body.append(garbage + b"\n")
    results = list(parse_suppressions(body, ImportFormat.CSV, "fuzz.csv", NOW))
    rows = [r for r in results if isinstance(r, SuppressionRow)]
    rejected = [r for r in results if isinstance(r, Rejected)]
    assert len(rows) + len(rejected) <= len(lines)
    assert set(planted) <= {r.address for r in rows}
    for row in rows:
        assert normalise(row.address) == row.address  # whatever got in is canonical
    for item in rejected:
        assert 2 <= item.line <= len(body) and item.describe()
