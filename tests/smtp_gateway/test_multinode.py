"""Several `consentgate serve` nodes on one PostgreSQL database, and startup failures, run for real.

The nodes are subprocesses on their own ports sharing one database (created per test, dropped
afterwards) and one secret file; the upstream is an aiosmtpd sink in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from conftest import NOW, PG_URL, drop_schema, make_store
from submission_support import MESSAGE, free_port, sink

from ledger.store import open_store
from ledger.store.database import Database
from ledger.store.exclusive import exclusive
from ledger.store.outbox import OutboxCopy, OutboxStore
from smtp_gateway.server import wait_for_port

CLI = [str(Path(sys.executable).parent / "consentgate")]
needs_pg = pytest.mark.skipif(not PG_URL, reason="set TEST_DATABASE_URL to run the multi-node tests")


@dataclass
class Node:
    """One `consentgate serve` process and its ports."""

    proc: subprocess.Popen[bytes]
    smtp: int
    http: int
    log: Path

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Install:
    """A folder with config and secret, the database URL and the client's credentials."""

    folder: Path
    env: dict[str, str]
    username: str = ""
    password: str = ""
    nodes: list[Node] = field(default_factory=list)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a consentgate command in the folder."""
        return subprocess.run(
            [*CLI, *args], cwd=self.folder, env=env or self.env, capture_output=True, text=True, timeout=60
        )

    def start(self, *extra: str, **settings: str) -> Node:
        """Start a node on fresh ports (``settings``: more CONSENTGATE_* variables) and wait for it."""
        smtp, inbound, http = free_port(), free_port(), free_port()
        env = self.env | {
            "CONSENTGATE_SMTP__LISTEN": f"127.0.0.1:{smtp}",
            "CONSENTGATE_SMTP__INBOUND_LISTEN": f"127.0.0.1:{inbound}",
            "CONSENTGATE_HTTP__LISTEN": f"127.0.0.1:{http}",
            "CONSENTGATE_HTTP__PUBLIC_URL": f"http://127.0.0.1:{http}",
        }
        env |= {f"CONSENTGATE_{k.upper()}": v for k, v in settings.items()}
        log = self.folder / f"node-{smtp}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*CLI, "serve", *extra], cwd=self.folder, env=env, stdout=out, stderr=out)
        node = Node(proc, smtp, http, log)
        self.nodes.append(node)
        if not (wait_for_port("127.0.0.1", smtp, 20) and wait_for_port("127.0.0.1", http, 20)):
            node.stop()
            pytest.fail(f"serve did not start:\n{log.read_text()}")
        return node

    def rcpt(self, node: Node, address: str) -> tuple[int, bytes]:
        """The node's reply to RCPT TO:<address> in a fresh authenticated session."""
        with smtplib.SMTP("127.0.0.1", node.smtp, timeout=10) as client:
            client.login(self.username, self.password)
            code, text = client.mail("news@acme.example")
            if code != 250:
                return code, text
            return client.rcpt(address)


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test (the nodes take no schema option), dropped after."""
    if not PG_URL:
        pytest.skip("set TEST_DATABASE_URL to run the multi-node tests")
    name = f"cg_nodes_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    parts = urlsplit(PG_URL)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(PG_URL)
        try:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
def install(pg_database: str, tmp_path: Path) -> Iterator[Install]:
    """`init` + `client add acme` on the shared database; every node started is stopped after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    env |= {"CONSENTGATE_DATABASE_URL": pg_database, "CONSENTGATE_UPSTREAM__TIMEOUT_SECONDS": "5"}
    setup = Install(tmp_path, env)
    assert setup.cli("init").returncode == 0
    added = setup.cli("client", "add", "acme", "--domain", "acme.example", "--json")
    assert added.returncode == 0, added.stderr
    credentials = json.loads(added.stdout)
    setup.username, setup.password = credentials["username"], credentials["password"]
    try:
        yield setup
    finally:
        for node in setup.nodes:
            node.stop()


def send(
    install: Install, node: Node, rcpts: list[str], message: bytes = MESSAGE
) -> dict[str, tuple[int, bytes]]:
    """Submit ``message`` through ``node``."""
    with smtplib.SMTP("127.0.0.1", node.smtp, timeout=10) as client:
        client.login(install.username, install.password)
        return client.sendmail("news@acme.example", rcpts, message)


def until(condition: object, timeout: float, what: str) -> float:
    """Poll ``condition()`` until true; the seconds it took (fails after ``timeout``)."""
    assert callable(condition)
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - start


