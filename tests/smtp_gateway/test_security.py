"""Security: no open relay on either listener, AUTH brute force locked out, no cross-tenant sending,
injection lands as data, secrets private and never logged. Real sockets, real ledger."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import smtplib
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NOW
from inbound_support import INBOUND_DOMAIN, listening, make_inbound
from submission_support import MESSAGE, PASSWORD, add_client, free_port, gateway, make_service, sink

from ledger.errors import InvalidToken
from ledger.importing import ImportFormat, parse_suppressions
from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from ledger.store.imports import SuppressionImporter
from smtp_gateway import submission
from smtp_gateway.auth_throttle import AuthThrottle, ThrottleConfig
from smtp_gateway.server import wait_for_port

TARGET = "victim@target.example"
# Every way of smuggling a foreign destination past a naive address check.
TRICKS = [
    TARGET,
    "victim%target.example@acme.example",
    "<@acme.example:victim@target.example>",
    '"victim@target.example"@acme.example',
    "victim@target.example@acme.example",
    "victim@bücher.example",
    "victim@xn--bcher-kva.example",
    "victim@[192.0.2.1]",
    "acme.example!victim@target.example",
]
NO_DELAY = ThrottleConfig(failure_delay_seconds=0.0)


def _raw_session(port: int, lines: list[bytes], timeout: float = 10.0) -> bytes:
    """Send ``lines`` pipelined in one write; everything the server answered until it goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.recv(1024)
        sock.sendall(b"".join(lines))
        sock.settimeout(1.0)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
        return answer


