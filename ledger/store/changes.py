"""Cache invalidation across processes and nodes: who changed what the RCPT decision reads.

A cache on the hot path (the gateway's client directory; the suppression state is deliberately
never cached, see :mod:`ledger.store.policy_read`) must drop what it holds when the ledger
changes anywhere. :class:`ChangeFeed` tells its subscribers:

- on PostgreSQL: statement-level triggers (migration 0008) ``NOTIFY consentgate_changes`` with
  the table name on every commit that touches what a decision reads, from any node, process or
  ``psql``; the feed listens on a dedicated connection (milliseconds after the commit);
- on SQLite: every ``poll_seconds`` it reads ``PRAGMA data_version`` on a read-only connection
  of its own, which moves whenever any other connection — this process's writer included —
  commits; it cannot say which table, so it reports None.

Subscribers get the table name, or None for "anything may have changed" (also sent whenever the
feed cannot know: at start, and while the PostgreSQL listener is reconnecting). A writer that
needs its own process's caches dropped before it answers calls :meth:`ChangeFeed.changed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ledger.errors import DatabaseUnavailable
from ledger.store.database import Database

log = logging.getLogger(__name__)

CHANNEL = "consentgate_changes"
# The tables a policy decision or the client directory reads (the triggers of migration 0008).
WATCHED = frozenset(
    {"clients", "suppressions", "hashed_suppressions", "subjects", "relationships", "ledger_events"}
)

Subscriber = Callable[[str | None], None]


class ChangeFeed:
    """Tells subscribers when a watched table changed, here or in another process or node."""

    def __init__(self, db: Database, *, poll_seconds: float = 0.25) -> None:
        """Watch ``db``; ``poll_seconds`` bounds the delay on SQLite and the reconnect interval."""
        self.db = db
        self.poll_seconds = poll_seconds
        self._subscribers: list[Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback(table)`` on every change (synchronously: keep it cheap, never block)."""
        self._subscribers.append(callback)

    def changed(self, table: str | None = None) -> None:
        """Report a change of ``table`` (None: of anything) to every subscriber."""
        if table is not None and table not in WATCHED:
            return
        for callback in self._subscribers:
            try:
                callback(table)
            except Exception:  # one broken subscriber must not keep the others stale
                log.exception("change subscriber %r failed", callback)

    async def start(self) -> None:
        """Start listening (PostgreSQL) or polling (SQLite) in the background."""
        if self._task is None:
            runner = self._listen if self.db.dialect == "postgresql" else self._poll
            self._task = asyncio.create_task(runner(), name="change-feed")

    async def stop(self) -> None:
        """Stop listening or polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        """SQLite: some connection committed when data_version moves on a connection of our own."""
        path = getattr(self.db, "path", ":memory:")
        if path == ":memory:":  # one connection, one process: nobody else can change it
            self.listening.set()
            return
        watcher = _open_watcher(path)
        last = None
        try:
            while True:
                try:
                    # Synchronous on the loop: a pragma read on an idle connection takes microseconds.
                    version = watcher.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    version = None  # look again next round, and assume the worst meanwhile
                if version is None or version != last:
                    self.changed(None)
                last = version
                self.listening.set()
                await asyncio.sleep(self.poll_seconds)
        finally:
            watcher.close()

    async def _listen(self) -> None:
        """PostgreSQL: LISTEN on a dedicated connection, reconnecting whenever it is lost."""
        open_listener = getattr(self.db, "dedicated_connection", None)
        if open_listener is None:  # a wrapped or foreign driver: fall back to polling
            await self._poll_blind()
            return
        while True:
            conn = None
            try:
                conn = await open_listener()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                self.changed(None)  # whatever happened while nobody listened
                self.listening.set()
                await lost.wait()
                log.warning("change feed: lost the PostgreSQL LISTEN connection, reconnecting")
            except (DatabaseUnavailable, OSError) as exc:
                log.warning("change feed: cannot LISTEN (%s), retrying", exc)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            # Deaf meanwhile: every cache is stale every round until the listener is back.
            self.changed(None)
            await asyncio.sleep(self.poll_seconds)

    async def _poll_blind(self) -> None:
        """Without a way to hear other nodes, report "anything changed" every round."""
        while True:
            self.changed(None)
            await asyncio.sleep(self.poll_seconds)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        """asyncpg's listener callback: the payload is the table name."""
        self.changed(payload or None)


def _open_watcher(path: str) -> sqlite3.Connection:
    """A read-only connection to the SQLite file at ``path``, for ``PRAGMA data_version``."""
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
