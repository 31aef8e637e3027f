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
  transaction, ``n`` = the purge's mean batch size (the purge adapts its batches to keep each
  transaction short), on another copy: the floor (no roll-up, no other rule). SQLite's runs both with ``secure_delete`` on, as the purge requires.

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

from bench.fixture_cache import CACHE, build_path, bulk_connection, cached, finish

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
    db = cached(f"purge-v{FIXTURE_VERSION}-e{events}-s{subjects}")
    if db.exists():
        return db, 0.0
    started = time.perf_counter()
    tmp = build_path(db)
    asyncio.run(_init_ledger(tmp))
    now = us(NOW)
    conn = bulk_connection(tmp, 512)
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
    imported = [
        (k, "global", "unsubscribed", now - 400 * DAY_US, "import")
        for k in _keys(IMPORTED_SUPPRESSIONS, b"\x5a\xa5")
    ]
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
    stream = _events(events, keys, now)
    for _ in range(0, events, batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _take(stream, batch))
        conn.execute("COMMIT")
    for _name, sql in indexes:
        conn.execute(sql)
    finish(conn, tmp, db)
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


# --- measurements -------------------------------------------------------------------------------


@dataclass
class Result:
    """One timed deletion run."""

    label: str
    rows: int
    seconds: float
    transactions: list[float]  # seconds each write transaction held the lock
    per_rule: dict[str, tuple[int, int, float, float]] = field(default_factory=dict)  # rows, tx, longest, s
    probe_waits: list[float] | None = None  # the concurrent writer's waits for the lock (s)
    probe_writes: list[float] | None = None  # its whole write, BEGIN to COMMIT (s)
    probe_failures: int = 0

    @property
    def rate(self) -> float:
        """Rows deleted per second."""
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def mean_batch(self) -> int:
        """Rows per old-events transaction, on average (the baseline deletes in batches of this size)."""
        rows, tx, _longest, _s = self.per_rule.get(
            "old_events", (self.rows, len(self.transactions), 0.0, 0.0)
        )
        return max(1, round(rows / tx)) if tx else 1

    @property
    def longest_ms(self) -> float:
        """The longest write transaction, in ms."""
        return max(self.transactions, default=0.0) * 1000

    @property
    def p99_ms(self) -> float:
        """The 99th percentile write transaction, in ms."""
        if len(self.transactions) < 2:
            return self.longest_ms
        return statistics.quantiles(self.transactions, n=100)[98] * 1000


async def purge_run(url: str, schema: str | None, label: str) -> Result:
    """``run_purge`` (what ``consentgate purge`` runs) on ``url`` as of the fixture's date."""
    from ledger.retention import RetentionPolicy
    from ledger.store import open_store
    from ledger.store.purge import RULES, run_purge

    store = await open_store(url, schema=schema)
    timings: list[tuple[str, float, float]] = []  # rule, seconds held, when it ended
    try:
        started = time.perf_counter()
        report = await run_purge(
            store,
            RetentionPolicy(),
            NOW,
            on_transaction=lambda rule, s: timings.append((rule, s, time.perf_counter())),
        )
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    per_rule = {}
    previous_end = started
    for rule in RULES:
        mine = [(s, end) for r, s, end in timings if r == rule]
        # A rule's time runs from the previous rule's last transaction to its own last one.
        end = max((e for _s, e in mine), default=previous_end)
        held = [s for s, _e in mine]
        per_rule[rule] = (report.deleted[rule], len(held), max(held, default=0.0), end - previous_end)
        previous_end = end
    deleted = sum(n for rule, n in report.deleted.items() if rule != "inactivity_expiry")
    return Result(label, deleted, elapsed, [s for _r, s, _e in timings], per_rule)


def _probe(path: str, pipe: Connection) -> None:
    """Write one row every 5 ms like a gateway worker would, timing each wait for the write lock."""
    from ledger.store.sqlite import BUSY_TIMEOUT_MS

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = NORMAL")
    waits: list[float] = []
    writes: list[float] = []
    failures = 0
    pipe.send("ready")
    while not pipe.poll(PROBE_INTERVAL_S):
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            failures += 1
            continue
        waits.append(time.perf_counter() - started)
        conn.execute("INSERT INTO bench_probe (at) VALUES (?)", (time.time(),))
        conn.execute("COMMIT")
        writes.append(time.perf_counter() - started)
    conn.close()
    pipe.send((waits, writes, failures))


def sqlite_purge(fixture: Path, work: Path, probe: bool) -> Result:
    """The purge on a copy of the fixture, with the concurrent writer probe alongside."""
    db = work / "purge.db"
    copy_fixture(fixture, db)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE bench_probe (at REAL NOT NULL)")
    conn.close()
    proc = None
    if probe:
        parent, child = multiprocessing.get_context("spawn").Pipe()
        proc = multiprocessing.get_context("spawn").Process(target=_probe, args=(str(db), child), daemon=True)
        proc.start()
        parent.recv()
    result = asyncio.run(purge_run(f"sqlite:///{db}", None, "purge (run_purge)"))
    if proc is not None:
        parent.send("stop")
        result.probe_waits, result.probe_writes, result.probe_failures = parent.recv()
        proc.join()
    db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return result


