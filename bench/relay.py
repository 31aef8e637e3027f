"""Benchmark: the gateway against Postfix and a bare pass-through, same load, same sink, same run.

``python -m bench relay [--recipients 1 --recipients 10] [--workers 1 --workers 2]
[--suppressions 10000000] [--consented 1000000] [--rounds 2] [--svg PATH]``

Configurations, each driven in turn (back to back, ``--rounds`` times; medians quoted):

* **postfix** — a throwaway Postfix instance (own config and queue under a temp dir, see
  :mod:`bench.postfix`), relaying through its durable queue to the sink;
* **bare** — a bare aiosmtpd → aiosmtplib pass-through with a pooled upstream
  (:mod:`bench.passthrough`): the floor cost of the Python SMTP stack;
* **gateway/wN** — ``consentgate serve --workers N`` on a SQLite ledger of ``--suppressions``
  suppressions and ``--consented`` consented subjects: per-recipient policy lookup, rewrite,
  token, click tracking, DKIM RSA-2048, one upstream transaction per copy, events written.

Load: Postfix's ``smtp-source`` (``-s 20 -l 5120 -d``; plain text, no AUTH: the bench client
admits 127.0.0.0/8 as a trusted network) and, at the same time, the bench's own generator
(:mod:`bench.loadgen`, 2 sessions, a 5 KB HTML+text campaign message over AUTH where offered)
which times every RCPT reply. Throughput is end to end: from the first connection to the moment
``smtp-sink`` has counted every expected transaction (Postfix's queue drains after smtp-source
has finished, so stopping the clock at smtp-source's exit would flatter it).

The ledger is built once with stdlib ``sqlite3`` (keys generated pre-sorted, ``executemany`` in
large transactions) and cached under ``bench/.cache/``; each run works on a copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen, postfix
from bench.fixture_cache import ROOT, build_path, bulk_connection, cached, finish

EXE = str(Path(sys.executable).with_name("consentgate"))
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
SENDER = "news@bench.example"
RECIPIENT = "rcpt@example.org"
CLIENT_ID = "bench"
PASSWORD = "bench-password-not-secret"
GENERATOR_SESSIONS = 2
GENERATOR_ADDRESSES = 1000
FIXTURE_VERSION = 2


# --- the ledger fixture -------------------------------------------------------------------------


def _generator_addresses() -> list[str]:
    """Addresses the bench generator mails (all consented, none suppressed)."""
    return [f"user{i}@example.org" for i in range(GENERATOR_ADDRESSES)]


def _source_addresses() -> list[str]:
    """Addresses smtp-source generates: RECIPIENT, and with ``-r N`` a number prepended."""
    return [RECIPIENT] + [f"{i}{RECIPIENT}" for i in range(101)]


def _sorted_keys(count: int, salt: bytes) -> Iterator[bytes]:
    """``count`` distinct 32-byte keys in ascending order, spread evenly over the key space.

    The first 8 bytes grow with ``i`` (so the stream is pre-sorted: B-tree appends, ~4× faster
    than random order, DESIGN §7); the rest makes the key look like a digest. Deterministic.
    """
    step = (1 << 64) // max(count, 1)
    tail_pad = salt * (16 // len(salt))
    for i in range(count):
        yield (i * step).to_bytes(8, "big") + i.to_bytes(8, "big") + tail_pad


def build_ledger(suppressions: int, consented: int) -> tuple[Path, Path, float]:
    """The cached ledger; (database, secret file, build seconds — 0 when it came from the cache)."""
    db = cached(f"relay-v{FIXTURE_VERSION}-s{suppressions}-c{consented}")
    secret = db.with_suffix(".secret.json")
    if db.exists() and secret.exists():
        return db, secret, 0.0
    started = time.perf_counter()
    tmp = build_path(db)
    from ledger.secret_file import create_secrets, load_secrets

    secret.unlink(missing_ok=True)
    create_secrets(secret)
    pepper = load_secrets(secret).pepper
    asyncio.run(_init_ledger(tmp))
    now = int(time.time() * 1e6)
    conn = bulk_connection(tmp, 256)
    batch = 1_000_000
    keys = _sorted_keys(suppressions, b"\x5a\xa5")
    for start in range(0, suppressions, batch):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO suppressions (subject_key, scope, reason, since, source) "
            "VALUES (?, ?, 'unsubscribed', ?, 'bench')",
            (
                (next(keys), "global" if i % 2 else CLIENT_ID, now)
                for i in range(start, min(start + batch, suppressions))
            ),
        )
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO subjects (subject_key, address, restricted, created_at) VALUES (?, NULL, 0, ?)",
        ((k, now) for k in _sorted_keys(consented, b"\xc3\x3c")),
    )
    conn.executemany(
        "INSERT INTO relationships (client_id, subject_key, status, consent_at, changed_at) "
        "VALUES (?, ?, 'active', ?, ?)",
        ((CLIENT_ID, k, now, now) for k in _sorted_keys(consented, b"\xc3\x3c")),
    )
    # The subjects the load actually mails: consented, with their real keyed hashes.
    from ledger.identity import identify

    real = [identify(pepper, a) for a in _generator_addresses() + _source_addresses()]
    conn.executemany(
        "INSERT OR IGNORE INTO subjects (subject_key, address, restricted, created_at) VALUES (?, ?, 0, ?)",
        ((i.subject_key, i.address, now) for i in real),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO relationships (client_id, subject_key, status, consent_at, changed_at) "
        "VALUES (?, ?, 'active', ?, ?)",
        ((CLIENT_ID, i.subject_key, now, now) for i in real),
    )
    conn.execute("COMMIT")
    finish(conn, tmp, db)
    return db, secret, time.perf_counter() - started


async def _init_ledger(path: Path) -> None:
    """Schema and the bench client (trusted network, DKIM key, tracking on) through the real code."""
    from datetime import UTC, datetime

    from ledger.models import Client
    from ledger.passwords import hash_password
    from ledger.store import open_store
    from ledger.store.migrate import migrate
    from smtp_gateway.dkim_sign import generate_rsa_key

    store = await open_store(f"sqlite:///{path}")
    try:
        await migrate(store.db)
        pem, _txt = generate_rsa_key(2048)
        client = Client(
            id=CLIENT_ID,
            name="Bench Ltd",
            domains=("bench.example",),
            postal_address="1 Bench Road",
            password_hash=hash_password(PASSWORD),
            dkim_selector="bench",
            dkim_private_key=pem.decode("ascii"),
            trusted_networks=("127.0.0.0/8",),
            tracking=True,
        )
        await store.add_client(client, datetime.now(UTC))
    finally:
        await store.close()


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    """Wait until something accepts on 127.0.0.1:port."""
    from smtp_gateway.server import wait_for_port

    if not wait_for_port("127.0.0.1", port, timeout):
        raise SystemExit(f"nothing listens on port {port} after {timeout}s")


class Sink:
    """``smtp-sink -c``: counts transactions; a thread parses its running counter."""

    def __init__(self, port: int, cwd: Path) -> None:
        """Start the sink on 127.0.0.1:``port``."""
        as_root = ["-u", "postfix"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root
        self.proc = subprocess.Popen(
            [SMTP_SINK, *as_root, "-c", f"127.0.0.1:{port}", "1024"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        """Follow ``sess=N quit=N mesg=N`` updates (separated by CR)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pattern = re.compile(rb"mesg=(\d+)")
        buffer = b""
        while chunk := os.read(fd, 65536):
            # Only complete records: a chunk may end in the middle of "mesg=1234".
            *records, buffer = (buffer + chunk).split(b"\r")
            for record in reversed(records):
                if found := pattern.search(record):
                    self.count = int(found.group(1))
                    break

    async def wait_for(self, total: int, limit: float = 180.0) -> float:
        """Wait until ``total`` transactions arrived; returns when (perf_counter)."""
        deadline = time.perf_counter() + limit
        while self.count < total:
            if time.perf_counter() > deadline:
                raise SystemExit(f"the sink received {self.count} of {total} expected copies")
            await asyncio.sleep(0.002)
        return time.perf_counter()

    def stop(self) -> None:
        """Terminate."""
        stop_process(self.proc)


