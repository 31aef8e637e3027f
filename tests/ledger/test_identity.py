"""Address normalisation and subject keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import InvalidAddress
from ledger.identity import identify, normalise, subject_key

PEPPER = b"p" * 32


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Bob@Example.ORG", "bob@example.org"),
        ("  <bob@example.org> ", "bob@example.org"),
        ("BOB@EXAMPLE.ORG", "bob@example.org"),
        ("anna@bücher.example", "anna@xn--bcher-kva.example"),
        ("anna@XN--BCHER-KVA.example", "anna@xn--bcher-kva.example"),
        ("Ștefan@exemplu.ro", "ștefan@exemplu.ro"),
    ],
)
def test_normalise_folds_case_and_idna(raw: str, expected: str) -> None:
    """Different spellings of one mailbox normalise to one canonical form."""
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    "bad", ["", "bob", "bob@", "@example.org", "bob@@example.org", "bob@exa mple.org", "a@b"]
)
def test_invalid_addresses_are_refused_with_reason(bad: str) -> None:
    """Malformed addresses raise InvalidAddress naming the input."""
    with pytest.raises(InvalidAddress, match="not a valid address"):
        normalise(bad)


def test_subject_key_is_keyed_and_stable() -> None:
    """The same address gives the same key under one pepper and a different one under another."""
    a = identify(PEPPER, "Bob@Example.ORG")
    b = identify(PEPPER, "bob@example.org")
    assert a == b
    assert len(a.subject_key) == 32
    assert subject_key(b"q" * 32, a.address) != a.subject_key
    assert b"bob" not in a.subject_key


def test_nfc_and_nfd_forms_are_one_subject() -> None:
    """A decomposed (NFD) local part matches its composed (NFC) form."""
    composed = "\u00e9lise@example.org"
    decomposed = "e\u0301lise@example.org"
    assert identify(PEPPER, composed).subject_key == identify(PEPPER, decomposed).subject_key


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_normalise_never_raises_anything_but_invalid_address(text: str) -> None:
    """Arbitrary input either normalises idempotently or raises InvalidAddress."""
    try:
        once = normalise(text)
    except InvalidAddress:
        return
    assert normalise(once) == once
