"""The submission side assembled: event log, upstream relay, outbox worker, SMTP listener.

``consentgate serve`` builds one of these per process (and adds the HTTP and inbound components
beside it); tests and the benchmark build one in-process on port 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.service import LedgerService
from ledger.store.outbox import OutboxStore
from smtp_gateway.delivery import DeliveryLog
from smtp_gateway.outbox_worker import OutboxConfig, OutboxWorker
from smtp_gateway.relay import Relay, UpstreamConfig, make_relay
from smtp_gateway.server import Component, TcpListener
from smtp_gateway.submission import (
    Clock,
    SignerFactory,
    SubmissionConfig,
    SubmissionHandler,
    default_signer_factory,
    is_loopback_host,
    smtp_factory,
    utc_now,
)


@dataclass
class Gateway:
    """The running parts of the submission side, in start order."""

    delivery_log: DeliveryLog
    relay: Relay
    handler: SubmissionHandler
    worker: OutboxWorker
    listener: TcpListener
    retries: bool = True

    @classmethod
    def build(
        cls,
        service: LedgerService,
        *,
        host: str,
        port: int,
        submission: SubmissionConfig,
        upstream: UpstreamConfig,
        outbox: OutboxConfig,
        reuse_port: bool = False,
        clock: Clock = utc_now,
        signer_factory: SignerFactory = default_signer_factory,
        relay: Relay | None = None,
        retries: bool = True,
    ) -> Gateway:
        """Wire everything; nothing runs until :meth:`start` (``retries``: run the outbox worker)."""
        delivery_log = DeliveryLog(service.store)
        chosen_relay = relay or make_relay(upstream)
        handler = SubmissionHandler(
            service=service,
            relay=chosen_relay,
            delivery_log=delivery_log,
            config=submission,
            clock=clock,
            signer_factory=signer_factory,
        )
        worker = OutboxWorker(OutboxStore(service.store.db), chosen_relay, delivery_log, outbox, clock=clock)
        factory = smtp_factory(handler, submission, loopback=is_loopback_host(host))
        listener = TcpListener("submission", factory, host, port, reuse_port=reuse_port)
        return cls(delivery_log, chosen_relay, handler, worker, listener, retries)

    @property
    def port(self) -> int:
        """The submission port (the real one when built with port 0)."""
        return self.listener.port

    async def start(self) -> None:
        """Load the clients, then start the log, the worker and the listener."""
        await self.handler.clients.refresh()
        await self.delivery_log.start()
        if self.retries:
            await self.worker.start()
        await self.listener.start()

    async def stop(self) -> None:
        """Stop accepting, stop retrying, flush the log, close upstream connections."""
        await self.listener.stop()
        await self.worker.stop()
        await self.delivery_log.stop()
        await self.relay.close()

    def components(self) -> list[Component]:
        """This gateway as one component (for ``run_components``)."""
        return [self]
