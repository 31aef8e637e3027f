"""Benchmark: Postfix's smtp-source → consentgate serve → Postfix's smtp-sink, against a big ledger.

``python -m bench relay [--recipients 1 --recipients 10] [--suppressions 1000000] [--messages N]``

Measured in the same run, on the same smtp-source load and the same smtp-sink:

* **gateway** — ``consentgate serve`` (a subprocess, one worker unless ``--workers``): policy
  lookup per recipient in a SQLite ledger holding ``--suppressions`` suppressions (and as many
  subjects), per-recipient rewrite, token, DKIM signature (RSA-2048), relay over pooled
  connections, events written;
* **bare** — a bare aiosmtpd → aiosmtplib pass-through with a pooled upstream
  (:mod:`bench.passthrough`), relaying each message as one transaction.

smtp-source cannot AUTH, so the bench client is added with ``--trusted-network 127.0.0.0/8``.
The ledger is built once with ``executemany`` in one transaction (keys pre-sorted) and cached
under ``bench/.cache/``; each run works on a copy. Prints msg/s (and copies/s) per setup and the
gateway/bare ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
EXE = str(Path(sys.executable).with_name("consentgate"))
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
SENDER = "news@bench.example"
RECIPIENT = "rcpt@example.org"


@dataclass(frozen=True)
class Result:
    """One timed smtp-source run."""

    name: str
    recipients: int
    messages: int
    seconds: float

    @property
    def msg_per_s(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds

    @property
    def copies_per_s(self) -> float:
        """Recipient copies per second."""
        return self.messages * self.recipients / self.seconds


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts on 127.0.0.1:port."""
    from smtp_gateway.server import wait_for_port

    if not wait_for_port("127.0.0.1", port, timeout):
        raise SystemExit(f"nothing listens on port {port} after {timeout}s")


def build_ledger(suppressions: int) -> tuple[Path, Path]:
    """The cached ledger with ``suppressions`` rows and the bench client; (db, secret file)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    db = CACHE / f"ledger-{suppressions}.db"
    secret = CACHE / f"secret-{suppressions}.json"
    if db.exists() and secret.exists():
        return db, secret
    started = time.perf_counter()
    tmp = db.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    from ledger.secret_file import create_secrets

    secret.unlink(missing_ok=True)
    create_secrets(secret)
    asyncio.run(_init_ledger(tmp))
    keys = sorted(secrets.token_bytes(32) for _ in range(suppressions))
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    since = int(time.time() * 1e6)
    conn.executemany(
        "INSERT INTO subjects (subject_key, address, restricted, created_at) VALUES (?, NULL, 0, ?)",
        ((k, since) for k in keys),
    )
    conn.executemany(
        "INSERT INTO suppressions (subject_key, scope, reason, since, source) VALUES (?, ?, ?, ?, 'bench')",
        ((k, "global" if i % 2 else "bench", "unsubscribed", since) for i, k in enumerate(keys)),
    )
    conn.execute("COMMIT")
    conn.close()
    tmp.rename(db)
    print(f"built ledger with {suppressions:,} suppressions in {time.perf_counter() - started:.1f}s -> {db}")
    return db, secret


async def _init_ledger(path: Path) -> None:
    """Schema, secret and the bench client (trusted network, DKIM key) through the real code."""
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
            id="bench",
            name="Bench Ltd",
            domains=("bench.example",),
            postal_address="1 Bench Road",
            password_hash=hash_password(secrets.token_urlsafe(16)),
            dkim_selector="bench",
            dkim_private_key=pem.decode("ascii"),
            trusted_networks=("127.0.0.0/8",),
        )
        from datetime import UTC, datetime

        await store.add_client(client, datetime.now(UTC))
    finally:
        await store.close()


def smtp_source(port: int, messages: int, recipients: int, sessions: int, size: int) -> float:
    """Run smtp-source against 127.0.0.1:port; returns the wall time in seconds."""
    command = [
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
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "error" in done.stderr.lower():
        raise SystemExit(f"smtp-source failed against port {port}: {done.stderr.strip()[:500]}")
    return elapsed


def start(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start a server process, its output going to ``log``."""
    handle = log.open("wb")
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


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


