"""Exceptions of the SMTP gateway; every one derives from :class:`GatewayError`."""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class MalformedMessage(GatewayError):
    """The submitted data is not a parseable RFC 5322 message."""


class BadControlHeader(GatewayError):
    """A control header (campaign id, X-SMTPAPI…) is malformed or tries to inject header lines."""
