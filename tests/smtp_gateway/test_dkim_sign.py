"""Tests of DKIM signing with OpenSSL RSA (smtp_gateway.dkim_sign)."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from functools import cache

import dkim
import pytest
from dkim.canonicalization import Relaxed
from dkim.util import parse_tag_value
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_gateway.dkim_sign import SIGNED_HEADERS, DkimSigner, generate_rsa_key, relaxed_body, split_message

FIXED_TIME = 1_741_075_964
MESSAGE = (
    b"From: Shop <news@shop.example.com>\r\n"
    b"To: alice@example.org\r\n"
    b"Subject: Spring sale\r\n"
    b"Date: Tue, 04 Mar 2025 09:12:44 +0100\r\n"
    b"Message-ID: <1@shop.example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Received: by mailer.shop.example.com\r\n"
    b"List-Unsubscribe: <https://links.example.com/u/abc>,\r\n"
    b" <mailto:unsubscribe+abc@in.example.com>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"\r\n"
    b"Hello Alice,\r\n\r\n20% off   everything.  \r\n\r\n\r\n"
)


@cache
def key_pair() -> tuple[bytes, str]:
    """One RSA-2048 key for the whole module (generation takes ~100 ms)."""
    return generate_rsa_key()


def dns(name: bytes, timeout: int = 5) -> bytes | None:
    """The DNS answer for the test selector: the generated public key's TXT record."""
    if name == b"sel._domainkey.shop.example.com.":
        return key_pair()[1].encode("ascii")
    return None


def signer() -> DkimSigner:
    """A signer for shop.example.com with a fixed clock."""
    return DkimSigner("shop.example.com", "sel", key_pair()[0], clock=lambda: FIXED_TIME)


def tags(signed: bytes) -> dict[bytes, bytes]:
    """The tags of the (first) DKIM-Signature header."""
    header = signed.split(b"\r\n\r\n", 1)[0]
    sig = dkim.rfc822_parse(header + b"\r\n\r\n")[0][0]
    assert sig[0] == b"DKIM-Signature"
    parsed: dict[bytes, bytes] = parse_tag_value(sig[1])
    return parsed


def test_signature_verifies() -> None:
    """A signed message verifies against the public key published in DNS."""
    signed = signer().sign(MESSAGE)
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(MESSAGE)
    assert dkim.verify(signed, dnsfunc=dns)


def test_txt_record_format() -> None:
    """The DNS TXT value names DKIM1 and RSA and carries the public key."""
    assert key_pair()[1].startswith("v=DKIM1; k=rsa; p=MII")


def test_signed_header_list() -> None:
    """h= names the RFC 8058 headers, only headers that are present, and not Received."""
    h = re.sub(rb"\s", b"", tags(signer().sign(MESSAGE))[b"h"]).split(b":")
    assert b"list-unsubscribe" in h and b"list-unsubscribe-post" in h
    assert h == [
        b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
        b"content-type", b"list-unsubscribe", b"list-unsubscribe-post",
    ]  # fmt: skip


def test_tags() -> None:
    """rsa-sha256, relaxed/relaxed, the domain, selector and clock time; never l=."""
    t = tags(signer().sign(MESSAGE))
    assert t[b"a"] == b"rsa-sha256"
    assert t[b"c"] == b"relaxed/relaxed"
    assert (t[b"d"], t[b"s"], t[b"t"]) == (b"shop.example.com", b"sel", str(FIXED_TIME).encode())
    assert b"l" not in t


def test_altered_body_fails() -> None:
    """Changing the body after signing breaks the signature."""
    signed = signer().sign(MESSAGE)
    assert not dkim.verify(signed.replace(b"20% off", b"90% off"), dnsfunc=dns)


def test_altered_list_unsubscribe_fails() -> None:
    """Changing List-Unsubscribe or adding a second List-Unsubscribe-Post breaks it."""
    signed = signer().sign(MESSAGE)
    assert not dkim.verify(signed.replace(b"/u/abc", b"/u/evil"), dnsfunc=dns)
    body_start = signed.index(b"\r\n\r\n")
    assert not dkim.verify(
        signed[:body_start] + b"\r\nList-Unsubscribe-Post: x" + signed[body_start:], dnsfunc=dns
    )


