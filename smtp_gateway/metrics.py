"""Prometheus metrics of the gateway and the link service (served at /metrics).

One registry per process; with ``serve --workers N`` each worker exposes its own figures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_ACCEPTED = Counter(
    "consentgate_messages_accepted_total",
    "Messages accepted from mailers (250 after DATA).",
    registry=REGISTRY,
)
COPIES_RELAYED = Counter(
    "consentgate_copies_relayed_total", "Per-recipient copies accepted by the upstream.", registry=REGISTRY
)
COPIES_SPOOLED = Counter(
    "consentgate_copies_spooled_total", "Copies written to the outbox for a retry.", registry=REGISTRY
)
RECIPIENTS_REFUSED = Counter(
    "consentgate_recipients_refused_total",
    "Recipients refused or dropped by the policy, by reason.",
    ["reason"],
    registry=REGISTRY,
)
OUTBOX_DEPTH = Gauge("consentgate_outbox_depth", "Copies waiting in the outbox.", registry=REGISTRY)
UNSUBSCRIBES = Counter(
    "consentgate_unsubscribes_total", "Unsubscribes recorded, by channel.", ["channel"], registry=REGISTRY
)
CLICKS = Counter("consentgate_clicks_total", "Tracked clicks.", registry=REGISTRY)
OPENS = Counter("consentgate_opens_total", "Tracked opens.", registry=REGISTRY)
COMPLAINTS = Counter("consentgate_complaints_total", "Complaints (ARF) received.", registry=REGISTRY)
BOUNCES = Counter(
    "consentgate_bounces_total", "Bounces recorded, by kind (hard/soft).", ["kind"], registry=REGISTRY
)
COMPLAINT_RATE_WARNINGS = Counter(
    "consentgate_complaint_rate_warnings_total",
    "Times a client's complaint rate crossed the warning threshold.",
    ["client"],
    registry=REGISTRY,
)
SMTP_COMMAND_SECONDS = Histogram(
    "consentgate_smtp_command_seconds",
    "Time to answer SMTP commands, by command.",
    ["command"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "consentgate_http_request_seconds",
    "Time to answer HTTP requests, by route.",
    ["route"],
    registry=REGISTRY,
)
HTTP_RESPONSES = Counter(
    "consentgate_http_responses_total",
    "HTTP responses of the link service, by route template and status.",
    ["route", "status"],
    registry=REGISTRY,
)
