"""Tests of the signed tokens and signed click links."""

from __future__ import annotations

import base64
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger import tokens
from ledger.errors import InvalidToken, LedgerError
from ledger.tokens import TokenKeys, TokenPayload

KEYS = TokenKeys({1: b"k" * 32}, current=1)
TODAY = 2200
MAX_AGE = 365
PAYLOAD = TokenPayload(client_num=7, campaign_num=1234, subject_ref=bytes(range(12)), issued_day=TODAY)
BASE32_CHARS = "abcdefghijklmnopqrstuvwxyz234567"


def _verify(token: str, keys: TokenKeys = KEYS, today: int = TODAY) -> TokenPayload:
    """Verify with the suite's defaults."""
    return tokens.verify(token, keys, today=today, max_age_days=MAX_AGE)


def test_invalid_token_is_a_ledger_error() -> None:
    """Callers can catch every ledger failure, tokens included, with one except clause."""
    assert issubclass(InvalidToken, LedgerError)


def test_round_trip() -> None:
    """A signed token verifies back to its payload."""
    assert _verify(tokens.sign(PAYLOAD, KEYS)) == PAYLOAD


def test_token_is_lower_case_base32() -> None:
    """Tokens use only the lower-case RFC 4648 base32 alphabet (no padding)."""
    token = tokens.sign(PAYLOAD, KEYS)
    assert set(token) <= set(BASE32_CHARS)


def test_upper_case_token_verifies() -> None:
    """An MTA that upper-cases the local part does not break the token."""
    assert _verify(tokens.sign(PAYLOAD, KEYS).upper()) == PAYLOAD


def test_token_with_large_ids_fits_local_part() -> None:
    """With 10 000 clients and 100 M campaigns, `unsubscribe+TOKEN` stays within 64 octets."""
    payload = TokenPayload(16_383, 200_000_000, b"\xff" * 12, tokens.MAX_DAY)
    token = tokens.sign(payload, TokenKeys({255: b"x" * 32}, current=255))
    assert len(token) <= 52
    assert len(f"unsubscribe+{token}") <= 64
    assert tokens.verify(token, TokenKeys({255: b"x" * 32}, 255), tokens.MAX_DAY, 1) == payload


def test_ids_too_large_for_52_chars_refused() -> None:
    """sign() refuses ids it could only encode in a token too long for a local part."""
    with pytest.raises(ValueError, match="too large"):
        tokens.sign(TokenPayload(2**40, 2**40, bytes(12), 0), KEYS)


def test_payload_validation() -> None:
    """A payload the layout cannot carry is refused when built."""
    with pytest.raises(ValueError):
        TokenPayload(1, 1, b"short", 0)
    with pytest.raises(ValueError):
        TokenPayload(-1, 1, bytes(12), 0)
    with pytest.raises(ValueError):
        TokenPayload(1, 1, bytes(12), 70_000)


def test_keys_validation() -> None:
    """A key set must contain its current key, one-byte ids and keys of at least 16 bytes."""
    with pytest.raises(ValueError):
        TokenKeys({1: b"k" * 32}, current=2)
    with pytest.raises(ValueError):
        TokenKeys({256: b"k" * 32}, current=256)
    with pytest.raises(ValueError):
        TokenKeys({1: b"short"}, current=1)


def test_forged_mac_rejected() -> None:
    """A token signed with another key of the same id does not verify."""
    forged = tokens.sign(PAYLOAD, TokenKeys({1: b"z" * 32}, current=1))
    with pytest.raises(InvalidToken):
        _verify(forged)


def test_every_truncation_rejected() -> None:
    """No prefix of a valid token verifies."""
    token = tokens.sign(PAYLOAD, KEYS)
    for length in range(len(token)):
        with pytest.raises(InvalidToken):
            _verify(token[:length])


@pytest.mark.parametrize("suffix", ["a", "aa", "q", "7777777", "="])
def test_extra_characters_rejected(suffix: str) -> None:
    """Characters appended to a valid token make it invalid."""
    with pytest.raises(InvalidToken):
        _verify(tokens.sign(PAYLOAD, KEYS) + suffix)


