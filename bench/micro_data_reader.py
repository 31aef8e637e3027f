"""Micro-benchmark: CPU per received message, aiosmtpd's per-line DATA reader vs the chunked one.

Run: .venv/bin/python bench/micro_data_reader.py [--messages N] [--rounds R]

Two aiosmtpd servers in this process on port 0, identical but for ``smtp_DATA``: stock aiosmtpd,
and the gateway's (``GatewaySMTP.smtp_DATA``, which reads with ``smtp_gateway.data_reader``).
One client session per server sends the same 5 KB HTML+text message (dot lines included)
``N`` times, without PIPELINING (it waits for each reply, as a mailer does), in alternating
rounds on uvloop. Reported: CPU microseconds per message of the whole process (client and
server; the client's share is the same for both) and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosmtpd.smtp import SMTP

from smtp_gateway.server import new_event_loop
from smtp_gateway.submission import GatewaySMTP

LINE = b"<p>Spring sale: everything must go, see https://shop.example/sale?utm=mail today.</p>\r\n"
MESSAGE = (
    b"From: Shop <news@shop.example>\r\nTo: you@example.org\r\nSubject: Sale\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"Everything must go.\r\n..\r\n" * 40 + b"--b\r\n"
    b"Content-Type: text/html\r\n\r\n" + LINE * 40 + b"--b--\r\n"
)


class Sink:
    """Accepts every message."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Keep nothing."""
        return "250 OK"


class Chunked(SMTP):
    """Stock aiosmtpd with the gateway's DATA command."""

    smtp_DATA = GatewaySMTP.smtp_DATA


async def session(port: int, messages: int) -> None:
    """One client session sending ``messages`` copies of MESSAGE."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while (line := await reader.readline())[3:4] == b"-":
            pass
        return line

    await reply()
    writer.write(b"EHLO client.test\r\n")
    await reply()
    for _ in range(messages):
        for command in (b"MAIL FROM:<a@shop.example>\r\n", b"RCPT TO:<b@example.org>\r\n", b"DATA\r\n"):
            writer.write(command)
            await reply()
        writer.write(MESSAGE + b".\r\n")
        assert (await reply()).startswith(b"250")
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


async def main_async(messages: int, rounds: int) -> None:
    """Alternate the two servers and print medians."""
    loop = asyncio.get_running_loop()
    ports = {}
    for name, cls in (("aiosmtpd per line", SMTP), ("chunked", Chunked)):
        server = await loop.create_server(lambda c=cls: c(Sink(), decode_data=False), "127.0.0.1", 0)
        ports[name] = server.sockets[0].getsockname()[1]
    cpu: dict[str, list[float]] = {name: [] for name in ports}
    for port in ports.values():
        await session(port, 100)  # warm-up
    for _ in range(rounds):
        for name, port in ports.items():
            started = time.process_time()
            await session(port, messages)
            cpu[name].append((time.process_time() - started) / messages * 1e6)
    print(f"{messages} messages of {len(MESSAGE)} bytes x {rounds} rounds; process CPU per message (median)")
    base = statistics.median(cpu["aiosmtpd per line"])
    for name, values in cpu.items():
        print(
            f"{name:<18} {statistics.median(values):7.0f} µs   {base - statistics.median(values):+6.0f} µs vs per line"
        )


def main(argv: list[str]) -> int:
    """Parse options and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main_async(args.messages, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