def test_relaxed_canonicalisation_tolerates_rewrapping() -> None:
    """relaxed/relaxed survives whitespace changes in headers and trailing blanks in the body."""
    signed = signer().sign(MESSAGE)
    rewrapped = signed.replace(b"Subject: Spring sale", b"Subject:   Spring    sale")
    rewrapped = rewrapped.replace(b"everything.  \r\n", b"everything.\r\n")
    assert dkim.verify(rewrapped, dnsfunc=dns)


def test_identical_to_stock_dkimpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same message, key and time: the header equals dkimpy's own, byte for byte."""
    monkeypatch.setattr(time, "time", lambda: FIXED_TIME)
    include = [
        b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
        b"content-type", b"list-unsubscribe", b"list-unsubscribe-post",
    ]  # fmt: skip
    assert signer().sign(MESSAGE) == stock_signature(MESSAGE, include) + MESSAGE


def stock_signature(message: bytes, include: list[bytes]) -> bytes:
    """The DKIM-Signature header stock dkimpy makes for ``message`` (relaxed/relaxed, the test key)."""
    header: bytes = dkim.sign(
        message,
        b"sel",
        b"shop.example.com",
        key_pair()[0],
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=include,
    )
    return header


def test_timestamp_from_clock() -> None:
    """Without an injected clock, t= is the current time."""
    signed = DkimSigner("shop.example.com", "sel", key_pair()[0]).sign(MESSAGE)
    assert abs(int(tags(signed)[b"t"]) - time.time()) < 60


def test_lf_message_verifies() -> None:
    """A message with bare LF line endings still signs and verifies (dkimpy reads both)."""
    lf = MESSAGE.replace(b"\r\n", b"\n")
    assert dkim.verify(signer().sign(lf), dnsfunc=dns)


def test_rejects_non_rsa_and_small_keys() -> None:
    """Ed25519 keys (not accepted alone by Gmail) and keys under 1024 bits are refused."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError):
        DkimSigner("shop.example.com", "sel", pem)
    with pytest.raises(ValueError):
        DkimSigner("shop.example.com", "sel", generate_rsa_key(bits=768)[0])


def test_rejects_message_without_from() -> None:
    """RFC 6376 requires From to be signed; a message without it is refused."""
    with pytest.raises(ValueError):
        signer().sign(b"To: a@example.org\r\n\r\nbody\r\n")


# --- The fast parse and body canonicalisation against dkimpy's own functions ---------------------


class DkimpyPartsSigner(DkimSigner):
    """DkimSigner with dkimpy's rfc822_parse and canonicalize_body put back (the previous code)."""

    _split = staticmethod(dkim.rfc822_parse)
    _canonicalize_body = staticmethod(Relaxed.canonicalize_body)


# Fragments that exercise every rule: runs of spaces and tabs, whitespace before CRLF, bare LF and
# CR, blank lines (also at the end), colons, an mbox "From " line, non-ASCII and control bytes.
_FRAGMENTS = [
    b" ", b"  ", b"\t", b" \t ", b"\t\t", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r\n", b"\r\n\r\n",
    b"\n\n", b"word", b"x", b"<p>", b"a: b", b":", b"From ", b"\xc3\xa9", b"\x00", b"\x0b", b"\x7f",
]  # fmt: skip
_RUN = st.builds(
    lambda n, chunk: chunk * n,
    st.integers(0, 200),
    st.sampled_from([b" ", b"\t", b" \t", b"\r\n", b"\n", b"y", b"  \r\n"]),
)
_BODIES = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), _RUN, st.binary(max_size=6)), max_size=40).map(
    b"".join
)

