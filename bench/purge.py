"""Benchmark: the retention purge (``consentgate purge``) over a ledger of 10,000,000 interaction events.

``python -m bench purge [--events 10000000] [--subjects 200000] [--postgres [--pg-events N]]``

The fixture (built once with stdlib ``sqlite3``, cached under ``bench/.cache/``, copied per run):
``--events`` interaction events in time order over ~4 years, 80 % of them older than the 395-day
event retention; ``--subjects`` consented subjects with their relationships and an opt-in on
their consent chain; among them 2 % idle for 900 days (inactivity expiry), 3 % unsubscribed 60
days ago (their recent events and relationships go) and 1 % unsubscribed 800 days ago after a
consent 1000 days ago (their consent chain goes too); 100,000 imported global unsubscribes of
addresses never mailed (the join the unsubscribed rule walks) and 5,000 outbox copies.

Figures, on a fresh copy each:

* **purge** — :func:`ledger.store.purge.run_purge`, the function ``consentgate purge`` runs, as
  of the fixture's date: rows deleted per rule, rows/s over the whole run, and the longest write
  transaction, timed inside the purge from BEGIN to COMMIT (its ``on_transaction`` hook);
* **probe** (SQLite) — a separate process that writes one row every 5 ms with the gateway's
  connection settings (``busy_timeout``) while the purge runs, and records how long each of its
  ``BEGIN IMMEDIATE`` waited for the lock: what a gateway worker would feel;
* **baseline** — stdlib ``sqlite3`` (asyncpg on PostgreSQL) deleting the same old events with a
  plain ``DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? LIMIT n)`` per
  transaction, ``n`` = the purge's batch size, on another copy: the floor (no roll-up, no other
  rule). SQLite's runs both with ``secure_delete`` on, as the purge requires.

``--postgres`` runs the purge and the baseline on PostgreSQL too (``$BENCH_PG_URL``, else
``$TEST_DATABASE_URL``, else the local server), in a dedicated schema dropped afterwards, filled
from the SQLite fixture by ``COPY`` (``--pg-events`` keeps every k-th event for a smaller run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
FIXTURE_VERSION = 1
NOW = datetime(2026, 11, 22, tzinfo=UTC)
CLIENT_ID = "bench"
DAY_US = 86_400 * 1_000_000
OLD_SHARE = 0.8
IMPORTED_SUPPRESSIONS = 100_000
OUTBOX_ROWS = 5_000
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
KINDS = ["delivered"] * 14 + ["opened"] * 3 + ["clicked", "bounced", "deferred"]
COUNTRIES = ["", "FR", "DE", "US", "GB", "ES", "IT"]
PROBE_INTERVAL_S = 0.005


def us(moment: datetime) -> int:
    """Microseconds since the epoch (the ledger's time encoding)."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def machine() -> str:
    """CPU model and core count, for the record."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"


# --- the fixture --------------------------------------------------------------------------------


def _keys(count: int, salt: bytes) -> list[bytes]:
    """``count`` distinct 32-byte keys in ascending order (B-tree appends when inserted in order)."""
    step = (1 << 64) // max(count, 1)
    tail = salt * (16 // len(salt))
    return [(i * step).to_bytes(8, "big") + i.to_bytes(8, "big") + tail for i in range(count)]


def _group(i: int) -> str:
    """Which retention case subject ``i`` is (see the module docstring)."""
    g = i % 100
    if g < 2:
        return "idle"
    if g < 5:
        return "unsubscribed"
    if g < 6:
        return "long_gone"
    return "active"


def _event_time(i: int, events: int, now: int) -> int:
    """Event ``i``'s time: the first 80 % spread over days 1500 to 396 back, the rest over 394 to 0."""
    old = int(events * OLD_SHARE)
    if i < old:
        start, span, j, n = now - 1500 * DAY_US, 1104 * DAY_US, i, old
    else:
        start, span, j, n = now - 394 * DAY_US, 394 * DAY_US, i - old, events - old
    return start + span * j // max(n, 1)


def _events(events: int, keys: list[bytes], now: int) -> Iterator[tuple[Any, ...]]:
    """The interaction events in id (= time) order; a campaign per week, subjects spread over all."""
    count = len(keys)
    first_day = (now - 1500 * DAY_US) // DAY_US
    for i in range(events):
        at = _event_time(i, events, now)
        kind = KINDS[i % 20]
        yield (
            i + 1,
            CLIENT_ID,
            1 + (at // DAY_US - first_day) // 7,
            keys[(i * 7919) % count],
            kind,
            "hard_bounce" if kind == "bounced" else "",
            f"l{i % 5}" if kind == "clicked" else "",
            COUNTRIES[i % 7],
            at,
        )


def _chain_rows(key: bytes, events: list[tuple[str, int]]) -> tuple[list[tuple[Any, ...]], tuple[Any, ...]]:
    """Ledger events (with their real hashes) and the chain row for one subject's consent chain."""
    from ledger.chain import GENESIS_HASH, event_hash
    from ledger.models import LedgerEvent, LedgerEventKind

    rows, prev = [], GENESIS_HASH
    for seq, (kind, at) in enumerate(events, start=1):
        event = LedgerEvent(
            client_id=CLIENT_ID,
            subject_key=key,
            seq=seq,
            kind=LedgerEventKind(kind),
            at=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at),
            source="form" if kind == "opt_in" else "link",
        )
        digest = event_hash(event, prev)
        rows.append((CLIENT_ID, key, seq, kind, at, event.source, "", "", "", "", prev, digest))
        prev = digest
    return rows, (CLIENT_ID, key, 0, GENESIS_HASH, len(events), prev)


def build_fixture(events: int, subjects: int) -> tuple[Path, float]:
    """The cached fixture; (database, build seconds — 0 when it came from the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    db = CACHE / f"purge-v{FIXTURE_VERSION}-e{events}-s{subjects}.db"
    if db.exists():
        return db, 0.0
    started = time.perf_counter()
    tmp = db.with_suffix(".building")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    asyncio.run(_init_ledger(tmp))
    now = us(NOW)
    conn = sqlite3.connect(tmp, isolation_level=None)
    # Building a throwaway file: no journal, no fsync, a big page cache.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -524288")
    keys = _keys(subjects, b"\xc3\x3c")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO subjects (subject_key, address, restricted, created_at) VALUES (?, NULL, 0, ?)",
        ((k, now - 1500 * DAY_US) for k in keys),
    )
    relationships, suppressions, ledger_events, chains = [], [], [], []
    for i, key in enumerate(keys):
        group = _group(i)
        consent = now - (1000 if group == "long_gone" else 900 if group == "idle" else 100 + i % 900) * DAY_US
        engaged = None if group == "idle" else now - (800 if group == "long_gone" else 1 + i % 300) * DAY_US
        status = "active" if group in ("idle", "active") else "withdrawn"
        relationships.append((CLIENT_ID, key, status, consent, consent, now - DAY_US, engaged, consent))
        history = [("opt_in", consent)]
        if group in ("unsubscribed", "long_gone"):
            since = now - (60 if group == "unsubscribed" else 800) * DAY_US
            suppressions.append((key, CLIENT_ID, "unsubscribed", since, "link"))
            history.append(("opt_out", since))
        rows, chain = _chain_rows(key, history)
        ledger_events += rows
        chains.append(chain)
    conn.executemany(
        "INSERT INTO relationships (client_id, subject_key, status, consent_at, first_sent_at, "
        "last_sent_at, last_engagement_at, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        relationships,
    )
    conn.executemany(
        "INSERT INTO ledger_events (client_id, subject_key, seq, kind, at, source, method, "
        "notice_version, legal_basis, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ledger_events,
    )
    conn.executemany("INSERT INTO ledger_chains VALUES (?, ?, ?, ?, ?, ?)", chains)
    # Imported unsubscribes of addresses never mailed: no events, but the unsubscribed rule's join sees them.
    imported = [(k, "global", "unsubscribed", now - 400 * DAY_US, "import") for k in _keys(IMPORTED_SUPPRESSIONS, b"\x5a\xa5")]
    conn.executemany(
        "INSERT INTO suppressions (subject_key, scope, reason, since, source) VALUES (?, ?, ?, ?, ?)",
        sorted(suppressions + imported),
    )
    weeks = 1 + 1500 // 7
    conn.executemany(
        "INSERT INTO campaigns (num, client_id, name, created_at) VALUES (?, ?, ?, ?)",
        ((n, CLIENT_ID, f"week-{n}", now - (1500 - 7 * (n - 1)) * DAY_US) for n in range(1, weeks + 2)),
    )
    conn.executemany(
        "INSERT INTO outbox (client_id, mail_from, rcpt, message, next_attempt_at, created_at) "
        "VALUES (?, 'news@bench.example', ?, ?, ?, ?)",
        (
            (CLIENT_ID, f"user{i}@example.org", b"Subject: x\r\n\r\n" + b"x" * 1000, t, t)
            for i in range(OUTBOX_ROWS)
            for t in [now - (30 - i * 30 // OUTBOX_ROWS) * DAY_US]
        ),
    )
    conn.execute("COMMIT")
    # The events' indexes are built once after the load (a sort) instead of 10 M random inserts.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL"
    ).fetchall()
    for name, _sql in indexes:
        conn.execute(f"DROP INDEX {name}")
    batch = 1_000_000
    rows = _events(events, keys, now)
    for _ in range(0, events, batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (next(rows) for _ in range(batch)) if False else _take(rows, batch))
        conn.execute("COMMIT")
    for _name, sql in indexes:
        conn.execute(sql)
    conn.execute("ANALYZE")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    tmp.rename(db)
    return db, time.perf_counter() - started


def _take(rows: Iterator[tuple[Any, ...]], n: int) -> Iterator[tuple[Any, ...]]:
    """At most the next ``n`` rows of ``rows``."""
    for _ in range(n):
        row = next(rows, None)
        if row is None:
            return
        yield row


async def _init_ledger(path: Path) -> None:
    """Schema (the project's migrations) and the bench client, through the real code."""
    from ledger.models import Client
    from ledger.store import open_store
    from ledger.store.migrate import migrate

    store = await open_store(f"sqlite:///{path}")
    try:
        await migrate(store.db)
        await store.add_client(Client(id=CLIENT_ID, name="Bench Ltd", password_hash="x"), NOW)
    finally:
        await store.close()
