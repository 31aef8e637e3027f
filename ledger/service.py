"""The ledger's use cases: the pure core (identity, policy) applied to what the store holds.

The CLI, the SMTP gateway and the HTTP service all go through here, so a rule lives once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.identity import Identity, identify
from ledger.models import GLOBAL_SCOPE, ClientMode, ConsentProof, Decision, Reason
from ledger.policy import DEFAULT_INACTIVITY_DAYS, decide
from ledger.store.ledger_store import SqlLedgerStore


@dataclass
class LedgerService:
    """Decisions and ledger writes for addresses (the pepper turns them into subject keys)."""

    store: SqlLedgerStore
    pepper: bytes
    inactivity_days: int = DEFAULT_INACTIVITY_DAYS

    def identify(self, address: str) -> Identity:
        """Normalise and hash an address (raises InvalidAddress)."""
        return identify(self.pepper, address)

    async def check(self, address: str, client_id: str | None, now: datetime) -> Decision:
        """The decision for mailing ``address`` as ``client_id`` (global scope only when None)."""
        identity = self.identify(address)
        return await self.decide(identity, client_id, now)

    async def decide(self, identity: Identity, client_id: str | None, now: datetime) -> Decision:
        """The decision for an already identified subject."""
        if client_id is None:
            state = await self.store.lookup(GLOBAL_SCOPE, identity.subject_key)
            return decide(
                client_id=GLOBAL_SCOPE,
                suppressions=[s for s in state.suppressions if s.scope == GLOBAL_SCOPE],
                relationship=None,
                restricted=state.restricted,
                mode=ClientMode.SUPPRESSION_ONLY,
                now=now,
                inactivity_days=self.inactivity_days,
            )
        client = await self.store.get_client(client_id)
        state = await self.store.lookup(client_id, identity.subject_key)
        return decide(
            client_id=client_id,
            suppressions=state.suppressions,
            relationship=state.relationship,
            restricted=state.restricted,
            mode=client.mode,
            now=now,
            inactivity_days=self.inactivity_days,
        )

    async def unsubscribe(
        self, address: str, client_id: str | None, source: str, now: datetime, reason: Reason | None = None
    ) -> bool:
        """Suppress ``address`` for one client, or globally; False if it already was."""
        scope = client_id or GLOBAL_SCOPE
        chosen = reason or (Reason.GLOBAL_OPTOUT if client_id is None else Reason.UNSUBSCRIBED)
        return await self.store.suppress(scope, self.identify(address), chosen, source, now)

    async def consent(
        self, address: str, client_id: str, proof: ConsentProof, now: datetime, *, reconsent: bool = False
    ) -> None:
        """Record an opt-in (never lifts a suppression unless ``reconsent`` with its own proof)."""
        await self.store.record_consent(client_id, self.identify(address), proof, now, reconsent=reconsent)
