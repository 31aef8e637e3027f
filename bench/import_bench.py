"""Benchmark: `consentgate unsubscribe import` of a 1,000,000-row CSV with 1% bad rows, on SQLite.

One command: ``.venv/bin/python bench/import_bench.py [--rows N]``. It prints rows/s of

* the real command (a subprocess, end to end: parse, validate, key and hash in worker processes,
  sort, write the suppressions and one hash-chained ledger event per 50k-row batch whose digest
  covers the batch's rows), first run and re-run;
* the baseline measured in the same run: stdlib ``sqlite3.executemany`` of the same keyed rows,
  pre-sorted, into one WITHOUT ROWID table in one transaction (DESIGN §7's ~118k-424k rows/s);
* the per-address cost of email-validator versus the import's fast path.

It also checks what the issue asks to show: the rejects file lists exactly the bad rows with
their line numbers, and the second run imports nothing new.
"""

from __future__ import annotations

import argparse
import csv
import hmac
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).with_name("consentgate"))
CACHE = ROOT / "bench" / ".cache"


def make_file(path: Path, rows: int) -> set[int]:
    """Write ``rows`` data rows (plus a header); every 100th is bad. Returns the bad line numbers."""
    bad: set[int] = set()
    with path.open("w", encoding="utf-8") as out:
        out.write("email,reason,date\n")
        for i in range(rows):
            line = i + 2
            if i % 100 == 37:
                bad.add(line)
                kind = (i // 100) % 3
                if kind == 0:
                    out.write(f"user{i}@@example.com,,\n")
                elif kind == 1:
                    out.write(f"user{i}@example.com,,2026-13-45\n")
                else:
                    out.write(f"user{i}@example.com,unsubscribed\n")
            elif i % 10 == 0:
                out.write(f"First.Last{i}@Mail{i % 97}.Example.ORG,unsubscribed,2025-06-{1 + i % 28:02d}\n")
            else:
                out.write(f"user{i}+news@example{i % 1000}.com,,\n")
    return bad


def cg(home: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run consentgate in ``home``; returns (seconds, result)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    start = time.perf_counter()
    result = subprocess.run([EXE, *args], cwd=home, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, result


def baseline(path: Path, db_path: Path) -> tuple[int, float]:
    """Raw stdlib sqlite3: key the good rows, sort, one executemany into one table; rows/s."""
    pepper = os.urandom(32)
    rows = []
    with path.open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            address = line.split(",", 1)[0].lower()
            if "@@" in address:
                continue
            rows.append((hmac.digest(pepper, address.encode(), "sha256"), address))
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE s (k BLOB PRIMARY KEY, address TEXT) WITHOUT ROWID")
    start = time.perf_counter()
    rows.sort()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO s VALUES (?, ?) ON CONFLICT DO NOTHING", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows), elapsed


def validator_costs(samples: int = 20_000) -> tuple[float, float]:
    """µs per address: email-validator (ledger.identity.normalise) and the import fast path."""
    from ledger.identity import normalise
    from ledger.importing import normalise_address

    addresses = [f"First.Last{i}@Mail{i % 97}.Example.ORG" for i in range(samples)]
    start = time.perf_counter()
    for a in addresses:
        normalise(a)
    slow = (time.perf_counter() - start) / samples * 1e6
    start = time.perf_counter()
    for a in addresses:
        normalise_address(a)
    fast = (time.perf_counter() - start) / samples * 1e6
    return slow, fast


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--no-verify", action="store_true", help="Skip `ledger verify` (recomputes every batch digest)."
    )
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    data = CACHE / f"unsubscribes_{args.rows}.csv"
    bad = make_file(data, args.rows)
    print(f"file: {data} ({args.rows:,} rows, {len(bad):,} bad, {data.stat().st_size / 1e6:.1f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        assert cg(home, "init")[1].returncode == 0
        assert cg(home, "client", "add", "acme", "--domain", "acme.example")[1].returncode == 0
        rejects = home / "rejects.csv"
        first_s, first = cg(
            home, "unsubscribe", "import", str(data), "--client", "acme", "--rejects", str(rejects)
        )
        print(f"first run : {first.stdout.strip()}")
        with rejects.open(encoding="utf-8") as handle:
            listed = {int(row["line"]) for row in csv.DictReader(handle)}
        assert first.returncode == 1, first.stderr
        assert listed == bad, f"rejects file differs: {len(listed ^ bad)} lines"
        second_s, second = cg(home, "unsubscribe", "import", str(data), "--client", "acme", "-q")
        print(f"second run: {second.stdout.strip()}")
        assert second.stdout.startswith("imported 0,"), second.stdout
        if not args.no_verify:
            verify_s, verify = cg(home, "ledger", "verify")
            assert verify.returncode == 0, verify.stdout
            print(f"ledger verify: {verify.stdout.strip()} in {verify_s:.1f} s")
        db_size = (home / "data" / "consentgate.db").stat().st_size
        base_rows, base_s = baseline(data, home / "baseline.db")
    slow_us, fast_us = validator_costs()
    rate = args.rows / first_s
    print()
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    print(f"unsubscribe import, first run : {first_s:6.2f} s  {rate:10,.0f} rows/s  (whole command)")
    print(f"unsubscribe import, re-run    : {second_s:6.2f} s  {args.rows / second_s:10,.0f} rows/s")
    print(f"baseline sqlite3.executemany  : {base_s:6.2f} s  {base_rows / base_s:10,.0f} rows/s  (1 table)")
    print(f"ratio import / baseline       : {rate / (base_rows / base_s):.2f}")
    print(f"database after import         : {db_size / 1e6:.0f} MB")
    print(
        f"email-validator per address   : {slow_us:.1f} µs; fast path {fast_us:.1f} µs ({slow_us / fast_us:.0f}×)"
    )
    print(f"rejects file lists exactly the {len(bad):,} bad lines: yes")


if __name__ == "__main__":
    main()
