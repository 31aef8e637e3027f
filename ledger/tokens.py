"""Signed tokens for unsubscribe, VERP, click and open URLs, and signed click-tracking links (pure).

A token names (client, campaign, subject, day issued) without revealing the address: it carries a
12-byte prefix of the subject's keyed hash, never the address. Binary layout::

    version (1) | key id (1) | varint client_num | varint campaign_num | subject_ref (12)
    | issued_day (2, big-endian) | MAC (10)

The MAC is HMAC-SHA256 under the key named by the key id, over everything before it, truncated
to 10 bytes. The whole is encoded in lower-case base32 without padding: MTAs may fold the case of
local parts (``unsubscribe+TOKEN@…``, ``bounces+TOKEN@…``), so the encoding must be
case-insensitive, and the token must stay ≤ 52 characters so that ``unsubscribe+TOKEN`` fits the
64-octet local-part limit of RFC 5321.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from ledger.errors import InvalidToken

TOKEN_VERSION = 1
MAC_BYTES = 10
SUBJECT_REF_BYTES = 12
MAX_TOKEN_CHARS = 52
EPOCH = date(2020, 1, 1)
MAX_DAY = 0xFFFF
MAX_KEY_ID = 0xFF
MIN_KEY_BYTES = 16
MAX_FUTURE_DAYS = 1
LINK_MAC_BYTES = 10
# A link segment longer than this is refused before any decoding work (no URL in a real mail
# comes close; it bounds the CPU an attacker can make the link service spend).
MAX_LINK_SEGMENT_CHARS = 16_384
# Domain separation: the same key signs tokens and links; distinct prefixes make sure a MAC
# computed for one purpose can never be replayed as the other.
_TOKEN_CONTEXT = b"consentgate/token\x00"
_LINK_CONTEXT = b"consentgate/link\x00"
_MAX_VARINT_BYTES = 5
_BASE32_RE = re.compile(r"[a-z2-7]+")
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_SIGNABLE_URL_RE = re.compile(r"https?://[^\s\x00-\x1f\x7f]+", re.IGNORECASE)
# The shortest possible token: two header bytes, two one-byte varints, ref, day, MAC.
_MIN_TOKEN_BYTES = 2 + 1 + 1 + SUBJECT_REF_BYTES + 2 + MAC_BYTES
_LINK_ID_CHARS = len(base64.b32encode(bytes(1 + LINK_MAC_BYTES)).rstrip(b"="))


@dataclass(frozen=True, slots=True)
class TokenPayload:
    """What a token says: which client's campaign was sent to which subject, and when."""

    client_num: int
    campaign_num: int
    subject_ref: bytes
    issued_day: int

    def __post_init__(self) -> None:
        """Refuse values the binary layout cannot carry, so sign() never emits a lossy token."""
        if self.client_num < 0 or self.campaign_num < 0:
            raise ValueError("client_num and campaign_num must be non-negative")
        if len(self.subject_ref) != SUBJECT_REF_BYTES:
            raise ValueError(f"subject_ref must be {SUBJECT_REF_BYTES} bytes")
        if not 0 <= self.issued_day <= MAX_DAY:
            raise ValueError(f"issued_day must be within 0..{MAX_DAY}")


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """The signing keys by id: ``current`` signs, every listed key verifies (key rotation)."""

    keys: Mapping[int, bytes]
    current: int

    def __post_init__(self) -> None:
        """Refuse key sets that could not sign or would sign weakly."""
        if self.current not in self.keys:
            raise ValueError("the current key id is not among the keys")
        for key_id, key in self.keys.items():
            if not 0 <= key_id <= MAX_KEY_ID:
                raise ValueError(f"key id {key_id} does not fit in one byte")
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"key {key_id} is shorter than {MIN_KEY_BYTES} bytes")

    @property
    def current_key(self) -> bytes:
        """The key that signs new tokens and links."""
        return self.keys[self.current]


def day_number(moment: datetime) -> int:
    """Return the number of whole UTC days from 2020-01-01 to ``moment`` (timezone-aware)."""
    if moment.tzinfo is None:
        raise ValueError("day_number needs a timezone-aware datetime")
    return (moment.astimezone(UTC).date() - EPOCH).days


def subject_ref(subject_key: bytes) -> bytes:
    """Return the prefix of a subject key that tokens carry (enough to find it, not the address)."""
    if len(subject_key) < SUBJECT_REF_BYTES:
        raise ValueError("subject key too short")
    return subject_key[:SUBJECT_REF_BYTES]


def sign(payload: TokenPayload, keys: TokenKeys) -> str:
    """Return the token for ``payload`` signed with the current key (lower-case base32, ≤ 52 chars)."""
    body = (
        bytes((TOKEN_VERSION, keys.current))
        + _encode_varint(payload.client_num)
        + _encode_varint(payload.campaign_num)
        + payload.subject_ref
        + payload.issued_day.to_bytes(2, "big")
    )
    token = _b32encode(body + _token_mac(keys.current_key, body))
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(
            f"ids too large: the token would be {len(token)} characters (limit {MAX_TOKEN_CHARS})"
        )
    return token