@needs_pg
async def test_unsubscribe_on_node_a_is_refused_at_rcpt_by_node_b(install: Install) -> None:
    """One-click POST on A's HTTP port; B (two workers) refuses the address at its next RCPT."""
    async with sink() as (upstream, port):
        upstream_url = f"smtp://127.0.0.1:{port}"
        node_a = install.start(upstream__url=upstream_url)
        node_b = install.start("--workers", "2", upstream__url=upstream_url)
        assert send(install, node_a, ["reader@example.org"]) == {}
        until(lambda: len(upstream.received) == 1, 10, "the first copy")
        found = re.search(rb"/u/([a-z2-7]+)>", upstream.received[0].content)
        assert found is not None
        assert install.rcpt(node_b, "Reader@Example.org")[0] == 250

        async with httpx.AsyncClient(timeout=10) as web:
            answer = await web.post(
                f"http://127.0.0.1:{node_a.http}/u/{found.group(1).decode()}",
                data={"List-Unsubscribe": "One-Click"},
            )
        answered = time.monotonic()
        assert answer.status_code in (200, 202)
        # Several sessions, so both of B's workers answer at least once with high probability.
        replies = [install.rcpt(node_b, "reader@example.org") for _ in range(6)]
        assert time.monotonic() - answered < 1.0 + 6 * 0.5  # sessions, not waiting for a cache
        assert all(code == 550 and b"5.7.1" in text for code, text in replies), replies
        assert install.rcpt(node_a, "reader@example.org")[0] == 550
        assert install.rcpt(node_b, "other@example.org")[0] == 250


@needs_pg
async def test_client_pause_reaches_other_nodes_within_a_second(install: Install, pg_database: str) -> None:
    """A pause written elsewhere (the complaint guard on another node) stops MAIL on B in < 1 s.

    B's client cache is set to 60 s: only the LISTEN/NOTIFY change feed can make it this fast.
    """
    node_b = install.start(smtp__client_cache_seconds="60")
    assert install.rcpt(node_b, "reader@example.org")[0] == 250  # the cache is warm now
    db = await asyncpg.connect(pg_database)
    try:
        await db.execute("UPDATE clients SET paused_reason = 'complaint rate' WHERE id = 'acme'")
    finally:
        await db.close()
    took = until(lambda: install.rcpt(node_b, "reader@example.org")[0] == 451, 1.0, "the pause")
    assert took < 1.0
    assert b"complaint rate" in install.rcpt(node_b, "reader@example.org")[1]


@needs_pg
async def test_killed_node_copies_are_delivered_once_by_the_survivor(
    install: Install, pg_database: str
) -> None:
    """SIGKILL a node holding leased outbox copies; the other delivers each exactly once, after the lease."""
    port = free_port()
    timing = {
        "upstream__url": f"smtp://127.0.0.1:{port}",
        "upstream__timeout_seconds": "30",
        "outbox__retry_base_seconds": "0.3",
        "outbox__retry_max_seconds": "0.5",
        "outbox__poll_seconds": "0.1",
        "outbox__lease_seconds": "3",
    }
    node_a = install.start(**timing)
    wanted: Counter[tuple[str, str]] = Counter()
    for n in range(8):  # upstream down: every copy is spooled, the mailer still gets 250
        message = MESSAGE.replace(b"<spring-1@", f"<spring-{n}@".encode())
        rcpts = [f"r{n}a@example.org", f"r{n}b@example.org"]
        assert send(install, node_a, rcpts, message) == {}
        wanted.update((f"<spring-{n}@acme.example>", rcpt) for rcpt in rcpts)

    # A black hole on the upstream port: A's retry worker claims copies and waits for a banner.
    hole = socket.create_server(("127.0.0.1", port), backlog=100)
    db = await asyncpg.connect(pg_database)
    try:
        # Leases A took at least 0.5 s ago and still holds: it is stuck in the black hole (a refused
        # connection would have released them within milliseconds).
        held = (
            "SELECT id, lease_until FROM outbox WHERE lease_owner LIKE $1 AND lease_until > $2 "
            "AND lease_until < $2 + $3"
        )
        owner, lease_us = f"%:{node_a.proc.pid}:%", int((3 - 0.5) * 1e6)
        deadline = time.monotonic() + 10
        while not await db.fetch(held, owner, int(time.time() * 1e6), lease_us):
            assert time.monotonic() < deadline, "node A never got stuck holding a copy"
            await asyncio.sleep(0.05)
        node_a.proc.kill()  # SIGKILL: no clean shutdown, the leases stay behind
        node_a.proc.wait()
        hole.close()
        leases = await db.fetch(held, owner, int(time.time() * 1e6), int(3e6))
        assert leases  # what the dead node left behind
        # As if A ran on another machine: a survivor on A's own host would see A's pid gone and
        # free its leases at start (OutboxWorker.release_dead_leases); across machines only the
        # lease's end frees them, which is what this test proves.
        await db.execute(
            "UPDATE outbox SET lease_owner = 'node-a.elsewhere' || lease_owner WHERE lease_owner LIKE $1",
            owner,
        )
        leased = {row[0]: row[1] / 1e6 for row in leases}

        async with sink(port) as (upstream, _port):
            install.start(**timing)

            def delivered() -> Counter[tuple[str, str]]:
                got: Counter[tuple[str, str]] = Counter()
                for received in upstream.received:
                    msgid = re.search(rb"(?im)^Message-ID:\s*(<[^>]+>)", received.content)
                    assert msgid is not None
                    got.update((msgid.group(1).decode(), rcpt) for rcpt in received.rcpt_tos)
                return got

            deadline = time.monotonic() + 20
            while delivered() != wanted or await db.fetchval("SELECT COUNT(*) FROM outbox"):
                assert time.monotonic() < deadline, f"not delivered: {wanted - delivered()}"
                assert max(delivered().values(), default=0) <= 1, "a copy was delivered twice"
                waiting = {row[0] for row in await db.fetch("SELECT id FROM outbox")}
                taken_early = [i for i, end in leased.items() if i not in waiting and time.time() < end - 0.2]
                assert not taken_early, "a copy was taken while the dead node's lease still ran"
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)  # a duplicate would show up now
            assert delivered() == wanted
    finally:
        hole.close()  # idempotent: closed above unless a check failed first
        await db.close()


