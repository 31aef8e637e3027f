"""Who a recipient is: address normalisation and the keyed subject hash (pure)."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

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


# The fast path accepts only a conservative subset of what email-validator accepts: a dot-atom
# local part over [A-Za-z0-9_+-] and a domain of plain LDH labels (no "--" anywhere, so no IDNA
# "xn--" labels and no RFC 5891 position-3/4 hyphens), ending in an alphabetic TLD that is not a
# special-use name. For those, email-validator's normalisation is exactly lower-casing (ASCII:
# NFC is the identity and casefold() == lower()). Anything else goes to email-validator, which is
# ~25 µs per address against ~1 µs here; tests/ledger/test_importing.py checks the agreement
# with a property test.
_FAST_LOCAL = r"[A-Za-z0-9_+\-]+(?:\.[A-Za-z0-9_+\-]+)*"
_FAST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_FAST_ADDRESS = re.compile(rf"({_FAST_LOCAL})@((?:{_FAST_LABEL}\.)+([A-Za-z]{{2,63}}))")
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def normalise_fast(address: str) -> str | None:
    """The normalised address for the common plain-ASCII case, or None when unsure (never wrong)."""
    match = _FAST_ADDRESS.fullmatch(address)
    if match is None or len(address) > 254 or len(match.group(1)) > 64:
        return None
    domain = match.group(2)
    if "--" in domain or len(domain) > 253 or match.group(3).lower() in _SPECIAL_USE:
        return None
    return address.lower()


def normalise_address(address: str) -> str:
    """Normalise like :func:`ledger.identity.normalise`, taking the fast path when it applies."""
    candidate = address.strip()
    if candidate.startswith("<") and candidate.endswith(">"):
        candidate = candidate[1:-1]
    return normalise_fast(candidate) or normalise(candidate)


def subject_key(pepper: bytes, normalised: str) -> bytes:
    """Return HMAC-SHA256(pepper, normalised address): stable, unguessable without the pepper."""
    return hmac.new(pepper, normalised.encode("utf-8"), hashlib.sha256).digest()


def identify(pepper: bytes, address: str) -> Identity:
    """Normalise ``address`` and compute its subject key."""
    normalised = normalise_address(address)
    return Identity(normalised, subject_key(pepper, normalised))
