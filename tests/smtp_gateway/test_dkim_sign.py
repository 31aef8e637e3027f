"""Tests of DKIM signing with OpenSSL RSA (smtp_gateway.dkim_sign)."""

from __future__ import annotations

import re
import time
from functools import cache

import dkim
import pytest
from dkim.util import parse_tag_value

from smtp_gateway.dkim_sign import DkimSigner, generate_rsa_key

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
    stock = dkim.sign(
        MESSAGE,
        b"sel",
        b"shop.example.com",
        key_pair()[0],
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=include,
    )
    assert signer().sign(MESSAGE) == stock + MESSAGE


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
