"""Benchmark: the admin API's list check — 1,000 addresses in one call against a 1,000,000-entry ledger.

``python -m bench api-check [--calls 200] [--entries 1000000] [--postgres]``

A real ``consentgate serve`` on a copy of a cached ledger (``--entries`` rows: 70 % suppressions,
half global and half the client's, 10 % digests of hashed lists, 20 % consented subjects), then ``POST
/api/v1/clients/bench/check`` with the same 1,000 addresses ``--calls`` times over one keep-alive
connection (a client key, the CRM's case). The 1,000 addresses mix hits and misses: a quarter
unsubscribed from the client, a quarter globally opted out, a quarter consented, a quarter
unknown, and a handful on a hashed (sha256) list.

Baselines measured in the same run: ``GET /healthz`` on the same connection (the HTTP floor: one
request, one ``SELECT 1``), and in process on the same database, the same 1,000 decisions through
:meth:`LedgerService.check_many` (the batched read without HTTP and JSON) and through
:meth:`LedgerService.check` one address at a time (what a caller without the list check would do).

Target (issue 7): < 100 ms per 1,000-address call.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.fixture_cache import build_path, bulk_connection, cached, finish
from bench.relay import (
    CLIENT_ID,
    EXE,
    _init_ledger,
    _sorted_keys,
    free_port,
    machine,
    start,
    stop_process,
)

FIXTURE_VERSION = 2
ADDRESSES = 1000
TARGET_MS = 100.0
# Shares of the fixture's entries: suppressions, digests of hashed lists (the rest: consented subjects).
SUPPRESSION_SHARE = 0.7
HASHED_SHARE = 0.1


def check_addresses() -> list[str]:
    """The 1,000 addresses every call asks about (what each is in the fixture: see ``_kind``)."""
    return [f"reader{i}@example.org" for i in range(ADDRESSES)]


def _kind(position: int) -> str:
    """What the fixture holds for the address at ``position``."""
    if position % 50 == 7:
        return "hashed"  # on a sha256 list imported for the client (no keyed hash known)
    return ("unsubscribed", "global", "consented", "unknown")[position % 4]


def build_fixture(entries: int) -> tuple[Path, Path, float]:
    """The cached ledger; (database, secret file, build seconds — 0 when it came from the cache)."""
    db = cached(f"api-check-v{FIXTURE_VERSION}-e{entries}")
    secret = db.with_suffix(".secret.json")
    if db.exists() and secret.exists():
        return db, secret, 0.0
    started = time.perf_counter()
    tmp = build_path(db)
    from ledger.identity import identify
    from ledger.secret_file import create_secrets, load_secrets

    secret.unlink(missing_ok=True)
    create_secrets(secret)
    pepper = load_secrets(secret).pepper
    asyncio.run(_init_ledger(tmp))
    suppressions = int(entries * SUPPRESSION_SHARE)
    hashed = int(entries * HASHED_SHARE)
    consented = entries - suppressions - hashed
    now = int(time.time() * 1e6)
    conn = bulk_connection(tmp, 256)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO suppressions (subject_key, scope, reason, since, source) VALUES (?, ?, ?, ?, 'bench')",
        (
            (key, "global" if i % 2 else CLIENT_ID, "global_optout" if i % 2 else "unsubscribed", now)
            for i, key in enumerate(_sorted_keys(suppressions, b"\x5a\xa5"))
        ),
    )
    conn.executemany(
        "INSERT INTO subjects (subject_key, address, restricted, created_at) VALUES (?, NULL, 0, ?)",
        ((k, now) for k in _sorted_keys(consented, b"\xc3\x3c")),
    )
    conn.executemany(
        "INSERT INTO relationships (client_id, subject_key, status, consent_at, changed_at) "
        "VALUES (?, ?, 'active', ?, ?)",
        ((CLIENT_ID, k, now, now) for k in _sorted_keys(consented, b"\xc3\x3c")),
    )
    conn.executemany(
        "INSERT INTO hashed_suppressions (digest, algo, scope, reason, since, source) "
        "VALUES (?, ?, ?, 'unsubscribed', ?, 'bench')",
        (
            (key[:16], "md5", CLIENT_ID, now) if i % 4 == 0 else (key, "sha256", CLIENT_ID, now)
            for i, key in enumerate(_sorted_keys(hashed, b"\x96\x69"))
        ),
    )
    # The asked-for addresses with their real keyed hashes (they replace nothing: extra rows).
    for position, address in enumerate(check_addresses()):
        kind, who = _kind(position), identify(pepper, address)
        if kind in ("unsubscribed", "global"):
            scope, reason = (
                (CLIENT_ID, "unsubscribed") if kind == "unsubscribed" else ("global", "global_optout")
            )
            conn.execute(
                "INSERT INTO suppressions (subject_key, scope, reason, since, source) VALUES (?, ?, ?, ?, 'bench')",
                (who.subject_key, scope, reason, now),
            )
        elif kind == "consented":
            conn.execute(
                "INSERT INTO subjects (subject_key, address, restricted, created_at) VALUES (?, ?, 0, ?)",
                (who.subject_key, who.address, now),
            )
            conn.execute(
                "INSERT INTO relationships (client_id, subject_key, status, consent_at, changed_at) "
                "VALUES (?, ?, 'active', ?, ?)",
                (CLIENT_ID, who.subject_key, now, now),
            )
        elif kind == "hashed":
            digest = hashlib.sha256(address.lower().encode()).digest()
            conn.execute(
                "INSERT INTO hashed_suppressions (digest, algo, scope, reason, since, source) "
                "VALUES (?, 'sha256', ?, 'unsubscribed', ?, 'bench')",
                (digest, CLIENT_ID, now),
            )
    conn.execute("COMMIT")
    finish(conn, tmp, db)
    return db, secret, time.perf_counter() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds of ``samples`` (seconds)."""
    ms = sorted(s * 1000 for s in samples)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "mean": statistics.fmean(ms)}


