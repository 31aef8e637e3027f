"""Micro-benchmark: ms per DKIM signature, stock dkimpy vs DkimSigner (OpenSSL RSA).

Run: .venv/bin/python bench/micro_dkim.py
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim

from smtp_gateway.dkim_sign import SIGNED_HEADERS, DkimSigner, generate_rsa_key


def sample_message(size: int = 5_000) -> bytes:
    """A ~5 KB text message with the headers the gateway signs."""
    headers = (
        b"From: Shop <news@shop.example.com>\r\nTo: alice@example.org\r\n"
        b"Subject: Spring sale\r\nDate: Tue, 04 Mar 2025 09:12:44 +0100\r\n"
        b"Message-ID: <1@shop.example.com>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"List-Unsubscribe: <https://links.example.com/u/abc>,\r\n"
        b" <mailto:unsubscribe+abc@in.example.com>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
    )
    line = b"Our spring sale starts today: 20% off everything until Sunday.\r\n"
    return headers + line * (size // len(line))


def per_call_ms(func: Callable[[], object], number: int) -> float:
    """Best-of-5 milliseconds per call."""
    return min(timeit.repeat(func, number=number, repeat=5)) / number * 1000


def main() -> None:
    """Print ms per signature for both implementations."""
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

    print(f"message: {len(message)} bytes, RSA-2048, relaxed/relaxed")
    print(f"stock dkimpy      : {per_call_ms(stock, 20):6.2f} ms/signature")
    print(f"DkimSigner (OpenSSL): {per_call_ms(lambda: signer.sign(message), 200):6.2f} ms/signature")


if __name__ == "__main__":
    main()