def test_unknown_key_id_rejected() -> None:
    """A token whose key id is not configured is refused."""
    token = tokens.sign(PAYLOAD, TokenKeys({9: b"k" * 32}, current=9))
    with pytest.raises(InvalidToken, match="unknown key"):
        _verify(token)


def test_wrong_version_rejected() -> None:
    """A token claiming another layout version is refused even if its MAC is right."""
    raw = bytearray(base64.b32decode(_pad(tokens.sign(PAYLOAD, KEYS))))
    raw[0] = 2
    body = bytes(raw[: -tokens.MAC_BYTES])
    resigned = body + tokens._token_mac(KEYS.current_key, body)
    with pytest.raises(InvalidToken, match="version"):
        _verify(tokens._b32encode(resigned))


def test_rotation_old_key_still_verifies() -> None:
    """After rotation the new key signs and tokens signed with the old key still verify."""
    old = TokenKeys({1: b"a" * 32}, current=1)
    rotated = TokenKeys({1: b"a" * 32, 2: b"b" * 32}, current=2)
    old_token = tokens.sign(PAYLOAD, old)
    new_token = tokens.sign(PAYLOAD, rotated)
    assert _verify(old_token, rotated) == PAYLOAD
    assert _verify(new_token, rotated) == PAYLOAD
    with pytest.raises(InvalidToken):
        _verify(new_token, old)


def test_expiry_boundary() -> None:
    """A token is valid exactly max_age_days after issue and refused one day later."""
    token = tokens.sign(PAYLOAD, KEYS)
    assert _verify(token, today=TODAY + MAX_AGE) == PAYLOAD
    with pytest.raises(InvalidToken, match="expired"):
        _verify(token, today=TODAY + MAX_AGE + 1)


def test_future_issue_boundary() -> None:
    """One day of clock skew is tolerated, two are not."""
    token = tokens.sign(PAYLOAD, KEYS)
    assert _verify(token, today=TODAY - 1) == PAYLOAD
    with pytest.raises(InvalidToken, match="future"):
        _verify(token, today=TODAY - 2)


@pytest.mark.parametrize(
    "garbage",
    ["", "a", "!!!!", "a" * 52, "A" * 53, "0189", "é" * 10, "aaaa aaaa", "\x00" * 20, "a" * 10_000],
)
def test_garbage_rejected(garbage: str) -> None:
    """Strings that are not tokens raise InvalidToken and nothing else."""
    with pytest.raises(InvalidToken):
        _verify(garbage)


def test_kelvin_sign_is_not_a_k() -> None:
    """A non-ASCII letter that lower-cases to an ASCII one (K, KELVIN SIGN) is not a 'k'."""
    candidates = (tokens.sign(TokenPayload(n, 1, bytes(12), TODAY), KEYS) for n in range(500))
    token = next(t for t in candidates if "k" in t)
    assert "\u212a".lower() == "k"  # the trap this test is about
    with pytest.raises(InvalidToken):
        _verify(token.replace("k", "\u212a", 1))


def test_day_number() -> None:
    """Days count from 2020-01-01 UTC, whatever the input's time zone."""
    assert tokens.day_number(datetime(2020, 1, 1, tzinfo=UTC)) == 0
    assert tokens.day_number(datetime(2021, 1, 1, 12, tzinfo=UTC)) == 366
    plus_two = timezone(timedelta(hours=2))
    assert tokens.day_number(datetime(2020, 1, 2, 1, tzinfo=plus_two)) == 0
    with pytest.raises(ValueError):
        tokens.day_number(datetime(2020, 1, 1))  # naive on purpose


def test_subject_ref_is_prefix() -> None:
    """The subject reference is the first 12 bytes of the subject key."""
    key = bytes(range(32))
    assert tokens.subject_ref(key) == key[:12]


payloads = st.builds(
    TokenPayload,
    client_num=st.integers(0, 16_383),
    campaign_num=st.integers(0, 2**28 - 1),
    subject_ref=st.binary(min_size=12, max_size=12),
    issued_day=st.integers(0, tokens.MAX_DAY),
)


@given(payloads)
def test_property_round_trip(payload: TokenPayload) -> None:
    """Every representable payload round-trips through a token of at most 52 characters."""
    token = tokens.sign(payload, KEYS)
    assert len(token) <= 52
    assert tokens.verify(token, KEYS, payload.issued_day, 0) == payload


