"""Reading complaints (RFC 5965 ARF feedback reports) and finding the tokens a returned copy carries.

A complaint names its recipient through the copy it returns: the token in ``List-Unsubscribe``
(``unsubscribe+TOKEN@`` or ``…/u/TOKEN``), in the VERP ``Return-Path`` (``bounces+TOKEN@``),
in the report's ``Original-Mail-From``, or in the body's unsubscribe link. Only a signed token
names a client and a subject; ``Original-Rcpt-To`` is read for the log and cross-checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import parseaddr

from smtp_gateway.bounces import is_report, returned_messages

# Tokens are lower-case base32 (MTAs may fold case: matched case-insensitively, lowered after).
_TOKEN_CHARS = r"[A-Za-z2-7]{20,52}"  # noqa: S105 (a pattern, not a password)
_ADDRESS_TOKEN = re.compile(rf"(?<![\w.+-])(?:bounces|unsubscribe)\+({_TOKEN_CHARS})@", re.IGNORECASE)
_URL_TOKEN = re.compile(rf"/u/({_TOKEN_CHARS})(?![A-Za-z0-9])")
# Headers of the returned copy that carry a token; the body is searched too, within a bound.
_TOKEN_HEADERS = ("list-unsubscribe", "return-path", "sender", "errors-to", "x-original-return-path")
MAX_SCAN_CHARS = 1_000_000
MAX_TOKENS = 20


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """The fields of an ARF report that matter here, and the copy it returns."""

    feedback_type: str
    original_rcpt_to: str
    original_mail_from: str
    user_agent: str
    returned: tuple[Message, ...]


def is_feedback_report(msg: Message) -> bool:
    """Whether ``msg`` is an RFC 5965 ``multipart/report; report-type=feedback-report``."""
    return is_report(msg, "feedback-report")


def parse_feedback_report(msg: Message) -> FeedbackReport | None:
    """The ARF fields of ``msg``, or None when it is not a well-formed feedback report."""
    if not is_feedback_report(msg):
        return None
    fields: Message | None = None
    for part in msg.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            fields = payload[0]
        elif isinstance(payload, str):
            fields = HeaderParser().parsestr(payload)
        break
    if fields is None or not fields.get("feedback-type"):
        return None
    return FeedbackReport(
        feedback_type=str(fields.get("feedback-type", "")).strip().lower(),
        original_rcpt_to=parseaddr(str(fields.get("original-rcpt-to", "")))[1].lower(),
        original_mail_from=str(fields.get("original-mail-from", "")).strip(),
        user_agent=str(fields.get("user-agent", "")).strip(),
        returned=tuple(returned_messages(msg)),
    )


def tokens_in_text(text: str) -> list[str]:
    """Every token-looking string in ``text`` (addresses and ``/u/`` links), lower-cased, in order."""
    found = [m.group(1).lower() for m in _ADDRESS_TOKEN.finditer(text)]
    found += [m.group(1).lower() for m in _URL_TOKEN.finditer(text)]
    return list(dict.fromkeys(found))[:MAX_TOKENS]


def tokens_in_message(msg: Message) -> list[str]:
    """The tokens a returned copy carries: in its token headers, then in its decoded text parts."""
    chunks: list[str] = []
    for name in _TOKEN_HEADERS:
        chunks.extend(str(value) for value in msg.get_all(name, []))
    budget = MAX_SCAN_CHARS
    for part in msg.walk():
        if budget <= 0:
            break
        if part.get_content_maintype() != "text" or part.is_multipart():
            continue
        text = _decoded_text(part)[:budget]
        budget -= len(text)
        chunks.append(text)
    return tokens_in_text("\n".join(chunks))


def _decoded_text(part: Message) -> str:
    """A text part's content with its transfer encoding undone (quoted-printable wraps tokens)."""
    try:
        raw = part.get_payload(decode=True)
    except Exception:  # a broken encoding: scan the raw text rather than give up on the part
        raw = None
    if isinstance(raw, bytes):
        try:
            return raw.decode(part.get_content_charset() or "utf-8", "replace")
        except LookupError:  # an unknown charset name: tokens are ASCII, any decoding finds them
            return raw.decode("latin-1")
    payload = part.get_payload()
    return payload if isinstance(payload, str) else ""
