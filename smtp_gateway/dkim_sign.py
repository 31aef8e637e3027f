"""DKIM signing (RFC 6376) with dkimpy's canonicalisation and OpenSSL's RSA.

dkimpy computes the RSA signature in pure Python (~8.4 ms per RSA-2048 signature, DESIGN §7),
which would cap the gateway near 120 copies/s per core; ``cryptography`` (OpenSSL) needs
~0.7 ms. dkimpy offers no hook for the RSA step: ``DKIM.gen_header`` calls the module-level
``RSASSA_PKCS1_v1_5_sign``, and ``DKIM.sign`` re-parses the PEM key in pure Python and reads the
clock itself. Monkeypatching that module global would silently change every other dkimpy user in
the process (verification in the inbound listener, ARC…), and a subclass would have to copy both
methods anyway. So :class:`DkimSigner` composes dkimpy's own building blocks — ``rfc822_parse``,
``CanonicalizationPolicy``, ``hash_headers``, ``fold`` and ``RE_BTAG`` — exactly as ``DKIM.sign``
does, and swaps only the final RSA step. A test pins the result byte for byte to stock dkimpy,
so an upgrade that changes those building blocks is caught.

Two of those building blocks cost more pure Python than the rest of signing put together, so they
are replaced by equivalents that produce the same bytes (property tests compare them with dkimpy's
on thousands of random inputs): :func:`split_message` parses only the header block with
``rfc822_parse`` instead of splitting the whole message into lines, and :func:`relaxed_body` does
the relaxed body canonicalisation with C-speed bytes operations instead of two regex passes that
match every single space of the body.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, correct_empty_body, strip_trailing_lines

# Signed when present (DESIGN §6); dkimpy's default list lacks list-unsubscribe-post, and
# RFC 8058 requires both List-Unsubscribe headers to be covered by the signature.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"reply-to",
)
MIN_KEY_BITS = 1024
_CANONICALIZATION = b"relaxed/relaxed"
_HEADER_NAME = b"DKIM-Signature"
_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")
_SPACE_RUN = re.compile(b"  +")


def split_message(message: bytes) -> tuple[list[list[bytes]], bytes]:
    r"""``dkim.rfc822_parse(message)``, byte for byte, without walking the body line by line.

    rfc822_parse splits the whole message on ``\r?\n`` and joins the body back with CRLF (~80 µs
    on a 5 KB copy). The header block ends at the first empty line, which is the first ``\n\n`` or
    ``\n\r\n`` (or a leading ``\n`` / ``\r\n``); handing rfc822_parse only the lines before it
    gives the same headers and the same errors, since its loop stops at that line in both cases.
    The body is the rest with each ``\n`` (with its ``\r`` if any) made CRLF, which is what
    splitting on ``\r?\n`` and joining with CRLF does. Raises ``dkim.MessageFormatError`` as
    rfc822_parse does.
    """
    if message.startswith(b"\n"):
        return [], _crlf_lines(message[1:])
    if message.startswith(b"\r\n"):
        return [], _crlf_lines(message[2:])
    crlf = message.find(b"\n\r\n")
    # A "\n\n" before the first "\n\r\n" ends the headers first (LF or mixed line endings).
    lf = message.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else len(message))
    if lf >= 0:
        blank, body_start = lf + 1, lf + 2
    elif crlf >= 0:
        blank, body_start = crlf + 1, crlf + 3
    else:
        # No empty line: everything is header and the body is empty; nothing to save.
        headers, body = dkim.rfc822_parse(message)
        return headers, body
    # message[:blank] ends with its last header line's "\n", so rfc822_parse sees that line
    # followed by an empty one and stops there, as it does on the whole message.
    headers, _ = dkim.rfc822_parse(message[:blank])
    return headers, _crlf_lines(message[body_start:])


def _crlf_lines(text: bytes) -> bytes:
    r"""``b"\r\n".join(re.split(b"\r?\n", text))``, copying nothing when there is no bare LF."""
    if text.count(b"\n") == text.count(b"\r\n"):
        return text
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def relaxed_body(body: bytes) -> bytes:
    r"""dkimpy's ``Relaxed.canonicalize_body(body)`` (RFC 6376 §3.4.4), byte for byte, faster.

    dkimpy runs ``re.sub(b"[\t ]+\r\n", …)`` then ``re.sub(b"[\t ]+", b" ", …)``: the second
    matches, and rebuilds the body around, every single space between words (~130 µs on a 5 KB
    body). Both patterns treat tab and space alike and their replacements do not depend on the
    match, so the result is unchanged by first turning tabs into spaces; then only runs of two or
    more spaces need collapsing, after which any whitespace before a CRLF is exactly one space.
    Collapsing before stripping gives the same bytes as dkimpy's order: either way a run followed
    by CRLF disappears whole and every other run becomes one space.
    The first two steps are skipped when a substring test shows they would change nothing.
    """
    if b"\t" in body:
        body = body.translate(_TAB_TO_SPACE)
    if b"  " in body:
        body = _SPACE_RUN.sub(b" ", body)
    # No "in" test first: replace() returns the same object when there is nothing to replace, and
    # the test would cost as much as replace's own search.
    body = body.replace(b" \r\n", b"\r\n")
    # dkimpy's own helpers for the end of the body: they only look at the trailing blank lines.
    canonical: bytes = correct_empty_body(strip_trailing_lines(body))
    return canonical


@dataclass(frozen=True, slots=True)
class PendingSignature:
    """A message whose DKIM header is computed up to the RSA signature (``b=`` last in ``fields``)."""

    message: bytes
    fields: list[tuple[bytes, bytes]]
    digest: bytes


class DkimSigner:
    """Signs messages for one domain and selector with an RSA key (rsa-sha256, relaxed/relaxed)."""

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key_pem: bytes,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Parse the PEM key once; ``clock`` gives the ``t=`` timestamp (injectable for tests)."""
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("DKIM key must be an RSA private key")
        if key.key_size < MIN_KEY_BITS:
            raise ValueError(f"DKIM key must have at least {MIN_KEY_BITS} bits")
        self._key = key
        self._domain = domain.encode("idna")
        self._selector = selector.encode("ascii")
        self._clock = clock
        self._policy = CanonicalizationPolicy.from_c_value(_CANONICALIZATION)

    def sign(self, message: bytes) -> bytes:
        """Return ``message`` with a ``DKIM-Signature:`` header prepended (never an ``l=`` tag)."""
        pending = self.prepare(message)
        return self.finish(pending, self.rsa_sign(pending.digest))

    def prepare(self, message: bytes) -> PendingSignature:
        """Everything of :meth:`sign` before the RSA step: the header fields and the digest to sign."""
        try:
            headers, body = self._split(message)
        except (dkim.MessageFormatError, IndexError) as exc:
            # IndexError: dkimpy's parser on a first line that starts with a space or tab.
            raise ValueError(f"cannot DKIM-sign: {exc or 'malformed header block'}") from None
        include = self._include_headers(headers)
        if b"from" not in include:
            raise ValueError("cannot DKIM-sign a message without From (RFC 6376 §5.4)")
        fields = self._signature_fields(include, self._body_hash(body))
        # Same steps as dkimpy's DomainSigner.gen_header, with b= empty while hashing.
        unsigned = dkim.fold(
            b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER_NAME), linesep=b"\r\n"
        )
        unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)
        hasher = hashlib.sha256()
        canonical = self._policy.canonicalize_headers(headers)
        dkim.hash_headers(
            hasher, self._policy, canonical, include, (_HEADER_NAME, b" " + unsigned), dict(fields)
        )
        return PendingSignature(message, fields, hasher.digest())

    def rsa_sign(self, digest: bytes) -> bytes:
        """The RSA signature of a SHA-256 ``digest`` (OpenSSL).

        ``cryptography`` releases the GIL while OpenSSL computes (~0.7 ms for 2048 bits), so the
        gateway runs this one step in a thread: the event loop goes on meanwhile, and one worker
        process can use a second core. Safe to call from several threads at once.
        """
        signature: bytes = self._key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return signature

    def finish(self, pending: PendingSignature, signature: bytes) -> bytes:
        """The message of ``pending`` with its ``DKIM-Signature:`` header, ``b=`` being ``signature``."""
        fields = [*pending.fields[:-1], (b"b", base64.b64encode(signature))]
        value = b"; ".join(b"=".join(f) for f in fields) + b"\r\n"
        folded: bytes = dkim.fold(value, namelen=len(_HEADER_NAME), linesep=b"\r\n")
        return _HEADER_NAME + b": " + folded + pending.message

    def _include_headers(self, headers: Sequence[Sequence[bytes]]) -> tuple[bytes, ...]:
        """The names from SIGNED_HEADERS present in the message, once per occurrence."""
        present = [bytes(name).lower() for name, _ in headers]
        return tuple(name for name in SIGNED_HEADERS for _ in range(present.count(name)))

    def _body_hash(self, body: bytes) -> bytes:
        """Base64 SHA-256 of the relaxed-canonicalised body (whole body: no l= tag)."""
        return base64.b64encode(hashlib.sha256(self._canonicalize_body(body)).digest())

    # Class attributes rather than direct calls so that bench/micro_dkim.py and the tests can run
    # the same signer with dkimpy's rfc822_parse and canonicalize_body put back (the old code).
    _split: Callable[[bytes], tuple[list[list[bytes]], bytes]] = staticmethod(split_message)
    _canonicalize_body: Callable[[bytes], bytes] = staticmethod(relaxed_body)

    def _signature_fields(self, include: Sequence[bytes], body_hash: bytes) -> list[tuple[bytes, bytes]]:
        """The tags in dkimpy's order, with a placeholder b= forcing b= onto its own line."""
        return [
            (b"v", b"1"),
            (b"a", b"rsa-sha256"),
            (b"c", _CANONICALIZATION),
            (b"d", self._domain),
            (b"i", b"@" + self._domain),
            (b"q", b"dns/txt"),
            (b"s", self._selector),
            (b"t", str(int(self._clock())).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", body_hash),
            (b"b", b"0" * 60),
        ]


def generate_rsa_key(bits: int = 2048) -> tuple[bytes, str]:
    """Return (private key PEM, DNS TXT value ``v=DKIM1; k=rsa; p=…``) for a new RSA key.

    The TXT value of a 2048-bit key exceeds 255 octets: the DNS record holds it as several
    character-strings, which resolvers concatenate.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1: what OpenDKIM and co. expect
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode('ascii')}"
