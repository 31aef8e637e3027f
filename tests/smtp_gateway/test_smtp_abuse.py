"""SMTP command fuzzing over real sockets: abusive clients never stop the gateway serving others."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import smtplib
import socket
import time

from submission_support import MESSAGE, PASSWORD, add_client, gateway, make_service, sink

from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from smtp_gateway.auth_throttle import ThrottleConfig

AUTH = base64.b64encode(f"\0acme\0{PASSWORD}".encode()).decode()


def _talk(port: int, payload: bytes, *, read_for: float = 1.0, chunk_delay: float = 0.0) -> bytes:
    """Connect, send ``payload`` (optionally slowly), collect replies until quiet or closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)
        try:
            if chunk_delay:
                for i in range(0, len(payload), 64):
                    sock.sendall(payload[i : i + 64])
                    time.sleep(chunk_delay)
            else:
                sock.sendall(payload)
        except OSError:
            pass  # the server hung up on us: fine
        sock.settimeout(read_for)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, OSError):
            pass
        return answer


def _abusers(port: int, stop_at: float) -> dict[str, bytes]:
    """Each kind of abuse once; returns what the server answered to each."""
    rng = random.Random(5)
    seen: dict[str, bytes] = {}
    seen["long_line"] = _talk(port, b"EHLO " + b"x" * 200_000 + b"\r\nNOOP\r\n")
    seen["bare_lf"] = _talk(port, b"EHLO a\nNOOP\nMAIL FROM:<news@acme.example>\nQUIT\n")
    seen["nul"] = _talk(port, b"EHLO a\x00b\r\nMAIL FROM:<news\x00@acme.example>\r\nNOOP\r\n")
    seen["garbage"] = _talk(port, rng.randbytes(20_000))
    seen["pipelined_noops"] = _talk(port, b"EHLO a\r\n" + b"NOOP\r\n" * 20_000, read_for=2.0)
    seen["unknown_verbs"] = _talk(port, b"".join(b"X%d\r\n" % i for i in range(500)))
    rcpts = b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(10_000))
    seen["ten_thousand_rcpts"] = _talk(
        port,
        b"EHLO a\r\nAUTH PLAIN "
        + AUTH.encode()
        + b"\r\nMAIL FROM:<news@acme.example>\r\n"
        + rcpts
        + b"RSET\r\n",
        read_for=3.0,
    )
    # SMTP smuggling (CVE-2023-51766 family): an end-of-data lookalike hiding a second transaction.
    smuggled = (
        b"EHLO a\r\nAUTH PLAIN " + AUTH.encode() + b"\r\nMAIL FROM:<news@acme.example>\r\n"
        b"RCPT TO:<reader@example.org>\r\nDATA\r\n"
        + MESSAGE
        + b"\n.\r\nMAIL FROM:<news@acme.example>\r\nRCPT TO:<smuggled@victim.example>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nx\r\n.\r\n"
        b"\r.\r\nRCPT TO:<smuggled2@victim.example>\r\n"
        b"\r\n.\r\nQUIT\r\n"
    )
    seen["smuggling"] = _talk(port, smuggled, read_for=2.0)
    return seen


def _slowloris(port: int, count: int, hold: float) -> int:
    """Open ``count`` connections that trickle one byte now and then; how many the server still held."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(sock)
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        for sock in socks:
            with contextlib.suppress(OSError):  # already cut off by the server
                sock.send(b"E")
        time.sleep(0.2)
    alive = 0
    for sock in socks:
        try:
            sock.send(b"\r\n")
            alive += 1
        except OSError:
            pass
        sock.close()
    return alive


def _well_behaved(port: int, stop_at: float) -> list[float]:
    """A mailer sending one message after another while the abuse goes on; each transaction's duration."""
    durations = []
    n = 0
    while time.monotonic() < stop_at:
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.login("acme", PASSWORD)
            assert client.sendmail("news@acme.example", [f"good{n}@example.org"], MESSAGE) == {}
        durations.append(time.monotonic() - started)
        n += 1
        time.sleep(0.05)
    return durations


async def test_abuse_does_not_stop_service_to_others(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """Long lines, bare LF, NUL, garbage, pipelining floods, 10,000 RCPTs, smuggling and slowloris: a mailer still sends."""
    service = make_service(store, test_secrets)
    await add_client(store)
    throttle = ThrottleConfig(failure_delay_seconds=0.0)
    async with (
        sink() as (upstream, port),
        gateway(service, port, session_timeout_seconds=2.0, auth_throttle=throttle) as gw,
    ):
        stop_at = time.monotonic() + 6.0
        seen, alive, durations = await asyncio.gather(
            asyncio.to_thread(_abusers, gw.port, stop_at),
            asyncio.to_thread(_slowloris, gw.port, 60, 4.0),
            asyncio.to_thread(_well_behaved, gw.port, stop_at),
        )
        after = await asyncio.to_thread(_well_behaved, gw.port, time.monotonic() + 0.1)
    good = [r for r in upstream.received if r.rcpt_tos[0].startswith("good")]
    assert len(durations) >= 5 and len(good) == len(durations) + len(after)
    assert max(durations) < 5.0, durations
    assert b"500 Command line too long" in seen["long_line"], seen["long_line"][:300]
    assert b"\r\n250 " in seen["pipelined_noops"]
    replies = seen["ten_thousand_rcpts"].split(b"\r\n")
    assert sum(r.startswith(b"250 2.1.5") for r in replies) == 1000
    assert sum(r.startswith(b"452 4.5.3") for r in replies) >= 1000
    # Smuggling: only the genuine message went out, to the genuine recipient; nothing to the victims.
    assert not [r for r in upstream.received if any("victim" in t for t in r.rcpt_tos)]
    assert not any(b"Subject: smuggled" in r.content.split(b"\r\n\r\n")[0] for r in upstream.received)
    assert alive == 0  # slowloris connections were cut by the session timeout (2 s)
