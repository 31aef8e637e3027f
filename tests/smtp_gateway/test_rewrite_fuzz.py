"""Corpus-mutation fuzzing of the MIME rewriter (the random-message property test is in test_rewrite.py).

Each example takes a real message from tests/data, damages it (bytes inserted, deleted or
replaced; header lines duplicated; boundaries cut; NUL, bare CR/LF, 8-bit junk; the mailer's own
List-Unsubscribe headers) and checks that the rewriter either refuses it with a gateway error or
produces a copy that parses, carries the unsubscribe headers exactly once, and leaves every part
it does not rewrite (attachments, non-text parts) byte for byte as it was.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import Message
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import tokens
from ledger.tokens import TokenKeys, TokenPayload
from smtp_gateway.errors import GatewayError
from smtp_gateway.rewrite import RewriteOptions, prepare

DATA = Path(__file__).resolve().parent.parent / "data"
CORPUS = {p.name: re.sub(rb"\r?\n", b"\r\n", p.read_bytes()) for p in sorted(DATA.glob("*.eml"))}
KEYS = TokenKeys({1: b"f" * 32}, current=1)
TOKEN = tokens.sign(TokenPayload(3, 77, bytes(range(12)), 2000), KEYS)
OPTIONS = RewriteOptions(
    public_url="https://links.example.com",
    inbound_domain="bounces.example.com",
    client_name="Fuzz Ltd",
    postal_address="1 Fuzz Road",
    tracking=True,
)
JUNK = [
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\xff\xfe",
    b"=\r\n",
    b"=XY",
    b"--",
    b"\r\n--",
    b"List-Unsubscribe: <mailto:theirs@mailer.example>\r\n",
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
    b'Content-Type: multipart/mixed; boundary="zz"\r\n',
    b"Content-Transfer-Encoding: base64\r\n",
    b'<a href="https://x.example/">',
    b"%unsubscribe_url%",
    b" " * 1200,
    b"\xc3\xa9" * 50,
]


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    """A corpus message with 1-6 random edits."""
    name = draw(st.sampled_from(sorted(CORPUS)))
    data = bytearray(CORPUS[name])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate_line", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(JUNK) | st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 40))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "duplicate_line":
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            if end != -1:
                data[start:start] = data[start : end + 1]
        elif op == "truncate":
            del data[max(pos, len(data) // 3) :]
    return name, bytes(data)


def _untouched_leaves(raw: bytes) -> list[bytes]:
    """The raw payloads of the parts the rewriter must not change: non-text parts and attachments."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        text = part.get_content_type() in ("text/plain", "text/html")
        if text and not _is_attachment(part):
            continue
        payload = part.get_payload(decode=False)
        data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
        out.append(data.removesuffix(b"\r\n"))  # the copy always ends in CRLF (SMTP adds it anyway)
    return out


def _is_attachment(part: Message) -> bool:
    """Whether a part is an attachment (the rewriter leaves those alone, text or not)."""
    disposition = str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()
    return disposition == "attachment" or bool(part.get_param("name")) or bool(part.get_filename())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_damaged_corpus_message_is_refused_or_rewritten_safely(case: tuple[str, bytes]) -> None:
    """Either a GatewayError, or a parseable copy with one List-Unsubscribe pair and untouched parts unchanged."""
    _name, raw = case
    try:
        out = prepare(raw, OPTIONS, lambda url: tokens.sign_link(url, KEYS)).render(TOKEN)
    except GatewayError:
        return
    # (The mailer's own damaged headers are copied verbatim; some make the stdlib's header
    # parser itself crash when read, so only the headers the rewriter wrote are read here.)
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    assert len(parsed.get_all("List-Unsubscribe") or []) == 1
    assert len(parsed.get_all("List-Unsubscribe-Post") or []) == 1
    assert f"/u/{TOKEN}".encode() in out
    assert b"\n" not in out.replace(b"\r\n", b"")  # wire format: CRLF only
    # Bare CR and bare LF are line breaks on the wire: compare with the CRLF form of the input.
    assert _untouched_leaves(out) == _untouched_leaves(re.sub(rb"\r\n|\r|\n", b"\r\n", raw))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CORPUS)), st.integers(1, 4))
def test_mailers_own_unsubscribe_headers_are_replaced_not_added(name: str, copies: int) -> None:
    """A mailer that already sets List-Unsubscribe (once or several times) still yields exactly one of each."""
    head, sep, body = CORPUS[name].partition(b"\r\n\r\n")
    extra = b"".join(
        b"List-Unsubscribe: <mailto:u%d@mailer.example>\r\nlist-unsubscribe-post: List-Unsubscribe=One-Click\r\n"
        % i
        for i in range(copies)
    )
    out = prepare(
        head + b"\r\n" + extra.rstrip(b"\r\n") + sep + body, OPTIONS, lambda u: tokens.sign_link(u, KEYS)
    )
    parsed = email.message_from_bytes(out.render(TOKEN), policy=email.policy.default)
    assert len(parsed.get_all("List-Unsubscribe") or []) == 1
    assert len(parsed.get_all("List-Unsubscribe-Post") or []) == 1
    assert "mailer.example" not in str(parsed["List-Unsubscribe"])