async def test_claims_by_many_nodes_never_overlap(backend: str, tmp_path: Path) -> None:
    """Six workers, each on its own connection pool, race for 300 copies: each is claimed exactly once."""
    store, url, schema = await make_store(backend, tmp_path)
    nodes = [await open_store(url, schema=schema, pool_size=2) for _ in range(6)]
    try:
        copies = [OutboxCopy("acme", 1, None, "b@x", f"r{n}@example.org", b"x") for n in range(300)]
        await OutboxStore(store.db).add(copies, NOW, NOW)
        claimed: list[tuple[str, int]] = []

        async def worker(name: str, db: Database) -> None:
            outbox = OutboxStore(db)
            while batch := await outbox.claim(name, NOW, NOW + timedelta(minutes=5), 7):
                claimed.extend((name, c.id) for c in batch)
                await asyncio.sleep(0)

        await asyncio.gather(*(worker(f"node{i}", n.db) for i, n in enumerate(nodes)))
        ids = [copy_id for _name, copy_id in claimed]
        assert len(ids) == 300 and len(set(ids)) == 300
        assert len({name for name, _id in claimed}) > 1  # they really raced
    finally:
        for node in nodes:
            await node.close()
        await store.close()
        await drop_schema(schema)


async def test_daily_jobs_run_on_one_node_at_a_time(backend: str, tmp_path: Path) -> None:
    """Two nodes wake for the daily purge: one holds the job, the other is told to skip; then it is free."""
    store, url, schema = await make_store(backend, tmp_path)
    other = await open_store(url, schema=schema)
    try:
        async with exclusive(store.db, "daily-purge") as first:
            assert first
            async with exclusive(other.db, "daily-purge") as second:
                assert second is (backend == "sqlite")  # SQLite: one machine, worker 0 only
            async with exclusive(other.db, "another-job") as unrelated:
                assert unrelated
        async with exclusive(other.db, "daily-purge") as later:
            assert later
    finally:
        await other.close()
        await store.close()
        await drop_schema(schema)


def test_unreachable_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """`serve` (one worker and two) on a database nobody answers: `error: …`, exit 2, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    env["CONSENTGATE_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    setup = Install(tmp_path, env)
    assert setup.cli("init").returncode == 2  # init migrates: the same message
    for extra in ([], ["--workers", "2"]):
        done = setup.cli("serve", *extra)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: cannot connect to PostgreSQL")
        assert "Traceback" not in done.stderr + done.stdout and done.stderr.count("\n") == 1


def test_outdated_schema_is_refused_until_db_migrate(tmp_path: Path) -> None:
    """An older schema: `serve` names the pending migrations; `db migrate` says and does; then it starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    setup = Install(tmp_path, env)
    assert setup.cli("init").returncode == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "consentgate.db") as conn:  # as if 0008 never ran
        conn.execute("DELETE FROM schema_version WHERE version = 8")
    done = setup.cli("serve", "--workers", "2")
    assert done.returncode == 2
    assert done.stderr.startswith(
        "error: the database schema is older than the code (pending: 0008_change_feed)"
    )
    assert "consentgate db migrate" in done.stderr and "Traceback" not in done.stderr
    dry = setup.cli("db", "migrate", "--dry-run")
    assert dry.returncode == 0 and "would apply 0008_change_feed" in dry.stdout
    done = setup.cli("db", "migrate")
    assert done.returncode == 0 and "applying 0008_change_feed" in done.stdout
    assert "nothing to do" in setup.cli("db", "migrate").stdout


def test_sqlite_workers_share_every_port(tmp_path: Path) -> None:
    """`serve --workers 2` on SQLite: two listening sockets on each of submission, inbound and HTTP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    setup = Install(tmp_path, env)
    assert setup.cli("init").returncode == 0
    inbound = free_port()
    node = setup.start("--workers", "2", smtp__inbound_listen=f"127.0.0.1:{inbound}")
    try:
        ports = {node.smtp, inbound, node.http}
        until(lambda: all(listeners(p) == 2 for p in ports), 10, "two listeners per port")
    finally:
        node.stop()
    assert node.proc.returncode == 0


def listeners(port: int) -> int:
    """How many sockets listen on TCP ``port`` (from /proc/net/tcp: state 0A is LISTEN)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            count += 1
    return count