async def test_submission_is_not_an_open_relay(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """Without AUTH (not a trusted network) every trick is refused before RCPT; pipelined DATA relays nothing."""
    service = make_service(store, test_secrets)
    await add_client(store)

    def scenario(port: int) -> tuple[list[tuple[int, bytes]], bytes]:
        seen = []
        for trick in TRICKS:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("attacker.test")
                client.command_encoding = "utf-8"  # IDN tricks go out raw (as with SMTPUTF8)
                seen.append(client.mail("news@acme.example"))
                seen.append(client.rcpt(trick))
        body = MESSAGE.replace(b"\r\n.", b"\r\n..")
        pipelined = [b"EHLO attacker.test\r\n", b"MAIL FROM:<news@acme.example>\r\n"]
        pipelined += [f"RCPT TO:<{t.strip('<>')}>\r\n".encode() for t in TRICKS]
        pipelined += [b"DATA\r\n", body, b".\r\n", b"QUIT\r\n"]
        return seen, _raw_session(port, pipelined)

    async with sink() as (upstream, port), gateway(service, port) as gw:
        seen, raw = await asyncio.to_thread(scenario, gw.port)
    assert all(code == 530 for code, _ in seen[0::2]), seen
    assert all(code == 503 for code, _ in seen[1::2]), seen
    assert b"\r\n250 2.0.0 OK: accepted" not in raw and b"\r\n354" not in raw
    assert upstream.received == []


async def test_inbound_is_not_an_open_relay(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """The inbound MX refuses every foreign or disguised destination, genuine token or not, and relays nothing."""
    inbound = await make_inbound(store, test_secrets)
    token = await inbound.token("acme", "alice@example.org")
    tricks = [
        TARGET,
        f"victim%target.example@{INBOUND_DOMAIN}",
        f"<@{INBOUND_DOMAIN}:victim@target.example>",
        f'"victim@target.example"@{INBOUND_DOMAIN}',
        f"bounces+{token}%target.example@{INBOUND_DOMAIN}",
        f"bounces+{token}@target.example",
        f"<@{INBOUND_DOMAIN}:bounces+{token}@target.example>",
        f'"bounces+{token}"@target.example',
        f"bounces+{token}@{INBOUND_DOMAIN}.target.example",
        f"bounces+{token}@bücher.example",
        f"unsubscribe+{token}@xn--bcher-kva.example",
        f"bounces+{token}@[192.0.2.1]",
    ]

    def scenario(port: int) -> list[tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("mx.sender.example")
            client.command_encoding = "utf-8"
            assert client.mail("")[0] == 250
            return [client.rcpt(t) for t in tricks]

    async with listening(inbound) as listener:
        replies = await asyncio.to_thread(scenario, listener.port)
    refused = [(t, code) for t, (code, _) in zip(tricks, replies, strict=True) if not 500 <= code < 600]
    assert refused == []


async def test_auth_brute_force_locked_out_and_logged(
    store: SqlLedgerStore, test_secrets: Secrets, caplog: pytest.LogCaptureFixture
) -> None:
    """After the free failures AUTH answers 454 4.7.0 — even to the right password — and each failure is logged."""
    service = make_service(store, test_secrets)
    await add_client(store)
    config = ThrottleConfig(free_failures_per_ip=3, base_lockout_seconds=60, failure_delay_seconds=0.0)

    def scenario(port: int) -> list[int]:
        codes = []
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("guesser.test")
            for guess in ["a", "b", "c", "d", PASSWORD]:
                code, _ = client.docmd("AUTH", "PLAIN " + _plain("acme", guess))
                codes.append(code)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # a new connection does not reset it
            client.ehlo("guesser.test")
            codes.append(client.docmd("AUTH", "PLAIN " + _plain("acme", PASSWORD))[0])
        return codes

    caplog.set_level(logging.WARNING, logger="smtp_gateway.submission")
    async with sink() as (_upstream, port), gateway(service, port, auth_throttle=config) as gw:
        codes = await asyncio.to_thread(scenario, gw.port)
    assert codes == [535, 535, 535, 535, 454, 454]
    failures = [r.getMessage() for r in caplog.records if "AUTH failed from 127.0.0.1" in r.getMessage()]
    assert len(failures) == 4 and "locked out for 60s" in failures[-1]
    assert any("locked out" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    assert not any(PASSWORD in r.getMessage() for r in caplog.records)


def _plain(login: str, password: str) -> str:
    """The AUTH PLAIN initial response."""
    import base64

    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def test_throttle_per_login_across_addresses_doubles_and_forgives() -> None:
    """Failures spread over many addresses still lock the login; lockouts double, cap, and a success clears them."""
    now = [1000.0]
    throttle = AuthThrottle(
        ThrottleConfig(
            free_failures_per_ip=5, free_failures_per_login=10, base_lockout_seconds=2, max_lockout_seconds=16
        ),
        clock=lambda: now[0],
    )
    for n in range(10):
        throttle.failed(f"198.51.100.{n}", "acme")
    assert throttle.locked_for("203.0.113.9", "acme") == 0  # ten free failures for the login
    lockouts = [throttle.failed(f"198.51.100.{n}", "acme")[2] for n in range(10, 15)]
    assert lockouts == [2, 4, 8, 16, 16]
    assert throttle.locked_for("203.0.113.9", "acme") == 16  # any address: the login is locked
    assert throttle.locked_for("203.0.113.9", "beta") == 0  # other logins are not
    now[0] += 17
    throttle.succeeded("203.0.113.9", "acme")
    assert throttle.locked_for("198.51.100.1", "acme") == 0


async def test_password_check_runs_off_the_event_loop(
    store: SqlLedgerStore, test_secrets: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a slow password check runs, another client is answered at once (scrypt is in a thread)."""
    service = make_service(store, test_secrets)
    await add_client(store)

    def slow_verify(password: str, stored: str) -> bool:
        time.sleep(1.0)
        return False

    monkeypatch.setattr(submission, "verify_password", slow_verify)

    def guess(port: int) -> int:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("guesser.test")
            return int(client.docmd("AUTH", "PLAIN " + _plain("acme", "wrong"))[0])

    def other(port: int) -> float:
        time.sleep(0.3)  # the guess is now inside its password check
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("mailer.test")
            client.noop()
        return time.monotonic() - started

    async with sink() as (_upstream, port), gateway(service, port, auth_throttle=NO_DELAY) as gw:
        code, elapsed = await asyncio.gather(
            asyncio.to_thread(guess, gw.port), asyncio.to_thread(other, gw.port)
        )
    assert code == 535
    assert elapsed < 0.5


async def test_client_cannot_send_as_another_clients_domain(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """acme cannot use beta's domain in MAIL FROM (any spelling) nor in the From header; its own domain works."""
    service = make_service(store, test_secrets)
    await add_client(store)
    await add_client(store, "beta", domains=("beta.example",), name="Beta")

    def with_from(author: bytes) -> bytes:
        return MESSAGE.replace(b"From: Acme News <news@acme.example>", b"From: " + author)

    def scenario(port: int) -> dict[str, object]:
        seen: dict[str, object] = {}
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.login("acme", PASSWORD)
            for name, sender in [
                ("plain", "ceo@beta.example"),
                ("sub", "ceo@mail.beta.example"),
                ("route", "<@acme.example:ceo@beta.example>"),
                ("double_at", "ceo@beta.example@acme.example"),
                ("upper", "CEO@BETA.EXAMPLE"),
            ]:
                seen[name] = client.mail(sender)[0]
                client.rset()
            for name, author in [
                ("header", b"CEO <ceo@beta.example>"),
                ("header_sub", b"ceo@news.BETA.example"),
                ("header_encoded", b"=?utf-8?q?Acme?= <ceo@beta.example>"),
            ]:
                client.mail("news@acme.example")
                client.rcpt("reader@example.org")
                seen[name] = client.data(with_from(author))[0]
            seen["own"] = client.sendmail("news@acme.example", ["reader@example.org"], MESSAGE)
        return seen

    async with sink() as (upstream, port), gateway(service, port) as gw:
        seen = await asyncio.to_thread(scenario, gw.port)
    assert {k: v for k, v in seen.items() if k != "own"} == {
        "plain": 553,
        "sub": 553,
        "route": 553,
        "double_at": 553,
        "upper": 553,
        "header": 550,
        "header_sub": 550,
        "header_encoded": 550,
    }
    assert seen["own"] == {}
    assert len(upstream.received) == 1 and b"beta.example" not in upstream.received[0].content


INJECTIONS = [
    "x'); DROP TABLE suppressions; --",
    'x"; DELETE FROM clients; --',
    "1 OR 1=1",
    "$1",
    "?1",
    "\\'; SELECT pg_sleep(5); --",
]


async def test_sql_injection_lands_as_data(store: SqlLedgerStore, test_secrets: Secrets) -> None:
    """Quotes and SQL in addresses, campaign ids, logins, tokens and CSV fields are stored or refused as data."""
    service = make_service(store, test_secrets)
    await add_client(store)
    quote_address = "o'brien+x@example.org"
    tricky_rcpts = [quote_address, "a'--@example.org", "x'or'1'='1@example.org"]

    def scenario(port: int) -> list[object]:
        seen: list[object] = []
        for campaign in INJECTIONS:
            message = MESSAGE.replace(b"X-Campaign-ID: spring-2026", f"X-Campaign-ID: {campaign}".encode())
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.login("acme", PASSWORD)
                seen.append(client.sendmail("news@acme.example", tricky_rcpts, message))
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("x")
            for login in ["acme' OR '1'='1", "acme'--", "' UNION SELECT password_hash FROM clients --"]:
                seen.append(client.docmd("AUTH", "PLAIN " + _plain(login, PASSWORD))[0])
        return seen

    async with sink() as (upstream, port), gateway(service, port, auth_throttle=NO_DELAY) as gw:
        seen = await asyncio.to_thread(scenario, gw.port)
        await gw.delivery_log.flush()
    assert seen == [{}] * len(INJECTIONS) + [535, 535, 535]
    assert len(upstream.received) == len(INJECTIONS) * len(tricky_rcpts)
    names = {row[0] for row in await store.db.fetch("SELECT name FROM campaigns WHERE client_id = 'acme'")}
    assert set(INJECTIONS) <= names
    assert [c.id for c in await store.list_clients()] == ["acme"]
    # Tokens: anything that is not a genuine token is InvalidToken, never a query.
    for bad in INJECTIONS:
        with pytest.raises(InvalidToken):
            await service.resolve_token(bad, NOW)
    # CSV fields: a quote in an address is data; SQL in reason/source is refused or stored verbatim.
    csv_lines = [
        b"email,reason,source\n",
        f"{quote_address},,{INJECTIONS[0]}\n".encode(),
        b"bobby'); DROP TABLE subjects;--@example.org,,x\n",
        f"carol@example.org,{INJECTIONS[1]},x\n".encode(),
    ]
    rows = list(parse_suppressions(csv_lines, ImportFormat.CSV, "evil.csv", NOW))
    importer = SuppressionImporter(store, test_secrets.pepper, "acme", "import", NOW)
    await importer.check_scope()
    await importer.add([r for r in rows if not hasattr(r, "describe")])
    counts = await importer.finish()
    assert counts.imported == 1, rows
    problems = [r.describe() for r in rows if hasattr(r, "describe")]
    assert len(problems) == 2  # bobby's address is invalid, carol's reason unknown: reported, not run
    state = await store.lookup("acme", service.identify(quote_address).subject_key)
    assert [(s.scope, s.source) for s in state.suppressions] == [("acme", INJECTIONS[0])]
    assert await store.db.fetchval("SELECT COUNT(*) FROM subjects") >= 3  # tables still there


async def test_header_injection_through_campaign_headers_impossible(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """CR/LF in a control header — raw, encoded-word, folded, in JSON — never becomes a header of the copy."""
    service = make_service(store, test_secrets)
    await add_client(store)
    variants = [
        b"X-Campaign-ID: =?utf-8?q?spring=0D=0ABcc=3A_victim=40example=2Enet?=",
        b"X-Campaign-ID: spring\r\n Bcc: victim@example.net",
        b"X-Mailgun-Tag: spring\r\n\tBcc: victim@example.net",
        b'X-SMTPAPI: {"category": "spring\\nBcc: victim@example.net", "asm_group_id": 1}',
        b'X-SMTPAPI: {"unique_args": {"a": "\\r\\nBcc: victim@example.net"}}',
        b"X-PM-Message-Stream: =?utf-8?b?c3ByaW5nDQpCY2M6IHZpY3RpbUBleGFtcGxlLm5ldA==?=",
    ]

    def scenario(port: int) -> list[int]:
        codes = []
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.login("acme", PASSWORD)
            for header in variants:
                client.mail("news@acme.example")
                client.rcpt("reader@example.org")
                codes.append(client.data(MESSAGE.replace(b"X-Campaign-ID: spring-2026", header))[0])
        return codes

    async with sink() as (upstream, port), gateway(service, port) as gw:
        codes = await asyncio.to_thread(scenario, gw.port)
    assert all(code in (250, 554) for code in codes), codes
    for received in upstream.received:
        head = received.content.split(b"\r\n\r\n", 1)[0]
        assert b"victim" not in head
        assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n"))
    names = [row[0] for row in await store.db.fetch("SELECT name FROM campaigns")]
    assert not any("\n" in n or "\r" in n for n in names)


def test_secret_file_private_and_never_logged(tmp_path: Path) -> None:
    """`init` writes the secret file 0600; a `serve` run with AUTH attempts never prints a secret or password."""
    cli = str(Path(sys.executable).parent / "consentgate")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    ports = [free_port() for _ in range(3)]
    env |= {
        "CONSENTGATE_SMTP__LISTEN": f"127.0.0.1:{ports[0]}",
        "CONSENTGATE_SMTP__INBOUND_LISTEN": f"127.0.0.1:{ports[1]}",
        "CONSENTGATE_HTTP__LISTEN": f"127.0.0.1:{ports[2]}",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    init = run("init")
    added = run("client", "add", "acme", "--domain", "acme.example", "--json")
    assert init.returncode == 0 and added.returncode == 0, init.stderr + added.stderr
    password = json.loads(added.stdout)["password"]
    secret_path = tmp_path / "data" / "secret.json"
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    secret_values = _leaf_strings(json.loads(secret_path.read_text()))
    assert secret_values
    proc = subprocess.Popen(
        [cli, "serve"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_for_port("127.0.0.1", ports[0], timeout=20)
        with smtplib.SMTP("127.0.0.1", ports[0], timeout=10) as client:
            client.ehlo("x")
            assert client.docmd("AUTH", "PLAIN " + _plain("acme", "wrong-" + password))[0] == 535
            client.login("acme", password)
            client.sendmail("news@acme.example", ["reader@example.org"], MESSAGE)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    logs = out + err + init.stdout + init.stderr
    assert "AUTH failed" in logs  # the logs were captured: the check below could fail
    leaked = [v for v in [*secret_values, password] if v in logs]
    assert leaked == []
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and path.suffix in (".db", ".json"):
            assert not stat.S_IMODE(path.stat().st_mode) & 0o007, path  # nothing world-readable


def _leaf_strings(value: object) -> list[str]:
    """Every string (of 8+ characters) inside a JSON value: the encoded pepper and token keys."""
    if isinstance(value, str):
        return [value] if len(value) >= 8 else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaf_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _leaf_strings(v)]
    return []