def timed_http(http: httpx.Client, calls: int, send: object) -> list[float]:
    """Latencies (seconds) of ``calls`` requests made by ``send()``."""
    assert callable(send)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        response = send()
        samples.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"{response.request.url}: {response.status_code} {response.text[:300]}")
    return samples


async def in_process(database_url: str, secret: Path, calls: int) -> tuple[list[float], list[float]]:
    """Seconds per 1,000 decisions: (check_many batched, check one by one), same database."""
    from datetime import UTC, datetime

    from ledger.secret_file import load_secrets
    from ledger.service import LedgerService
    from ledger.store import open_store

    store = await open_store(database_url)
    try:
        service = LedgerService(store, load_secrets(secret).pepper)
        client = await store.get_client(CLIENT_ID)
        addresses = check_addresses()
        now = datetime.now(UTC)
        await service.check_many(addresses, client, now)  # warm the page cache / pool
        batched = []
        cpu_started = time.process_time()
        for _ in range(calls):
            started = time.perf_counter()
            await service.check_many(addresses, client, now)
            batched.append(time.perf_counter() - started)
        print(
            f"in-process check_many CPU: {(time.process_time() - cpu_started) / calls * 1000:.1f} ms per call"
        )
        single = []
        for _ in range(max(3, calls // 20)):
            started = time.perf_counter()
            for address in addresses:
                await service.check(address, CLIENT_ID, now)
            single.append(time.perf_counter() - started)
        return batched, single
    finally:
        await store.close()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (from /proc: unaffected by other load)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_key(env: dict[str, str], cwd: Path) -> str:
    """A client key for the bench client, made by the CLI as an operator would."""
    done = subprocess.run(
        [EXE, "client", "api-key", "create", CLIENT_ID, "--label", "bench"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise SystemExit(f"api-key create failed: {done.stderr}")
    return next(line for line in done.stdout.splitlines() if line.startswith("cg_"))


def main(argv: list[str]) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench api-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="timed list checks (and /healthz calls)")
    parser.add_argument("--entries", type=int, default=1_000_000, help="ledger entries in the fixture")
    parser.add_argument(
        "--postgres", action="store_true", help="copy the fixture to PostgreSQL ($BENCH_PG_URL)"
    )
    args = parser.parse_args(argv)

    db, secret, build_seconds = build_fixture(args.entries)
    if build_seconds:
        print(f"built the fixture ({args.entries:,} entries) in {build_seconds:.1f}s -> {db}")
    work = Path(tempfile.mkdtemp(prefix="cg-bench-api-"))
    try:
        if args.postgres:
            from bench.pg_fixture import copy_to_postgres

            database_url = copy_to_postgres(db)  # dropped when the benchmark exits
        else:
            copy = work / "ledger.db"
            shutil.copyfile(db, copy)
            database_url = f"sqlite:///{copy}"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")} | {
            "CONSENTGATE_DATABASE_URL": database_url,
            "CONSENTGATE_SECRET_FILE": str(secret),
            "CONSENTGATE_SMTP__LISTEN": f"127.0.0.1:{free_port()}",
            "CONSENTGATE_SMTP__INBOUND_LISTEN": f"127.0.0.1:{free_port()}",
            "CONSENTGATE_HTTP__LISTEN": f"127.0.0.1:{port}",
            "CONSENTGATE_UPSTREAM__URL": f"maildir:{work / 'outbox'}",
            # The rate limit is not what is measured.
            "CONSENTGATE_HTTP__API__BURST": "100000",
            "CONSENTGATE_HTTP__API__RATE_PER_MINUTE": "6000000",
        }
        key = create_key(env, work)
        proc = start([EXE, "serve"], env, work, work / "serve.log")
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if http.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit((work / "serve.log").read_text()[-3000:])
                    time.sleep(0.1)
                body = {"addresses": check_addresses()}
                first = http.post(f"/api/v1/clients/{CLIENT_ID}/check", json=body)
                results = first.json()["results"]
                assert len(results) == ADDRESSES
                kinds = Counter(str(r["reason"]) for r in results)
                for _ in range(20):  # warm-up: connection, caches
                    http.post(f"/api/v1/clients/{CLIENT_ID}/check", json=body)
                    http.get("/healthz")
                load = os.getloadavg()[0]
                cpu_before = process_cpu_seconds(proc.pid)
                api = timed_http(
                    http, args.calls, lambda: http.post(f"/api/v1/clients/{CLIENT_ID}/check", json=body)
                )
                server_cpu_ms = (process_cpu_seconds(proc.pid) - cpu_before) / args.calls * 1000
                health = timed_http(http, args.calls, lambda: http.get("/healthz"))
        finally:
            stop_process(proc)
        batched, single = asyncio.run(in_process(database_url, secret, args.calls))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(f"api-check: {args.entries:,}-entry ledger on {backend}, {args.calls} calls, {machine()}")
    print(f"load average at start: {load:.2f}; reasons in one answer: {dict(sorted(kinds.items()))}")
    rows = [
        ("POST /clients/bench/check, 1,000 addresses", percentiles(api)),
        ("GET /healthz (HTTP floor)", percentiles(health)),
        ("in process: check_many(1,000)", percentiles(batched)),
        ("in process: check() x 1,000, one by one", percentiles(single)),
    ]
    print("| measured | p50 | p95 | p99 | mean |")
    print("|---|---:|---:|---:|---:|")
    for label, figures in rows:
        cells = " | ".join(f"{figures[k]:.2f} ms" for k in ("p50", "p95", "p99", "mean"))
        print(f"| {label} | {cells} |")
    api_p = percentiles(api)
    print(
        f"list check vs check_many in process: {api_p['p50'] / percentiles(batched)['p50']:.2f}x at p50; "
        f"vs one by one: {percentiles(single)['p50'] / api_p['p50']:.1f}x faster"
    )
    print(
        f"server CPU per list check: {server_cpu_ms:.1f} ms (user+system of the serve process; "
        "what the call costs without the other load on the machine)"
    )
    met = api_p["p99"] < TARGET_MS
    print(f"target < {TARGET_MS:.0f} ms per call: {'met' if met else 'MISSED'} (p99 {api_p['p99']:.1f} ms)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
