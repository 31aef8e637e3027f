"""Who a recipient is: address normalisation and the keyed subject hash (pure)."""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from ledger.errors import InvalidAddress

SUBJECT_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Identity:
    """A normalised address and its keyed hash, the only key the ledger files a person under."""

    address: str
    subject_key: bytes


def normalise(address: str) -> str:
    """Return the canonical form of ``address``: NFC, IDNA domain lower-cased, local part case-folded.

    Raises :class:`InvalidAddress` with the validator's reason. No DNS lookups: the gateway
    must decide at RCPT time without waiting on the network.
    """
    candidate = address.strip()
    if candidate.startswith("<") and candidate.endswith(">"):
        candidate = candidate[1:-1]
    try:
        valid = validate_email(candidate, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{address!r} is not a valid address: {exc}") from None
    # Local parts are case-sensitive by the RFCs but no mailbox provider treats them so; folding
    # them makes Bob@ and bob@ one person, which is what an unsubscribe must mean.
    local = unicodedata.normalize("NFC", valid.local_part).casefold()
    # ascii_domain is the IDNA (punycode) form, so "bücher.example" and "xn--bcher-kva.example"
    # are the same subject.
    domain = (valid.ascii_domain or valid.domain).lower()
    return f"{local}@{domain}"


def subject_key(pepper: bytes, normalised: str) -> bytes:
    """Return HMAC-SHA256(pepper, normalised address): stable, unguessable without the pepper."""
    return hmac.new(pepper, normalised.encode("utf-8"), hashlib.sha256).digest()


def identify(pepper: bytes, address: str) -> Identity:
    """Normalise ``address`` and compute its subject key."""
    normalised = normalise(address)
    return Identity(normalised, subject_key(pepper, normalised))