@settings(max_examples=300)
@given(payloads, st.data())
def test_property_single_character_mutation_rejected(payload: TokenPayload, data: st.DataObject) -> None:
    """Replacing any one character by a different one (not merely its other case) is rejected."""
    token = tokens.sign(payload, KEYS)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c.lower() != token[index]))
    mutated = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(InvalidToken):
        tokens.verify(mutated, KEYS, payload.issued_day, 0)


@settings(max_examples=300)
@given(st.one_of(st.text(), st.text(alphabet=BASE32_CHARS + BASE32_CHARS.upper())))
def test_property_random_strings_only_raise_invalid_token(text: str) -> None:
    """Random input never raises anything but InvalidToken (and practically never verifies)."""
    with pytest.raises(InvalidToken):
        _verify(text)


URL = "https://shop.example.com/sale?utm_source=mail&id=42#top"


def test_link_round_trip() -> None:
    """A signed link segment yields back its link id and URL."""
    segment = tokens.sign_link(URL, KEYS)
    assert tokens.verify_link(segment, KEYS) == (tokens.link_id(URL, KEYS), URL)


def test_link_segment_is_path_safe() -> None:
    """The segment uses only characters that need no escaping in a URL path."""
    segment = tokens.sign_link(URL + "/ünïcode?x=ä", KEYS)
    assert set(segment) <= set(string.ascii_letters + string.digits + "-_.")


def test_link_id_stable_per_url_and_key() -> None:
    """The same URL gets the same id (unique clicks per link); another URL gets another."""
    assert tokens.link_id(URL, KEYS) == tokens.link_id(URL, KEYS)
    assert tokens.link_id(URL, KEYS) != tokens.link_id(URL + "x", KEYS)


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "mailto:a@b.example", "//evil.example", "ftp://x.example/", "https://a b"],
)
def test_only_http_urls_signed(url: str) -> None:
    """Non-http(s) URLs cannot be signed, so the click endpoint is no open redirect."""
    with pytest.raises(ValueError):
        tokens.sign_link(url, KEYS)


def test_link_with_substituted_url_rejected() -> None:
    """Swapping the URL part of a segment for another URL breaks the signature."""
    lid = tokens.link_id(URL, KEYS)
    evil = base64.urlsafe_b64encode(b"https://evil.example/").rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        tokens.verify_link(f"{lid}.{evil}", KEYS)


def test_link_from_other_key_rejected() -> None:
    """A segment signed under an unknown key id is refused."""
    segment = tokens.sign_link(URL, TokenKeys({3: b"q" * 32}, current=3))
    with pytest.raises(InvalidToken):
        tokens.verify_link(segment, KEYS)


def test_link_and_token_macs_are_not_interchangeable() -> None:
    """Token and link MACs are domain-separated (same key, different purposes)."""
    body = b"\x01\x01https://x.example/"
    assert tokens._token_mac(KEYS.current_key, body) != tokens._link_mac(KEYS.current_key, body.decode())


@settings(max_examples=200)
@given(st.data())
def test_property_link_mutation_rejected(data: st.DataObject) -> None:
    """Any single-character change to a signed link segment is rejected."""
    segment = tokens.sign_link(URL, KEYS)
    index = data.draw(st.integers(0, len(segment) - 1))
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != segment[index]))
    mutated = segment[:index] + replacement + segment[index + 1 :]
    # Changing only the case of the (case-insensitive, base32) link id names the same link.
    assume(not (index < 18 and mutated.lower() == segment.lower()))
    with pytest.raises(InvalidToken):
        tokens.verify_link(mutated, KEYS)


@settings(max_examples=300)
@given(st.text())
def test_property_random_link_segments_only_raise_invalid_token(text: str) -> None:
    """Random link segments never raise anything but InvalidToken."""
    with pytest.raises(InvalidToken):
        tokens.verify_link(text, KEYS)


def _pad(token: str) -> str:
    """Upper-case and pad a token for the stdlib base32 decoder."""
    return token.upper() + "=" * (-len(token) % 8)
