"""Wiring of the inbound listener (bounces, complaints, mailto unsubscribes) from the settings.

`consentgate serve` builds it with :func:`build_inbound` and runs ``await listener.start()`` /
``await listener.stop()`` in its loop, beside the submission listener.
"""

from __future__ import annotations

from cli.settings import Settings
from ledger.bounce_rules import ComplaintScope, InboundPolicy
from ledger.bounce_service import InboundLedger
from ledger.service import LedgerService
from smtp_gateway.inbound import Clock, InboundConfig, InboundListener, build_inbound_listener, utc_now


def inbound_policy(settings: Settings) -> InboundPolicy:
    """The bounce and complaint rules from the ``[bounce]`` and ``[complaints]`` sections."""
    return InboundPolicy(
        soft_threshold=settings.bounce.soft_threshold,
        soft_window_days=settings.bounce.soft_window_days,
        complaint_scope=ComplaintScope(settings.complaints.scope),
        complaint_window=settings.complaints.window,
        warn_rate=settings.complaints.warn_rate,
        pause_rate=settings.complaints.pause_rate,
    )


def inbound_config(settings: Settings) -> InboundConfig:
    """What the listener serves, from ``[smtp]`` and ``[complaints]``."""
    return InboundConfig(
        domains=(settings.smtp.inbound_domain,),
        complaint_local_parts=tuple(settings.complaints.addresses),
        hostname=settings.smtp.hostname,
        max_message_size=settings.smtp.max_message_size,
    )


def build_inbound(settings: Settings, service: LedgerService, clock: Clock = utc_now) -> InboundListener:
    """The inbound listener on ``smtp.inbound_listen``, over ``service`` (which needs token keys)."""
    ledger = InboundLedger(service.store, inbound_policy(settings))
    return build_inbound_listener(
        service, ledger, inbound_config(settings), settings.smtp.inbound_listen, clock
    )
