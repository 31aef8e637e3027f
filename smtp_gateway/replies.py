"""Every SMTP reply the gateway sends, named (RFC 5321 codes with RFC 3463 enhanced status codes).

Handlers use these constants, never literals; replies that carry data are format strings whose
fields are named here. aiosmtpd's own built-in replies that lack an enhanced code are mapped onto
ours in :data:`AIOSMTPD_OVERRIDES`.
"""

from __future__ import annotations

# -- success ------------------------------------------------------------------------------------
OK = "250 2.0.0 OK"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
MESSAGE_ACCEPTED = "250 2.0.0 OK: accepted ({delivered} relayed, {spooled} queued, {dropped} dropped)"

# -- authentication and relay control -----------------------------------------------------------
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
# RFC 4954 "temporary authentication failure": too many failures from this address or login.
AUTH_THROTTLED = "454 4.7.0 Too many failed authentication attempts, try again later"
SENDER_NOT_ALLOWED = "553 5.7.1 <{address}>: sender address not in the client's domains"
FROM_OTHER_CLIENT = "550 5.7.1 The From header is in another client's domain"
NULL_SENDER_NOT_ALLOWED = "553 5.7.1 <>: a null sender cannot submit campaign mail"
CLIENT_PAUSED = "451 4.7.1 Client paused: {reason}"

# -- recipients ---------------------------------------------------------------------------------
RECIPIENT_SUPPRESSED = "550 5.7.1 <{address}>: recipient suppressed ({reason})"
INVALID_ADDRESS = "553 5.1.3 <{address}>: invalid address"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"

# -- message ------------------------------------------------------------------------------------
MESSAGE_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
MALFORMED_MESSAGE = "554 5.6.0 Malformed message: {detail}"
BAD_CONTROL_HEADER = "554 5.6.0 Invalid control header: {detail}"

# -- temporary failures (the mailer retries; nothing was half-done) -----------------------------
LEDGER_UNAVAILABLE = "451 4.3.0 Ledger temporarily unavailable, try again later"
LOCAL_ERROR = "451 4.3.0 Local error in processing, try again later"

# -- inbound listener (bounces, complaints, mailto unsubscribes) --------------------------------
# One refusal for every address it does not serve, forged tokens included: never a relay, and a
# prober learns nothing about which tokens exist.
INBOUND_RECIPIENT_REFUSED = "550 5.7.1 <{address}>: not an inbound address of this host (no relay)"
INBOUND_ACCEPTED = "250 2.0.0 OK: received"
# A genuine, fresh token whose copy the gateway has not written yet (its ledger writes are
# batched): the sending MTA retries in minutes, by which time it is there.
INBOUND_TRY_LATER = "451 4.3.0 Not ready for this message yet, try again later"

# aiosmtpd answers some limits itself, without enhanced status codes: same meaning, our wording.
AIOSMTPD_OVERRIDES = {
    "552 Error: Too much mail data": MESSAGE_TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_BIG,
    "530 5.7.0 Authentication required": AUTH_REQUIRED,
}