_EOL = st.sampled_from([b"\r\n", b"\r\n", b"\n"])
_NAMES = st.sampled_from(
    [b"From", b"from", b"To", b"CC", b"Subject", b"Date", b"Message-ID", b"Content-Type",
     b"List-Unsubscribe", b"Received", b"X-Mailer", b"X-Odd!~Name", b"a"]
)  # fmt: skip
_TEXT = st.lists(st.sampled_from([b" ", b"\t", b"  ", b"x", b"y z", b"<a@b.c>", b":", b";"]), max_size=8).map(
    b"".join
)


@st.composite
def _messages(draw: st.DrawFn, *, with_from: bool = False) -> bytes:
    """A message as a mail client might write it: headers (folded or not), optional blank line, body."""
    lines = []
    if draw(st.booleans()):
        lines.append(b"From sender@example.org Tue Mar  4 09:12:44 2025")
    names = draw(st.lists(_NAMES, max_size=6))
    if with_from:
        names.insert(draw(st.integers(0, len(names))), b"From")
    for name in names:
        lines.append(name + b":" + draw(_TEXT))
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(st.sampled_from([b" ", b"\t", b"  \t"])) + draw(_TEXT))
    message = b"".join(line + draw(_EOL) for line in lines)
    if draw(st.booleans()):
        message += draw(_EOL) + draw(_BODIES)
    elif message and draw(st.booleans()):
        message = message.rstrip(b"\r\n")  # headers only, last line unterminated
    return message


# Anything at all: malformed header lines, a continuation line first, garbage before the blank line.
_ANY_MESSAGES = st.one_of(
    _messages(),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=6)), max_size=30).map(b"".join),
    st.binary(max_size=80),
)


def _outcome(parse: Callable[[bytes], object], message: bytes) -> object:
    """The parse result, or the exception's type and text (rfc822_parse raises for bad headers)."""
    try:
        return parse(message)
    except Exception as exc:  # the exact exception (type and text) is what is compared
        return (type(exc), str(exc))


@settings(max_examples=1000, deadline=None)
@given(_BODIES)
def test_relaxed_body_is_dkimpys(body: bytes) -> None:
    """relaxed_body returns exactly what dkimpy's relaxed body canonicalisation returns."""
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


def _random_body(rng: random.Random, parts: int) -> bytes:
    """A body of ``parts`` fragments and runs (indentation, long lines, blank lines), seeded."""
    pieces = [*_FRAGMENTS, b"Spring sale: 20% off everything.", b'<td class="cell">']
    out = []
    for _ in range(parts):
        if rng.random() < 0.1:
            out.append(rng.choice([b" ", b"\t", b"\r\n", b"\n", b"z"]) * rng.randrange(0, 200))
        else:
            out.append(rng.choice(pieces))
    return b"".join(out)


def _random_message(rng: random.Random) -> bytes:
    """A seeded message: header lines, continuation lines and sometimes a broken line, then a body."""
    lines = []
    for _ in range(rng.randrange(0, 12)):
        kind = rng.random()
        if kind < 0.7:
            lines.append(
                rng.choice([b"From", b"To", b"Subject", b"X-A", b"b!"]) + b":" + _random_body(rng, 3)
            )
        elif kind < 0.95:
            lines.append(rng.choice([b" ", b"\t"]) + _random_body(rng, 3).replace(b"\n", b""))
        else:
            lines.append(_random_body(rng, 2))  # often malformed: rfc822_parse must raise the same
    eols = [b"\r\n", b"\r\n", b"\n", b"\r\r\n"]
    message = b"".join(line.replace(b"\n", b"") + rng.choice(eols) for line in lines)
    if rng.random() < 0.8:
        message += rng.choice(eols) + _random_body(rng, rng.randrange(0, 300))
    return message


