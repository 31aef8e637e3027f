"""The bench's own SMTP load generator: a mailer that times every RCPT reply.

Sends a ~5 KB HTML+text campaign message (``X-Campaign-ID`` header) over ``sessions`` kept-open
connections, with AUTH PLAIN when credentials are given and the server offers it, until told to
stop. Written on raw asyncio streams (no SMTP library) so the timing is the server's reply time
plus one loopback round trip, not a client library's overhead.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field

HTML_PART = (
    "<html><body><h1>Spring sale</h1>"
    + "".join(
        f'<p>Item {i}: a fine thing, now cheaper. <a href="https://shop.bench.example/item/{i}">See it</a></p>'
        for i in range(24)
    )
    + "</body></html>"
)
TEXT_PART = "Spring sale\n\n" + "".join(
    f"Item {i}: a fine thing, now cheaper. https://shop.bench.example/item/{i}\n" for i in range(24)
)


def campaign_message(sender: str) -> bytes:
    """The ~5 KB multipart/alternative message the generator sends (CRLF, dot-safe)."""
    head = (
        f"From: Bench News <{sender}>\r\n"
        "To: subscriber@example.org\r\n"
        "Subject: Spring sale\r\n"
        "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
        "Message-ID: <spring@bench.example>\r\n"
        "X-Campaign-ID: spring-2026\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
    )
    body = (
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + TEXT_PART.replace("\n", "\r\n")
        + "\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        + HTML_PART.replace("><p>", ">\r\n<p>")
        + "\r\n--b1--\r\n"
    )
    return (head + body).encode("ascii")


@dataclass
class LoadStats:
    """What the generator did: messages accepted and every RCPT reply time (seconds)."""

    messages: int = 0
    rcpt_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Read one (possibly multi-line) SMTP reply."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        lines.append(line.decode("ascii", "replace").rstrip())
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), "\n".join(lines)


async def _expect(reader: asyncio.StreamReader, code: int, what: str) -> str:
    """Read a reply and insist on ``code``."""
    got, text = await _reply(reader)
    if got != code:
        raise RuntimeError(f"{what}: expected {code}, got {text[:200]}")
    return text


async def _session(
    port: int,
    sender: str,
    recipients: list[list[str]],
    message: bytes,
    credentials: tuple[str, str] | None,
    stop: asyncio.Event,
    stats: LoadStats,
    offset: int,
) -> None:
    """One mailer connection sending messages until ``stop`` is set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _expect(reader, 220, "greeting")
        writer.write(b"EHLO loadgen.bench.example\r\n")
        ehlo = await _expect(reader, 250, "EHLO")
        if credentials is not None and "AUTH" in ehlo.upper():
            token = base64.b64encode(f"\0{credentials[0]}\0{credentials[1]}".encode()).decode()
            writer.write(f"AUTH PLAIN {token}\r\n".encode())
            await _expect(reader, 235, "AUTH")
        payload = message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
        n = offset
        while not stop.is_set():
            rcpts = recipients[n % len(recipients)]
            n += 1
            writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
            await _expect(reader, 250, "MAIL")
            for rcpt in rcpts:
                started = time.perf_counter()
                writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
                await _expect(reader, 250, f"RCPT {rcpt}")
                stats.rcpt_latencies.append(time.perf_counter() - started)
            writer.write(b"DATA\r\n")
            await _expect(reader, 354, "DATA")
            writer.write(payload)
            await _expect(reader, 250, "end of DATA")
            stats.messages += 1
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    except (OSError, RuntimeError, ValueError) as exc:
        stats.errors.append(str(exc))
    finally:
        writer.close()


async def run(
    port: int,
    *,
    sessions: int,
    sender: str,
    recipients: list[list[str]],
    credentials: tuple[str, str] | None,
    stop: asyncio.Event,
) -> LoadStats:
    """Run ``sessions`` mailers against 127.0.0.1:``port`` until ``stop``; returns their stats."""
    stats = LoadStats()
    message = campaign_message(sender)
    await asyncio.gather(
        *(
            _session(port, sender, recipients, message, credentials, stop, stats, i * 7919)
            for i in range(sessions)
        )
    )
    return stats


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` by nearest rank (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