def main(argv: list[str]) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench relay", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipients", type=int, action="append", help="per message (repeatable; default 1 and 10)"
    )
    parser.add_argument("--suppressions", type=int, default=1_000_000)
    parser.add_argument(
        "--messages", type=int, default=0, help="per run (default: 3000 / recipients, min 300)"
    )
    parser.add_argument("--sessions", type=int, default=20, help="concurrent smtp-source sessions")
    parser.add_argument("--size", type=int, default=5120, help="message size in bytes")
    parser.add_argument("--workers", type=int, default=1, help="gateway processes")
    args = parser.parse_args(argv)
    rcpt_counts = args.recipients or [1, 10]
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing (install Postfix)")

    db, secret = build_ledger(args.suppressions)
    work = Path(tempfile.mkdtemp(prefix="cg-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        shutil.copy(db, work / "ledger.db")
        sink_port, bare_port, gw_port = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
        as_root = ["-u", "postfix"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root
        procs.append(
            start([SMTP_SINK, *as_root, f"127.0.0.1:{sink_port}", "1024"], env, work, work / "sink.log")
        )
        wait_port(sink_port)
        procs.append(
            start(
                [sys.executable, "-m", "bench.passthrough", str(bare_port), str(sink_port), "20"],
                env | {"PYTHONPATH": str(ROOT)},
                ROOT,
                work / "bare.log",
            )
        )
        gw_env = env | {
            "CONSENTGATE_DATABASE_URL": f"sqlite:///{work / 'ledger.db'}",
            "CONSENTGATE_SECRET_FILE": str(secret),
            "CONSENTGATE_SMTP__LISTEN": f"127.0.0.1:{gw_port}",
            "CONSENTGATE_SMTP__INBOUND_LISTEN": f"127.0.0.1:{free_port()}",
            "CONSENTGATE_HTTP__LISTEN": f"127.0.0.1:{free_port()}",
            "CONSENTGATE_UPSTREAM__URL": f"smtp://127.0.0.1:{sink_port}",
            "CONSENTGATE_UPSTREAM__POOL_SIZE": "20",
            "CONSENTGATE_WORKERS": str(args.workers),
        }
        subprocess.run([EXE, "db", "migrate"], env=gw_env, cwd=work, check=True, capture_output=True)
        procs.append(start([EXE, "serve"], gw_env, work, work / "gateway.log"))
        wait_port(bare_port)
        wait_port(gw_port)

        results: list[tuple[Result, Result]] = []
        for rcpts in rcpt_counts:
            messages = args.messages or max(300, 3000 // rcpts)
            pair = []
            for name, port in (("bare", bare_port), ("gateway", gw_port)):
                smtp_source(port, 50, rcpts, args.sessions, args.size)  # warm-up: pools, caches
                seconds = smtp_source(port, messages, rcpts, args.sessions, args.size)
                pair.append(Result(name, rcpts, messages, seconds))
            results.append((pair[0], pair[1]))
    finally:
        for proc in reversed(procs):
            stop(proc)
        logs = {p.name: p.read_text(errors="replace")[-2000:] for p in work.glob("*.log")}
        shutil.rmtree(work, ignore_errors=True)
    for name, text in logs.items():
        if "Traceback" in text or "ERROR" in text:
            print(f"--- {name} (tail) ---\n{text}", file=sys.stderr)

    print(f"\nconsentgate relay benchmark — {time.strftime('%Y-%m-%d %H:%M')} — {machine()}")
    print(
        f"ledger: {args.suppressions:,} suppressions (SQLite); smtp-source -s {args.sessions} -l {args.size} -d; "
        f"gateway workers: {args.workers}; DKIM RSA-2048"
    )
    print(f"{'rcpt/msg':>8} {'setup':>8} {'messages':>8} {'seconds':>8} {'msg/s':>9} {'copies/s':>9}")
    for bare, gateway in results:
        for r in (bare, gateway):
            print(
                f"{r.recipients:>8} {r.name:>8} {r.messages:>8} {r.seconds:>8.2f} "
                f"{r.msg_per_s:>9.1f} {r.copies_per_s:>9.1f}"
            )
        print(f"{'':>8} {'ratio':>8} gateway/bare = {gateway.msg_per_s / bare.msg_per_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
