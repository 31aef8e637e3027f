"""Micro-benchmark: prepare() and render() of a ~40 KB multipart message.

Run: .venv/bin/python bench/micro_rewrite.py
"""

from __future__ import annotations

import base64
import quopri
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger import tokens
from ledger.tokens import TokenKeys, TokenPayload
from smtp_gateway.rewrite import RewriteOptions, prepare

KEYS = TokenKeys({1: b"k" * 32}, current=1)


def sample_message() -> bytes:
    """multipart/mixed: alternative (text + QP HTML with 60 links) and a base64 PDF-sized blob."""
    rows = "".join(
        f'<tr><td style="padding:8px"><a href="https://shop.example.com/p/{i}?utm_source=mail'
        f'&amp;utm_medium=email">Product {i} &ndash; only today</a> <img src="https://cdn.'
        f'example.com/i/{i}.jpg" width="120" alt=""></td></tr>\r\n'
        for i in range(60)
    )
    html = (
        "<!DOCTYPE html><html><head><style>td{font-family:Arial}</style></head><body>\r\n"
        '<!--[if mso]><table width="600"><tr><td><![endif]-->\r\n'
        f"<table>{rows}</table>\r\n<!--[if mso]></td></tr></table><![endif]-->\r\n"
        "</body></html>\r\n"
    )
    qp = quopri.encodestring(html.encode()).replace(b"\n", b"\r\n").replace(b"\r\r", b"\r")
    text = "".join(f"Product {i}: https://shop.example.com/p/{i}\r\n" for i in range(60))
    blob = base64.encodebytes(bytes(range(256)) * 60).replace(b"\n", b"\r\n")
    return (
        b"From: Shop <news@shop.example.com>\r\nTo: alice@example.org\r\n"
        b"Subject: Spring sale\r\nDate: Tue, 04 Mar 2025 09:12:44 +0100\r\n"
        b"Message-ID: <1@shop.example.com>\r\nMIME-Version: 1.0\r\nX-Campaign-ID: spring\r\n"
        b'Content-Type: multipart/mixed; boundary="mixed"\r\n\r\n'
        b'--mixed\r\nContent-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + text.encode()
        + b"\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + qp
        + b"\r\n--alt--\r\n\r\n--mixed\r\nContent-Type: application/pdf; name=a.pdf\r\n"
        b"Content-Disposition: attachment; filename=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + blob + b"--mixed--\r\n"
    )


def per_call_ms(func: Callable[[], object], number: int) -> float:
    """Best-of-5 milliseconds per call."""
    return min(timeit.repeat(func, number=number, repeat=5)) / number * 1000


def main() -> None:
    """Print ms per prepare() and per render()."""
    raw = sample_message()
    options = RewriteOptions(
        "https://links.example.com", "in.example.com", "Shop Ltd", "1 Main St, Springfield", True
    )
    token = tokens.sign(TokenPayload(12, 3456, bytes(12), 2000), KEYS)

    def sign_link(url: str) -> str:
        return tokens.sign_link(url, KEYS)

    template = prepare(raw, options, sign_link)
    print(f"message: {len(raw)} bytes, 60 tracked links, tracking on")
    print(
        f"prepare (parse + rewrite, once per message): {per_call_ms(lambda: prepare(raw, options, sign_link), 50):.3f} ms"
    )
    print(
        f"render  (per recipient copy)               : {per_call_ms(lambda: template.render(token), 500):.3f} ms"
    )


if __name__ == "__main__":
    main()