def verify(token: str, keys: TokenKeys, today: int, max_age_days: int) -> TokenPayload:
    """Return the payload of a genuine, unexpired token; raise :class:`InvalidToken` otherwise.

    ``today`` is the current :func:`day_number`. Upper-case input is accepted.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("token too long")
    raw = _b32decode(token)
    if len(raw) < _MIN_TOKEN_BYTES:
        raise InvalidToken("token too short")
    if raw[0] != TOKEN_VERSION:
        raise InvalidToken("unknown token version")
    key = keys.keys.get(raw[1])
    if key is None:
        raise InvalidToken("token signed with an unknown key")
    body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _token_mac(key, body)):
        raise InvalidToken("bad token signature")
    payload = _parse_body(body)
    _check_age(payload.issued_day, today, max_age_days)
    return payload


def link_id(url: str, keys: TokenKeys) -> str:
    """Return the stable id of ``url`` under the current key (reports count unique clicks by it)."""
    _check_signable(url)
    return _b32encode(bytes((keys.current,)) + _link_mac(keys.current_key, url))


def sign_link(url: str, keys: TokenKeys) -> str:
    """Return the ``LINK`` path segment ``{link_id}.{base64url(url)}`` for a click URL.

    Only http(s) URLs without whitespace or control characters can be signed, so the click
    endpoint can never be made to redirect anywhere the gateway did not put in a message.
    """
    encoded = base64.urlsafe_b64encode(url.encode("utf-8")).rstrip(b"=").decode("ascii")
    return f"{link_id(url, keys)}.{encoded}"


def verify_link(segment: str, keys: TokenKeys) -> tuple[str, str]:
    """Return ``(link_id, url)`` of a segment made by :func:`sign_link`; raise InvalidToken else."""
    if len(segment) > MAX_LINK_SEGMENT_CHARS:
        raise InvalidToken("link too long")
    lid, dot, encoded = segment.partition(".")
    if not dot or len(lid) != _LINK_ID_CHARS:
        raise InvalidToken("malformed link")
    raw_id = _b32decode(lid)
    key = keys.keys.get(raw_id[0])
    if key is None:
        raise InvalidToken("link signed with an unknown key")
    url = _decode_url(encoded)
    if not hmac.compare_digest(raw_id[1:], _link_mac(key, url)):
        raise InvalidToken("bad link signature")
    return lid.lower(), url


def _token_mac(key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of a token body, truncated (80 bits: forging needs ~2^79 online guesses)."""
    return hmac.new(key, _TOKEN_CONTEXT + body, hashlib.sha256).digest()[:MAC_BYTES]


def _link_mac(key: bytes, url: str) -> bytes:
    """HMAC-SHA256 of a click URL, truncated; doubles as the link's stable id."""
    return hmac.new(key, _LINK_CONTEXT + url.encode("utf-8"), hashlib.sha256).digest()[:LINK_MAC_BYTES]


def _check_signable(url: str) -> None:
    """Refuse anything but an absolute http(s) URL (no open redirect to javascript: and co.)."""
    if not _SIGNABLE_URL_RE.fullmatch(url):
        raise ValueError("only http(s) URLs without whitespace or control characters are signed")


def _parse_body(body: bytes) -> TokenPayload:
    """Split an authenticated token body into its fields (strictly: no slack bytes)."""
    client_num, pos = _decode_varint(body, 2)
    campaign_num, pos = _decode_varint(body, pos)
    if len(body) - pos != SUBJECT_REF_BYTES + 2:
        raise InvalidToken("malformed token")
    ref = body[pos : pos + SUBJECT_REF_BYTES]
    day = int.from_bytes(body[pos + SUBJECT_REF_BYTES :], "big")
    return TokenPayload(client_num, campaign_num, ref, day)


def _check_age(issued_day: int, today: int, max_age_days: int) -> None:
    """Refuse tokens older than ``max_age_days`` or issued more than a day in the future."""
    if today - issued_day > max_age_days:
        raise InvalidToken("token expired")
    # One day of slack: a node whose clock is a little ahead may have issued it "tomorrow".
    if issued_day - today > MAX_FUTURE_DAYS:
        raise InvalidToken("token issued in the future")


def _encode_varint(value: int) -> bytes:
    """Unsigned LEB128: small ids (the common case) cost one byte."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 at ``pos``; return (value, next position). Canonical form only."""
    value = 0
    for shift_index in range(_MAX_VARINT_BYTES):
        if pos >= len(data):
            raise InvalidToken("malformed token")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * shift_index)
        if not byte & 0x80:
            # A trailing zero byte would be a second spelling of the same number.
            if byte == 0 and shift_index > 0:
                raise InvalidToken("malformed token")
            return value, pos
    raise InvalidToken("malformed token")


def _b32encode(data: bytes) -> str:
    """Lower-case RFC 4648 base32 without padding."""
    return base64.b32encode(data).rstrip(b"=").decode("ascii").lower()


def _b32decode(text: str) -> bytes:
    """Decode lower- or upper-case unpadded base32; refuse anything non-canonical."""
    # isascii() first: str.lower() maps some non-ASCII letters (KELVIN SIGN) onto ASCII ones.
    if not text.isascii():
        raise InvalidToken("not base32")
    lowered = text.lower()
    if not _BASE32_RE.fullmatch(lowered):
        raise InvalidToken("not base32")
    padded = lowered.upper() + "=" * (-len(lowered) % 8)
    try:
        data = base64.b32decode(padded)
    except binascii.Error:
        raise InvalidToken("not base32") from None
    # Unused low bits of the last character are ignored by the decoder; re-encoding catches a
    # token that differs from a genuine one only there.
    if _b32encode(data) != lowered:
        raise InvalidToken("not canonical base32")
    return data


def _decode_url(encoded: str) -> str:
    """Decode the canonical unpadded base64url part of a link segment into a signable URL."""
    if not _BASE64URL_RE.fullmatch(encoded):
        raise InvalidToken("malformed link")
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        url = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidToken("malformed link") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != encoded:
        raise InvalidToken("malformed link")
    try:
        _check_signable(url)
    except ValueError:
        raise InvalidToken("link is not an http(s) URL") from None
    return url
