"""Micro-benchmark: CPU per relayed copy, aiosmtplib (one command per round trip) vs the pipelining client.

Run: .venv/bin/python bench/micro_upstream.py [--copies N] [--rounds R] [--concurrency C]

Both clients relay the same 5 KB copies to Postfix's ``smtp-sink`` (which advertises PIPELINING)
over a pool of ``C`` connections, in alternating rounds in one process, on uvloop like the
gateway. Reported per client: copies/s (wall clock, sensitive to other load on the machine) and
CPU microseconds per copy of this process (``time.process_time``: what the client costs the
gateway's event loop, much less sensitive to other load). The sink runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib

from bench.relay import free_port, wait_port
from smtp_gateway.relay import Copy, SmtpRelay
from smtp_gateway.server import new_event_loop

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
BODY = b"Subject: sale\r\nFrom: a@shop.example\r\n\r\n" + (b"x" * 76 + b"\r\n") * 64


class AiosmtplibPool:
    """The relay as it was before: pooled aiosmtplib connections, ``sendmail`` per copy."""

    def __init__(self, port: int, size: int) -> None:
        """Up to ``size`` connections to 127.0.0.1:``port``."""
        self.port = port
        self.slots = asyncio.Semaphore(size)
        self.idle: list[aiosmtplib.SMTP] = []

    async def send(self, copy: Copy) -> None:
        """One copy on a pooled connection."""
        async with self.slots:
            conn = self.idle.pop() if self.idle else None
            if conn is None:
                conn = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False)
                await conn.connect()
            await conn.sendmail(copy.mail_from, [copy.rcpt], copy.message)
            self.idle.append(conn)

    async def close(self) -> None:
        """QUIT everything."""
        for conn in self.idle:
            await conn.quit()


async def run(client: AiosmtplibPool | SmtpRelay, copies: int, concurrency: int) -> tuple[float, float]:
    """Relay ``copies`` with ``concurrency`` senders; (copies/s, CPU µs per copy)."""
    queue = list(range(copies))

    async def sender() -> None:
        while queue:
            n = queue.pop()
            result = await client.send(Copy("bounces+t@b.example", f"r{n}@example.org", BODY))
            assert result is None or result.outcome == "delivered", result

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return copies / wall, cpu / copies * 1e6


async def main_async(port: int, copies: int, rounds: int, concurrency: int) -> None:
    """Alternate the two clients for ``rounds`` rounds and print medians."""
    old, new = (
        AiosmtplibPool(port, concurrency),
        SmtpRelay(host="127.0.0.1", port=port, pool_size=concurrency),
    )
    await run(old, 200, concurrency)  # warm-up: connections, caches
    await run(new, 200, concurrency)
    figures: dict[str, list[tuple[float, float]]] = {"aiosmtplib": [], "pipelining": []}
    for _ in range(rounds):
        figures["aiosmtplib"].append(await run(old, copies, concurrency))
        figures["pipelining"].append(await run(new, copies, concurrency))
    await old.close()
    await new.close()
    base_rate = statistics.median(r for r, _ in figures["aiosmtplib"])
    base_cpu = statistics.median(c for _, c in figures["aiosmtplib"])
    print(f"{copies} copies x {rounds} rounds, {concurrency} connections, 5 KB, smtp-sink; medians")
    print(f"{'client':<12} {'copies/s':>9} {'CPU µs/copy':>12} {'vs aiosmtplib':>14}")
    for name, runs in figures.items():
        rate, cpu = statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)
        print(
            f"{name:<12} {rate:9.0f} {cpu:12.0f} {rate / base_rate:8.2f}× rate {base_cpu / cpu:5.2f}× less CPU"
        )


def main(argv: list[str]) -> int:
    """Start smtp-sink, run, stop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args(argv)
    port = free_port()
    as_root = ["-u", "postfix"] if os.geteuid() == 0 else []
    sink = subprocess.Popen([SMTP_SINK, *as_root, f"127.0.0.1:{port}", "256"])
    try:
        wait_port(port)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(main_async(port, args.copies, args.rounds, args.concurrency))
    finally:
        sink.terminate()
        sink.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
