"""The ledger's use cases: the pure core (identity, policy) applied to what the store holds.

The CLI, the SMTP gateway and the HTTP service all go through here, so a rule lives once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger import tokens
from ledger.errors import InvalidAddress, InvalidToken
from ledger.identity import Identity, identify
from ledger.models import GLOBAL_SCOPE, Client, ClientMode, ConsentProof, Decision, Reason
from ledger.policy import DEFAULT_INACTIVITY_DAYS, decide
from ledger.store.imports import hashed_suppressions_for
from ledger.store.ledger_store import SqlLedgerStore
from ledger.store.policy_read import policy_state, policy_states

DEFAULT_TOKEN_MAX_AGE_DAYS = 400


@dataclass(frozen=True, slots=True)
class TokenTarget:
    """What a verified token points at: the client, the campaign and the subject's full key."""

    client: Client
    campaign_num: int
    subject_key: bytes


@dataclass
class LedgerService:
    """Decisions and ledger writes for addresses (the pepper turns them into subject keys)."""

    store: SqlLedgerStore
    pepper: bytes
    inactivity_days: int = DEFAULT_INACTIVITY_DAYS
    token_keys: tokens.TokenKeys | None = None
    token_max_age_days: int = DEFAULT_TOKEN_MAX_AGE_DAYS

    def _keys(self) -> tokens.TokenKeys:
        """The token keys (a service built without them cannot mint or verify tokens)."""
        if self.token_keys is None:
            raise RuntimeError("LedgerService built without token keys")
        return self.token_keys

    def mint_token(self, client: Client, campaign_num: int, subject_key: bytes, now: datetime) -> str:
        """The signed token for one copy: (client, campaign, subject) without the address."""
        payload = tokens.TokenPayload(
            client.num, campaign_num, tokens.subject_ref(subject_key), tokens.day_number(now)
        )
        return tokens.sign(payload, self._keys())

    async def resolve_token(self, token: str, now: datetime) -> TokenTarget:
        """Verify ``token`` and find what it points at; raises InvalidToken for anything else.

        A deleted client or an unknown subject reads exactly like a forged token, so a probe
        learns nothing from the answer.
        """
        payload = tokens.verify(token, self._keys(), tokens.day_number(now), self.token_max_age_days)
        client = await self.store.client_by_num(payload.client_num)
        subject_key = await self.store.subject_key_by_ref(payload.subject_ref)
        if client is None or subject_key is None:
            raise InvalidToken("token does not point at a known client and subject")
        return TokenTarget(client, payload.campaign_num, subject_key)

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
            hashed = await hashed_suppressions_for(self.store.db, identity.address, (GLOBAL_SCOPE,))
            return decide(
                client_id=GLOBAL_SCOPE,
                suppressions=[s for s in (*state.suppressions, *hashed) if s.scope == GLOBAL_SCOPE],
                relationship=None,
                restricted=state.restricted,
                mode=ClientMode.SUPPRESSION_ONLY,
                now=now,
                inactivity_days=self.inactivity_days,
            )
        return await self.decide_for_client(identity, await self.store.get_client(client_id), now)

    async def decide_for_client(self, identity: Identity, client: Client, now: datetime) -> Decision:
        """:meth:`decide` for a client the caller already holds (the gateway: one read less per RCPT)."""
        # One statement for suppressions, hashed-list matches, relationship and restriction, read
        # synchronously on SQLite (the per-RCPT hot path; never cached: see ledger.store.policy_read).
        state, hashed = await policy_state(self.store.db, client.id, identity)
        return decide(
            client_id=client.id,
            suppressions=(*state.suppressions, *hashed),
            relationship=state.relationship,
            restricted=state.restricted,
            mode=client.mode,
            now=now,
            inactivity_days=self.inactivity_days,
        )

    async def check_many(
        self, addresses: Sequence[str], client: Client | None, now: datetime
    ) -> list[Decision]:
        """Decisions for many addresses at once, in order (the API's list check).

        ``client`` None checks the global scope only. An address that does not parse is refused
        with ``invalid_address``; the others are read in batched statements (policy_states).
        """
        identities: list[Identity] = []
        invalid: set[int] = set()
        for position, address in enumerate(addresses):
            try:
                identities.append(self.identify(address))
            except InvalidAddress:
                invalid.add(position)
        scope = GLOBAL_SCOPE if client is None else client.id
        states = iter(await policy_states(self.store.db, scope, identities))
        decisions: list[Decision] = []
        for position in range(len(addresses)):
            if position in invalid:
                decisions.append(Decision.refuse(Reason.INVALID_ADDRESS))
                continue
            state, hashed = next(states)
            decisions.append(
                decide(
                    client_id=scope,
                    suppressions=(*state.suppressions, *hashed),
                    relationship=state.relationship,
                    restricted=state.restricted,
                    mode=ClientMode.SUPPRESSION_ONLY if client is None else client.mode,
                    now=now,
                    inactivity_days=self.inactivity_days,
                )
            )
        return decisions

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