def test_seeded_random_messages() -> None:
    """On 5,000 seeded messages (bodies up to ~20 KB) parse and body match dkimpy's byte for byte."""
    rng = random.Random(6376)
    for _ in range(5000):
        message = _random_message(rng)
        assert _outcome(split_message, message) == _outcome(dkim.rfc822_parse, message), message
        body = _random_body(rng, rng.randrange(0, 1500)) if rng.random() < 0.05 else message
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"\r\n\r\n", b" ", b"\t\r\n", b"a", b"a \t", b"a\r\n \r\n\t\r\n", b"\n\n", b"\r"],
)
def test_relaxed_body_edge_cases(body: bytes) -> None:
    """Empty bodies, only blank lines, only whitespace, no final CRLF: as dkimpy."""
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=1000, deadline=None)
@given(_ANY_MESSAGES)
def test_split_message_is_rfc822_parse(message: bytes) -> None:
    """split_message gives rfc822_parse's headers and body, or raises the same exception."""
    assert _outcome(split_message, message) == _outcome(dkim.rfc822_parse, message)


@pytest.mark.parametrize(
    "message",
    [
        b"", b"\r\n", b"\n", b"\r\nbody\n", b"From: a\r\n", b"From: a", b"From: a\n\nb\nc\r\n",
        b"From: a\r\n\nb", b"From: a\n\r\nb", b"From: a\r\r\n\r\nb", b"From: a\r\n \r\n\r\nb",
        b"From x\r\nFrom: a\r\n\r\nb", b" x\r\n\r\n", b"Bad header\r\n\r\nb", b"From: a\r\n\r\nBad\r\n",
    ],
)  # fmt: skip
def test_split_message_edge_cases(message: bytes) -> None:
    """Leading blank line, no blank line, mixed endings, a bare CR, bad headers: as rfc822_parse."""
    assert _outcome(split_message, message) == _outcome(dkim.rfc822_parse, message)


def test_malformed_header_is_value_error() -> None:
    """A header line without a colon is refused with ValueError; the same text in the body is fine."""
    with pytest.raises(ValueError, match="cannot DKIM-sign"):
        signer().sign(b"From: a@shop.example.com\r\nnot a header\r\n\r\nbody\r\n")
    signed = signer().sign(b"From: a@shop.example.com\r\n\r\nnot a header\r\n")
    assert dkim.verify(signed, dnsfunc=dns)


def test_leading_continuation_line_is_value_error() -> None:
    """A first line starting with a space (dkimpy's parser raises IndexError) is refused with ValueError."""
    with pytest.raises(ValueError, match="cannot DKIM-sign"):
        signer().sign(b" folded\r\nFrom: a@shop.example.com\r\n\r\nbody\r\n")


@cache
def signers() -> tuple[DkimSigner, DkimpyPartsSigner]:
    """The signer under test and the previous code, built once (loading the key checks it: ~40 ms)."""
    return signer(), DkimpyPartsSigner("shop.example.com", "sel", key_pair()[0], clock=lambda: FIXED_TIME)


@settings(max_examples=300, deadline=None)
@given(_messages(with_from=True))
def test_signature_unchanged_and_verifies(message: bytes) -> None:
    """On random messages the DKIM-Signature is byte for byte the previous code's, and verifies."""
    new, previous = signers()
    signed = new.sign(message)
    assert signed == previous.sign(message)
    assert dkim.verify(signed, dnsfunc=dns)


@pytest.mark.parametrize(
    "message",
    [
        MESSAGE.replace(b"\r\n", b"\n"),
        MESSAGE.replace(b"20% off   everything.", b"\t20%\t\toff \t everything.\t"),
        MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n",
        MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n",
        MESSAGE + b"\r\n" * 50 + b" \t \r\n",
        MESSAGE + b"<div>" + b"    <p>x</p>  \r\n" * 300,
    ],
    ids=["lf-only", "tabs", "empty-body", "no-blank-line", "trailing-blank-lines", "indented-html"],
)
def test_identical_to_stock_dkimpy_edge_cases(monkeypatch: pytest.MonkeyPatch, message: bytes) -> None:
    """LF-only, tabs, empty body, no blank line, trailing blank lines: the same header as dkimpy's."""
    monkeypatch.setattr(time, "time", lambda: FIXED_TIME)
    include = [name for name, _ in dkim.rfc822_parse(message)[0] if name.lower() in SIGNED_HEADERS]
    stock = stock_signature(message, [name.lower() for name in include])
    assert signer().sign(message) == stock + message
