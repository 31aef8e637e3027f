"""Exceptions of the ledger package; every one derives from :class:`LedgerError`."""


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose (turned into a one-line message by the CLI)."""


class InvalidAddress(LedgerError):
    """The string is not a deliverable e-mail address."""


class UnknownClient(LedgerError):
    """No client with that id exists."""


class ClientExists(LedgerError):
    """A client with that id already exists."""


class SecretError(LedgerError):
    """The secret file is missing, unreadable or malformed."""


class StoreError(LedgerError):
    """The database could not be used (bad URL, unknown scheme, schema mismatch)."""


class DatabaseUnavailable(StoreError):
    """The database did not answer (down, locked too long, unreachable)."""


class SchemaOutdated(StoreError):
    """The database schema is older than the code: run `consentgate db migrate`."""


class SuppressedAddress(LedgerError):
    """An opt-in was refused because the address is suppressed and no re-consent proof was given."""


class InvalidToken(LedgerError):
    """A token or signed link is forged, truncated, expired or signed with an unknown key."""


class InvalidApiKey(LedgerError):
    """An API key is malformed, unknown, revoked or does not match its stored hash."""


class UnknownApiKey(LedgerError):
    """No API key with that id exists (revoking or listing by id)."""


class SuppressionNotRemovable(LedgerError):
    """Only a ``manual`` suppression may be removed; any other is lifted only by the person's re-consent."""