def copy_fixture(fixture: Path, db: Path) -> None:
    """Copy the fixture and flush it: its write-back would otherwise slow the first transactions."""
    shutil.copyfile(fixture, db)
    os.sync()


def sqlite_baseline(fixture: Path, work: Path, batch: int) -> Result:
    """Plain batched ``DELETE`` of the old events (``batch`` rows each) with stdlib sqlite3 on another copy."""
    db = work / "baseline.db"
    copy_fixture(fixture, db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA secure_delete = ON")
    cut = us(NOW - timedelta(days=395))
    deleted, held = 0, []
    started = time.perf_counter()
    while True:
        conn.execute("BEGIN IMMEDIATE")
        t0 = time.perf_counter()
        n = conn.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? LIMIT ?)", (cut, batch)
        ).rowcount
        conn.execute("COMMIT")
        held.append(time.perf_counter() - t0)
        deleted += n
        if n < batch:
            break
    elapsed = time.perf_counter() - started
    conn.close()
    db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return Result("baseline: plain DELETE (sqlite3)", deleted, elapsed, held)


# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_url() -> str:
    """The server the benchmark schema is created on."""
    return os.environ.get("BENCH_PG_URL") or os.environ.get("TEST_DATABASE_URL") or DEFAULT_PG_URL


async def pg_fill(url: str, schema: str, fixture: Path, every: int) -> int:
    """Create and migrate ``schema``, COPY the fixture in (every ``every``-th event); rows copied."""
    import asyncpg

    from ledger.store import open_store
    from ledger.store.migrate import migrate

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        store = await open_store(url, schema=schema)
        try:
            await migrate(store.db)
        finally:
            await store.close()
        await conn.execute(f"SET search_path = {schema}")
        source = sqlite3.connect(fixture)
        tables = [
            row[0]
            for row in source.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "AND name NOT IN ('schema_version', 'clients') ORDER BY name"
            )
        ]
        # Indexes are built after the COPY (a sort) rather than maintained row by row.
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'events' "
            "AND indexname NOT LIKE '%pkey'",
            schema,
        )
        for index in indexes:
            await conn.execute(f"DROP INDEX {index['indexname']}")
        copied = 0
        for table in tables:
            # Whole runs of 100 ids: every subject group keeps its events (ids pick subjects mod 100).
            where = f" WHERE (id / 100) % {every} = 0" if table == "events" and every > 1 else ""
            cursor = source.execute(f"SELECT * FROM {table}{where}")
            columns = [d[0] for d in cursor.description]
            while batch := cursor.fetchmany(200_000):
                await conn.copy_records_to_table(table, records=batch, columns=columns, schema_name=schema)
                copied += len(batch)
        source.close()
        for index in indexes:
            await conn.execute(index["indexdef"])
        # Rows came with their ids: move each identity past them, or the next INSERT collides.
        for table in ("events", "ledger_events", "outbox", "campaigns"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{schema}.{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
                if table != "campaigns"
                else f"SELECT setval(pg_get_serial_sequence('{schema}.campaigns', 'num'), "
                f"(SELECT COALESCE(MAX(num), 0) + 1 FROM campaigns), false)"
            )
        await conn.execute("CREATE TABLE events_baseline (LIKE events INCLUDING ALL)")
        await conn.execute("INSERT INTO events_baseline SELECT * FROM events")
        await conn.execute("VACUUM ANALYZE")
        return copied
    finally:
        await conn.close()


async def pg_baseline(url: str, schema: str, batch: int) -> Result:
    """Plain batched ``DELETE`` of the old events (``batch`` rows each, asyncpg) on the schema's copy."""
    import asyncpg

    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    cut = us(NOW - timedelta(days=395))
    deleted, held = 0, []
    try:
        started = time.perf_counter()
        while True:
            async with conn.transaction():
                t0 = time.perf_counter()
                status = await conn.execute(
                    "DELETE FROM events_baseline WHERE id IN "
                    "(SELECT id FROM events_baseline WHERE at < $1 LIMIT $2)",
                    cut,
                    batch,
                )
            held.append(time.perf_counter() - t0)
            n = int(status.split()[-1])
            deleted += n
            if n < batch:
                break
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return Result("baseline: plain DELETE (asyncpg)", deleted, elapsed, held)


async def pg_drop(url: str, schema: str) -> None:
    """Remove the benchmark schema."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def postgres(fixture: Path, events: int, pg_events: int) -> tuple[list[Result], str]:
    """Purge and baseline on PostgreSQL; (results, a note on the fixture)."""
    url = pg_url()
    schema = f"bench_purge_{secrets.token_hex(4)}"
    every = max(1, events // max(pg_events, 1))
    try:
        started = time.perf_counter()
        copied = asyncio.run(pg_fill(url, schema, fixture, every))
        note = (
            f"PostgreSQL schema {schema}: {copied:,} rows copied ({events // every:,} events) "
            f"in {time.perf_counter() - started:.0f} s"
        )
        print(note, flush=True)
        purge = asyncio.run(purge_run(url, schema, "purge (run_purge)"))
        baseline = asyncio.run(pg_baseline(url, schema, purge.mean_batch))
    finally:
        asyncio.run(pg_drop(url, schema))
    return [purge, baseline], note


# --- output -------------------------------------------------------------------------------------


def table(backend: str, purge: Result, baseline: Result) -> str:
    """The figures of one backend as a Markdown table."""
    lines = [
        f"| {backend} | rows deleted | seconds | rows/s | ratio | write tx | longest tx | p99 tx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (purge, baseline):
        lines.append(
            f"| {r.label} | {r.rows:,} | {r.seconds:.1f} | {r.rate:,.0f} | {r.rate / baseline.rate:.2f} | "
            f"{len(r.transactions):,} | {r.longest_ms:.1f} ms | {r.p99_ms:.1f} ms |"
        )
    lines.append("")
    lines.append("| rule | rows | write tx | rows/tx | longest tx | ≈ seconds |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for rule, (rows, tx, longest, seconds) in purge.per_rule.items():
        per_tx = f"{rows / tx:,.0f}" if tx else "–"
        lines.append(f"| {rule} | {rows:,} | {tx:,} | {per_tx} | {longest * 1000:.1f} ms | {seconds:.1f} |")
    if purge.probe_waits is not None and purge.probe_writes is not None:
        lines.append("")
        lines.append(
            f"concurrent writer probe: {len(purge.probe_waits):,} writes during the purge; "
            f"waited for the lock {_spread(purge.probe_waits)}; whole write (BEGIN to COMMIT) "
            f"{_spread(purge.probe_writes)}; {purge.probe_failures} gave up (busy_timeout)"
        )
    return "\n".join(lines)


def _spread(samples: list[float]) -> str:
    """p50 / p99 / max of durations in seconds, as ms text."""
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p99 = statistics.quantiles(ordered, n=100)[98] if len(ordered) > 1 else ordered[0]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )


def main(argv: list[str]) -> int:
    """Build or reuse the fixture, run each measurement, print the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench purge", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--subjects", type=int, default=200_000)
    parser.add_argument("--postgres", action="store_true", help="Also run on PostgreSQL.")
    parser.add_argument("--pg-events", type=int, default=None, help="Events on PostgreSQL (default: all).")
    parser.add_argument("--no-probe", action="store_true", help="Skip the concurrent writer probe.")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the plain DELETE baseline.")
    parser.add_argument("--skip-sqlite", action="store_true", help="Only the PostgreSQL run.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)
    fixture, built = build_fixture(args.events, args.subjects)
    size = fixture.stat().st_size / 1e9
    print(
        f"fixture: {fixture.name} ({size:.2f} GB){f', built in {built:.0f} s' if built else ', cached'}",
        flush=True,
    )
    print(f"machine: {machine()}", flush=True)
    out: list[str] = []
    figures: dict[str, Any] = {}
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            work = Path(tmp)
            purge = sqlite_purge(fixture, work, probe=not args.no_probe)
            print(f"sqlite purge: {purge.rows:,} rows in {purge.seconds:.1f} s", flush=True)
            baseline = purge if args.no_baseline else sqlite_baseline(fixture, work, purge.mean_batch)
        out.append(table("SQLite", purge, baseline))
        figures["sqlite"] = _figures(purge, baseline)
    if args.postgres:
        (purge, baseline), note = postgres(fixture, args.events, args.pg_events or args.events)
        out.append(note + "\n\n" + table("PostgreSQL", purge, baseline))
        figures["postgresql"] = _figures(purge, baseline) | {"note": note}
    load = os.getloadavg()
    print()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("\n\n".join(out))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def _figures(purge: Result, baseline: Result) -> dict[str, Any]:
    """The figures of one backend for --json."""
    return {
        "rows": purge.rows,
        "seconds": purge.seconds,
        "rows_per_s": purge.rate,
        "baseline_rows_per_s": baseline.rate,
        "ratio": purge.rate / baseline.rate,
        "longest_tx_ms": purge.longest_ms,
        "p99_tx_ms": purge.p99_ms,
        "per_rule": purge.per_rule,
        "probe_longest_wait_ms": max(purge.probe_waits) * 1000 if purge.probe_waits else None,
        "probe_longest_write_ms": max(purge.probe_writes) * 1000 if purge.probe_writes else None,
    }