def start(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start a server process, its output going to ``log``."""
    handle = log.open("wb")
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found.extend(process_tree(int(child)))
    return found


def peak_rss_mb(pid: int) -> float:
    """The peak resident set (VmHWM) of one process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by ``pids`` (their threads included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


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
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


# --- one measurement ----------------------------------------------------------------------------


@dataclass
class Target:
    """A system under test."""

    name: str
    port: int
    credentials: tuple[str, str] | None = None
    copies_per_rcpt_transaction: bool = False  # the gateway sends one transaction per recipient
    pids: list[int] = field(default_factory=list)  # worker processes (for RSS)


@dataclass
class Run:
    """One timed run of one target."""

    target: str
    recipients: int
    messages: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = 0.0  # of the target's processes over the run (0: not measured)

    @property
    def msg_per_s(self) -> float:
        """Messages per second, end to end."""
        return self.messages / self.seconds

    @property
    def copies_per_s(self) -> float:
        """Recipients delivered per second."""
        return self.messages * self.recipients / self.seconds

    @property
    def cpu_ms_per_copy(self) -> float:
        """CPU milliseconds the target spent per recipient delivered (0: not measured).

        Unlike msg/s this barely moves when other work shares the machine, so it is the figure
        to compare between runs taken at different times.
        """
        return self.cpu_seconds * 1000 / (self.messages * self.recipients)


async def smtp_source(port: int, messages: int, recipients: int, sessions: int, size: int) -> None:
    """Run smtp-source against 127.0.0.1:port."""
    proc = await asyncio.create_subprocess_exec(
        SMTP_SOURCE,
        "-d",  # reuse each session for many messages, as bulk mailers do
        "-s",
        str(sessions),
        "-l",
        str(size),
        "-m",
        str(messages),
        "-r",
        str(recipients),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await proc.communicate()
    text = err.decode(errors="replace")
    if proc.returncode != 0 or "error" in text.lower():
        raise SystemExit(f"smtp-source failed against port {port}: {text.strip()[:500]}")


async def measure(
    target: Target, sink: Sink, recipients: int, messages: int, sessions: int, size: int
) -> Run:
    """smtp-source plus the latency generator against ``target``, timed until the sink has it all."""
    per_message = recipients if target.copies_per_rcpt_transaction else 1
    base = sink.count
    # Warm-up: pools, caches, Postfix's process pool.
    await smtp_source(target.port, 40, recipients, sessions, size)
    base += 40 * per_message
    await sink.wait_for(base)
    addresses = loadgen_addresses(recipients)
    stop = asyncio.Event()
    cpu_before = cpu_seconds(target.pids)
    started = time.perf_counter()
    generator = asyncio.create_task(
        loadgen.run(
            target.port,
            sessions=GENERATOR_SESSIONS,
            sender=SENDER,
            recipients=addresses,
            credentials=target.credentials,
            stop=stop,
        )
    )
    await smtp_source(target.port, messages, recipients, sessions, size)
    stop.set()
    stats = await generator
    if stats.errors:
        raise SystemExit(f"{target.name}: load generator failed: {stats.errors[0]}")
    total = messages + stats.messages
    ended = await sink.wait_for(base + total * per_message)
    cpu = cpu_seconds(target.pids) - cpu_before
    return Run(target.name, recipients, total, ended - started, stats.rcpt_latencies, cpu)


def loadgen_addresses(recipients: int) -> list[list[str]]:
    """Recipient lists for the generator: ``recipients`` distinct consented addresses each."""
    pool = _generator_addresses()
    return [
        [pool[(i * recipients + j) % len(pool)] for j in range(recipients)]
        for i in range(len(pool) // recipients)
    ]


# --- the whole run ------------------------------------------------------------------------------


@contextmanager
def gateway(
    work: Path, db: Path, secret: Path, sink_port: int, workers: int, database_url: str | None
) -> Iterator[Target]:
    """``consentgate serve --workers N`` on its own ports."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    gw_env = env | {
        "CONSENTGATE_DATABASE_URL": database_url or f"sqlite:///{db}",
        "CONSENTGATE_SECRET_FILE": str(secret),
        "CONSENTGATE_SMTP__LISTEN": f"127.0.0.1:{port}",
        "CONSENTGATE_SMTP__INBOUND_LISTEN": f"127.0.0.1:{free_port()}",
        "CONSENTGATE_HTTP__LISTEN": f"127.0.0.1:{free_port()}",
        "CONSENTGATE_UPSTREAM__URL": f"smtp://127.0.0.1:{sink_port}",
        "CONSENTGATE_UPSTREAM__POOL_SIZE": "20",
        "CONSENTGATE_WORKERS": str(workers),
    }
    if other_code := os.environ.get("BENCH_GATEWAY_PYTHONPATH"):
        gw_env["PYTHONPATH"] = other_code  # measure another checkout of the gateway (before/after)
    log = work / f"gateway-w{workers}.log"
    proc = start([EXE, "serve"], gw_env, work, log)
    try:
        wait_port(port)
        time.sleep(0.3 * workers)  # every worker bound (SO_REUSEPORT spreads only over bound ones)
        pids = process_tree(proc.pid)
        yield Target(
            f"gateway/w{workers}",
            port,
            credentials=(CLIENT_ID, PASSWORD),
            copies_per_rcpt_transaction=True,
            pids=pids[1:] if workers > 1 else pids[:1],
        )
    finally:
        stop_process(proc)
        _show_errors(log)


@contextmanager
def bare(work: Path, sink_port: int) -> Iterator[Target]:
    """The pass-through baseline."""
    port = free_port()
    log = work / "bare.log"
    proc = start(
        [sys.executable, "-m", "bench.passthrough", str(port), str(sink_port), "20"],
        {**os.environ, "PYTHONPATH": str(ROOT)},
        ROOT,
        log,
    )
    try:
        wait_port(port)
        yield Target("bare", port, pids=[proc.pid])
    finally:
        stop_process(proc)
        _show_errors(log)


@contextmanager
def postfix_target(work: Path, sink_port: int) -> Iterator[Target]:
    """A throwaway Postfix instance."""
    port = free_port()
    with postfix.instance(work / "postfix", port, sink_port):
        wait_port(port)
        yield Target("postfix", port)


def _show_errors(log: Path) -> None:
    """Print a server's log tail if it logged an error."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if "Traceback" in text or " ERROR " in text:
        print(f"--- {log.name} (tail) ---\n{text[-3000:]}", file=sys.stderr)


def main(argv: list[str]) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench relay", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipients", type=int, action="append", help="per message (repeatable; default 1 and 10)"
    )
    parser.add_argument(
        "--workers", type=int, action="append", help="gateway processes (repeatable; default 1 and 2)"
    )
    parser.add_argument("--suppressions", type=int, default=10_000_000)
    parser.add_argument("--consented", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=0, help="smtp-source messages per run")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent smtp-source sessions")
    parser.add_argument("--size", type=int, default=5120, help="smtp-source message size in bytes")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions (medians are quoted)")
    parser.add_argument("--no-postfix", action="store_true", help="skip the Postfix instance")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare pass-through")
    parser.add_argument("--database-url", help="run the gateway on this database instead (PostgreSQL)")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="postgresql: copy the fixture into a fresh database on $BENCH_PG_URL (see bench/pg_fixture.py)",
    )
    parser.add_argument("--svg", type=Path, help="write a throughput chart (SVG) here")
    parser.add_argument("--json", type=Path, help="write the raw figures (JSON) here")
    args = parser.parse_args(argv)
    rcpt_counts = args.recipients or [1, 10]
    worker_counts = args.workers or [1, 2]
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: apt-get install postfix (see bench/README.md)")
    with_postfix = not args.no_postfix and postfix.available()
    if not args.no_postfix and not with_postfix:
        print("note: Postfix not measured (needs /usr/sbin/postfix and root)", file=sys.stderr)

    db, secret, build_seconds = build_ledger(args.suppressions, args.consented)
    if args.database == "postgresql" and not args.database_url:
        from bench.pg_fixture import copy_to_postgres

        args.database_url = copy_to_postgres(db)  # dropped when the benchmark exits
    if build_seconds:
        rows = args.suppressions + 2 * args.consented
        print(
            f"built the ledger fixture ({args.suppressions:,} suppressions, {args.consented:,} consented "
            f"subjects) in {build_seconds:.1f}s ({rows / build_seconds:,.0f} rows/s) -> {db}"
        )
    work = Path(tempfile.mkdtemp(prefix="cg-bench-"))
    work.chmod(0o755)  # Postfix's daemons (user postfix) work under it
    runs: list[Run] = []
    rss: dict[str, float] = {}
    sink: Sink | None = None
    try:
        copy_started = time.perf_counter()
        shutil.copy(db, work / "ledger.db")
        copy_seconds = time.perf_counter() - copy_started
        sink_port = free_port()
        sink = Sink(sink_port, work)
        wait_port(sink_port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
        migrate_env = env | {
            "CONSENTGATE_DATABASE_URL": args.database_url or f"sqlite:///{work / 'ledger.db'}",
            "CONSENTGATE_SECRET_FILE": str(secret),
        }
        subprocess.run([EXE, "db", "migrate"], env=migrate_env, cwd=work, check=True, capture_output=True)
        with ExitStack() as stack:
            targets: list[Target] = []
            if with_postfix:
                targets.append(stack.enter_context(postfix_target(work, sink_port)))
            if not args.no_bare:
                targets.append(stack.enter_context(bare(work, sink_port)))
            for workers in worker_counts:
                targets.append(
                    stack.enter_context(
                        gateway(work, work / "ledger.db", secret, sink_port, workers, args.database_url)
                    )
                )
            for _round in range(args.rounds):
                for rcpts in rcpt_counts:
                    messages = args.messages or max(300, 3000 // rcpts)
                    for target in targets:
                        run = asyncio.run(measure(target, sink, rcpts, messages, args.sessions, args.size))
                        runs.append(run)
                        print(
                            f"  round {_round + 1} rcpt={rcpts} {target.name:<12} {run.msg_per_s:8.1f} msg/s "
                            f"{run.copies_per_s:8.1f} rcpt/s",
                            flush=True,
                        )
            for target in targets:
                if target.pids:
                    rss[target.name] = max(peak_rss_mb(pid) for pid in target.pids)
    finally:
        if sink is not None:  # also when a run fails: never leave an orphaned smtp-sink behind
            sink.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary = summarise(runs, rcpt_counts)
    header = (
        f"\nconsentgate relay benchmark — {time.strftime('%Y-%m-%d %H:%M')} — {machine()}\n"
        f"ledger: {args.suppressions:,} suppressions + {args.consented:,} consented subjects "
        f"({'PostgreSQL' if args.database_url else 'SQLite'}, copied in {copy_seconds:.1f}s); "
        f"load: smtp-source -s {args.sessions} -l {args.size} -d + {GENERATOR_SESSIONS} AUTH sessions "
        f"(5 KB HTML+text); DKIM RSA-2048, tracking on; medians of {args.rounds} round(s)"
    )
    print(header)
    print(format_table(summary, rss))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rss_mb": rss, "header": header}, indent=2))
    if args.svg:
        args.svg.write_text(svg_chart(summary, header.strip().splitlines()[0]))
        print(f"chart: {args.svg}")
    return 0


def summarise(runs: list[Run], rcpt_counts: list[int]) -> list[dict[str, object]]:
    """Medians per (recipients, target), with ratios to Postfix (or to bare without Postfix)."""
    rows: list[dict[str, object]] = []
    for rcpts in rcpt_counts:
        names = list(dict.fromkeys(r.target for r in runs if r.recipients == rcpts))
        medians = {}
        for name in names:
            mine = [r for r in runs if r.recipients == rcpts and r.target == name]
            latencies = [x for r in mine for x in r.latencies]
            medians[name] = {
                "recipients": rcpts,
                "target": name,
                "msg_per_s": statistics.median(r.msg_per_s for r in mine),
                "rcpt_per_s": statistics.median(r.copies_per_s for r in mine),
                "all_msg_per_s": [round(r.msg_per_s, 1) for r in mine],
                "p50_ms": loadgen.percentile(latencies, 0.50) * 1000,
                "p99_ms": loadgen.percentile(latencies, 0.99) * 1000,
                "rcpt_samples": len(latencies),
                "cpu_ms_per_copy": statistics.median(r.cpu_ms_per_copy for r in mine),
            }
        baseline = "postfix" if "postfix" in medians else names[0]
        for name in names:
            row = medians[name]
            base_rate = float(medians[baseline]["rcpt_per_s"])  # type: ignore[arg-type]
            row["baseline"] = baseline
            row["ratio"] = float(row["rcpt_per_s"]) / base_rate  # type: ignore[arg-type]
            rows.append(row)
    return rows


def format_table(summary: list[dict[str, object]], rss: dict[str, float]) -> str:
    """The printed table."""
    lines = [
        f"{'rcpt/msg':>8} {'setup':<12} {'msg/s':>8} {'rcpt/s':>8} {'vs ' + 'base':>8} "
        f"{'RCPT p50':>9} {'RCPT p99':>9} {'peak RSS':>9} {'CPU/copy':>9}  runs (msg/s)"
    ]
    for row in summary:
        name = str(row["target"])
        mem = f"{rss[name]:.0f} MB" if name in rss else "-"
        cpu = float(row["cpu_ms_per_copy"])  # type: ignore[arg-type]
        cpu_text = f"{cpu:.2f}ms" if cpu else "-"
        lines.append(
            f"{row['recipients']:>8} {name:<12} {row['msg_per_s']:>8.1f} {row['rcpt_per_s']:>8.1f} "
            f"{row['ratio']:>7.2f}× {row['p50_ms']:>7.2f}ms {row['p99_ms']:>7.2f}ms {mem:>9} {cpu_text:>9}  "
            f"{row['all_msg_per_s']}"
        )
    lines.append(
        f"(ratios: recipients delivered per second vs {summary[0]['baseline']} at the same rcpt/msg)"
    )
    return "\n".join(lines)


def svg_chart(summary: list[dict[str, object]], title: str) -> str:
    """A grouped bar chart of recipients delivered per second, per configuration and rcpt/msg."""
    groups = list(dict.fromkeys(int(r["recipients"]) for r in summary))  # type: ignore[call-overload]
    names = list(dict.fromkeys(str(r["target"]) for r in summary))
    colours = ["#8c8c8c", "#b5b5b5", "#4f81bd", "#1f4e79", "#2e8b57", "#8b0000"]
    top = max(float(r["rcpt_per_s"]) for r in summary) * 1.15  # type: ignore[arg-type]
    width, height, left, bottom, plot_h = 760, 380, 60, 60, 260
    group_w = (width - left - 20) / len(groups)
    bar_w = group_w * 0.8 / len(names)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">'
        "Recipients delivered per second (median; higher is better)</text>",
        f'<text x="{width / 2}" y="36" text-anchor="middle" fill="#555">{_xml(title)}</text>',
    ]
    base_y = height - bottom
    parts.append(f'<line x1="{left}" y1="{base_y}" x2="{width - 20}" y2="{base_y}" stroke="black"/>')
    for tick in range(5):
        value = top * tick / 4
        y = base_y - plot_h * tick / 4
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" fill="#555">{value:.0f}</text>')
        parts.append(f'<line x1="{left}" y1="{y}" x2="{width - 20}" y2="{y}" stroke="#eee"/>')
    for g, rcpts in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for n, name in enumerate(names):
            row = next((r for r in summary if r["recipients"] == rcpts and r["target"] == name), None)
            if row is None:
                continue
            value = float(row["rcpt_per_s"])  # type: ignore[arg-type]
            h = plot_h * value / top
            x = x0 + n * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{base_y - h:.1f}" width="{bar_w * 0.9:.1f}" height="{h:.1f}" '
                f'fill="{colours[n % len(colours)]}"/>'
            )
            parts.append(
                f'<text x="{x + bar_w * 0.45:.1f}" y="{base_y - h - 4:.1f}" text-anchor="middle">'
                f"{value:.0f} ({float(row['ratio']):.2f}×)</text>"  # type: ignore[arg-type]
            )
        parts.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{base_y + 18}" text-anchor="middle">'
            f"{rcpts} recipient(s) per message</text>"
        )
    for n, name in enumerate(names):
        x = left + n * 130
        parts.append(
            f'<rect x="{x}" y="{height - 24}" width="12" height="12" fill="{colours[n % len(colours)]}"/>'
        )
        parts.append(f'<text x="{x + 16}" y="{height - 14}">{_xml(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _xml(text: str) -> str:
    """Escape text for SVG."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
