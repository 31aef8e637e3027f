"""Micro-benchmark: ms per DKIM signature, stock dkimpy vs DkimSigner (OpenSSL RSA).

Also times DkimSigner with dkimpy's ``rfc822_parse`` and ``canonicalize_body`` put back (the code
before ``split_message`` / ``relaxed_body``), and those two steps alone, on a 5 KB HTML+text copy
with indented HTML and on the relay bench's own message (bench/loadgen.py, no indentation).

Run: .venv/bin/python bench/micro_dkim.py   (about 10 s)
"""

from __future__ import annotations

import hashlib
import re
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import Relaxed

from bench.loadgen import campaign_message
from smtp_gateway.dkim_sign import SIGNED_HEADERS, DkimSigner, generate_rsa_key, relaxed_body, split_message

HEADERS = (
    b"From: Shop <news@shop.example.com>\r\nTo: alice@example.org\r\n"
    b"Subject: Spring sale\r\nDate: Tue, 04 Mar 2025 09:12:44 +0100\r\n"
    b"Message-ID: <1@shop.example.com>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n'
    b"List-Unsubscribe: <https://links.example.com/u/abc>,\r\n"
    b" <mailto:unsubscribe+abc@in.example.com>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
)


class PreviousSigner(DkimSigner):
    """DkimSigner as it was: dkimpy's rfc822_parse and canonicalize_body, OpenSSL RSA."""

    _split = staticmethod(dkim.rfc822_parse)
    _canonicalize_body = staticmethod(Relaxed.canonicalize_body)


def sample_message(size: int = 5_000) -> bytes:
    """A ~5 KB multipart/alternative copy: a text part and HTML indented two spaces per level."""
    text = b"Our spring sale starts today: 20% off everything until Sunday.\r\n" * 12
    row = (
        b"        <tr>\r\n"
        b'          <td class="item" style="padding: 8px; font-family: Arial">\r\n'
        b'            <a href="https://shop.example.com/p/1">Garden chair</a> &ndash; now 20% off\r\n'
        b"          </td>\r\n"
        b"        </tr>\r\n"
    )
    html_head = (
        b"<!DOCTYPE html>\r\n<html>\r\n  <head>\r\n    <style>td { font-family: Arial; }</style>\r\n"
        b"  </head>\r\n  <body>\r\n    <table>\r\n      <tbody>\r\n"
    )
    html_tail = b"      </tbody>\r\n    </table>\r\n  </body>\r\n</html>\r\n"
    body = (
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"\r\n--b1\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html_head
    )
    while len(HEADERS) + len(body) + len(html_tail) + len(b"--b1--\r\n") < size:
        body += row
    return HEADERS + body + html_tail + b"--b1--\r\n"


def per_call(func: Callable[[], object], number: int) -> float:
    """Best-of-5 seconds per call."""
    return min(timeit.repeat(func, number=number, repeat=5)) / number


def compare(name: str, message: bytes, pem: bytes) -> None:
    """Print per-signature and per-step times, previous code vs now, for one message."""
    new = DkimSigner("shop.example.com", "sel", pem, clock=lambda: 1_741_075_964)
    previous = PreviousSigner("shop.example.com", "sel", pem, clock=lambda: 1_741_075_964)
    assert new.sign(message) == previous.sign(message), "outputs differ"
    body = split_message(message)[1]
    sign_new, sign_prev = (
        per_call(lambda: new.sign(message), 300),
        per_call(lambda: previous.sign(message), 300),
    )
    parse_new = per_call(lambda: split_message(message), 3000)
    parse_prev = per_call(lambda: dkim.rfc822_parse(message), 3000)
    canon_new = per_call(lambda: relaxed_body(body), 3000)
    canon_prev = per_call(lambda: Relaxed.canonicalize_body(body), 3000)
    runs = len(re.findall(b"  +", body))
    print(f"\n{name}: {len(message)} bytes, {runs} runs of 2+ spaces in the body")
    print(f"  {'':36} {'previous':>10} {'now':>10} {'saved':>10}")
    rows = [
        ("DkimSigner.sign, ms/signature", sign_prev * 1e3, sign_new * 1e3, "ms"),
        ("parse (rfc822_parse / split), µs", parse_prev * 1e6, parse_new * 1e6, "µs"),
        ("relaxed body canonicalisation, µs", canon_prev * 1e6, canon_new * 1e6, "µs"),
    ]
    for label, before, after, unit in rows:
        print(f"  {label:36} {before:10.3f} {after:10.3f} {before - after:7.3f} {unit}")


def main() -> None:
    """Print ms per signature for stock dkimpy and DkimSigner, then previous code vs now."""
    pem, _ = generate_rsa_key(2048)
    message = sample_message()
    include = [h for h in SIGNED_HEADERS if h + b":" in message.lower()]
    signer = DkimSigner("shop.example.com", "sel", pem)

    def stock() -> bytes:
        return bytes(
            dkim.sign(
                message,
                b"sel",
                b"shop.example.com",
                pem,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
        )

    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    digest = hashlib.sha256(message).digest()

    def rsa_only() -> bytes:
        return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

    print(f"message: {len(message)} bytes, RSA-2048, relaxed/relaxed")
    print(f"stock dkimpy        : {per_call(stock, 20) * 1e3:6.2f} ms/signature")
    print(f"DkimSigner (OpenSSL): {per_call(lambda: signer.sign(message), 200) * 1e3:6.2f} ms/signature")
    print(f"  of which RSA alone: {per_call(rsa_only, 200) * 1e3:6.2f} ms (OpenSSL, irreducible)")
    compare("5 KB HTML+text, indented HTML", message, pem)
    compare("relay bench message (bench/loadgen.py)", campaign_message("news@shop.example.com"), pem)


if __name__ == "__main__":
    main()
