"""The pipelining upstream client under the pooled relay, against real SMTP servers on port 0.

Upstreams: aiosmtpd (with and without PIPELINING, with STARTTLS/AUTH and implicit TLS), Postfix's
``smtp-sink`` (advertises PIPELINING), and a strict scripted upstream that withholds every reply
until DATA when it offers PIPELINING (a client that waits per command would hang) and records a
violation when a client sends a command before the previous reply without it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from aiosmtplib.email import quote_address
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from submission_support import (
    MESSAGE,
    SinkController,
    SinkHandler,
    add_client,
    free_port,
    gateway,
    make_service,
    submit,
)

from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from ledger.store.outbox import OutboxStore
from smtp_gateway.relay import (
    Copy,
    Outcome,
    SmtpRelay,
    UpstreamConfig,
    UpstreamConfigError,
    make_relay,
    send_all,
)
from smtp_gateway.upstream import data_payload, envelope_address

SMTP_SINK = shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin:/usr/lib/postfix/sbin")
BODY = b"Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nmiddle . dot\r\nbare LF\nlast line, no CRLF"


def copy_to(rcpt: str, message: bytes = b"Subject: hi\r\n\r\nhello\r\n") -> Copy:
    """A copy from the gateway's VERP address to ``rcpt``."""
    return Copy("bounces+tok@bounce.example", rcpt, message)


# -- upstreams --------------------------------------------------------------------------------


@dataclass
class PipeliningSink(SinkHandler):
    """The aiosmtpd sink, offering PIPELINING, refusing the recipients listed in ``refuse``."""

    refuse: dict[str, str] = field(default_factory=dict)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Add PIPELINING to aiosmtpd's extensions (it reads commands line by line, so it copes)."""
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse a listed address with its reply."""
        if address in self.refuse:
            return self.refuse[address]
        return await super().handle_RCPT(server, session, envelope, address, options)


@asynccontextmanager
async def aiosmtpd_upstream(handler: SinkHandler, **smtp: object) -> AsyncIterator[int]:
    """``handler`` served by aiosmtpd in a thread on port 0; yields the port."""
    controller = SinkController(handler, hostname="127.0.0.1", port=0, **smtp)
    await asyncio.to_thread(controller.start)
    try:
        yield controller.port
    finally:
        await asyncio.to_thread(controller.stop)


@dataclass
class Strict:
    """A scripted upstream; replies per transaction number (1-based, counted per server)."""

    pipelining: bool
    data_replies: dict[int, bytes] = field(default_factory=dict)  # to the DATA command
    drop_in_body: set[int] = field(default_factory=set)  # hang up halfway through the body
    stall_data: set[int] = field(default_factory=set)  # never answer the DATA group
    groups: list[list[bytes]] = field(default_factory=list)  # verbs received before each reply
    bodies: list[bytes] = field(default_factory=list)  # accepted messages, unstuffed
    violations: list[bytes] = field(default_factory=list)
    sessions: int = 0
    transactions: int = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection."""
        self.sessions += 1
        writer.write(b"220 strict ESMTP\r\n")
        pending: list[bytes] = []  # replies withheld until the end of a pipelined group
        verbs: list[bytes] = []
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if not self.pipelining:
                    try:  # anything that arrives before our reply breaks RFC 5321 without PIPELINING
                        early = await asyncio.wait_for(reader.readline(), 0.03)
                        self.violations.append(early)
                    except TimeoutError:
                        pass
                verbs.append(verb)
                if verb == b"EHLO":
                    offer = b"250-PIPELINING\r\n" if self.pipelining else b""
                    writer.write(b"250-strict\r\n" + offer + b"250 8BITMIME\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                elif verb in (b"MAIL", b"RCPT", b"RSET"):
                    pending.append(b"250 OK\r\n")
                    if not self.pipelining:
                        writer.write(pending.pop())
                    else:
                        continue  # RFC 2920 lets the server wait for the end of the group
                elif verb == b"DATA":
                    self.transactions += 1
                    number = self.transactions
                    if number in self.stall_data:
                        await reader.read()  # silent until the client gives up and hangs up
                        return
                    reply = self.data_replies.get(number, b"354 go ahead\r\n")
                    writer.write(b"".join(pending) + reply)
                    pending.clear()
                    if reply.startswith(b"354"):
                        await writer.drain()
                        body = await self._body(reader, drop=number in self.drop_in_body)
                        if body is None:
                            return
                        self.bodies.append(body)
                        writer.write(b"250 2.0.0 queued\r\n")
                else:
                    writer.write(b"502 5.5.2 unknown\r\n")
                self.groups.append(verbs)
                verbs = []
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, *, drop: bool) -> bytes | None:
        """The message up to the lone ".", unstuffed; None after hanging up halfway."""
        lines = []
        while (line := await reader.readline()) != b".\r\n":
            if drop and lines:
                return None
            lines.append(line[1:] if line.startswith(b".") else line)
        return b"".join(lines)


@asynccontextmanager
async def strict_upstream(script: Strict) -> AsyncIterator[int]:
    """Serve ``script`` on port 0; yields the port."""
    server = await asyncio.start_server(script.session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _world_writable_folder() -> Path:
    """A new folder under /tmp anyone may write to.

    Not under tmp_path: smtp-sink drops to the postfix user when started as root, and pytest's
    temporary folders are private to the user running the tests.
    """
    folder = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
    folder.chmod(0o777)
    return folder


@asynccontextmanager
async def smtp_sink(*options: str) -> AsyncIterator[tuple[int, Path]]:
    """Postfix's ``smtp-sink`` dumping each message into a folder; yields (port, folder)."""
    if SMTP_SINK is None:
        pytest.skip("smtp-sink is not installed (apt-get install postfix)")
    dumps = _world_writable_folder()
    as_root = ["-u", "postfix"] if os.geteuid() == 0 else []
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        SMTP_SINK, *as_root, *options, "-d", f"{dumps}/%M.", f"127.0.0.1:{port}", "64"
    )
    try:
        for _ in range(200):
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        yield port, dumps
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(dumps, ignore_errors=True)


async def dumps_left(dumps: Path) -> list[Path]:
    """The capture files still in ``dumps`` once smtp-sink has cleaned up aborted transactions.

    smtp-sink opens a capture file when a transaction starts and removes it when it processes the
    abort, which can be a moment after the client saw the connection drop or the refusal.
    """
    for _ in range(100):
        left = await asyncio.to_thread(lambda: list(dumps.iterdir()))
        if not left:
            break
        await asyncio.sleep(0.02)
    return left


def tls_context(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


def only_user(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object) -> AuthResult:
    """aiosmtpd authenticator: user / secret."""
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"user", b"secret")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


# -- the client's wire behaviour ------------------------------------------------------------


def test_data_payload_stuffs_dots_and_normalises_line_ends() -> None:
    """Leading dots are doubled, lone LF becomes CRLF, the "." line ends it; SIZE counts the unstuffed message."""
    payload, size = data_payload(BODY)
    assert payload == (
        b"Subject: dots\r\n\r\n..\r\n...two\r\n..leading\r\nmiddle . dot\r\nbare LF\r\nlast line, no CRLF\r\n.\r\n"
    )
    assert size == len(payload) - len(b".\r\n") - 3  # three lines got a dot
    assert data_payload(b".x\r\n") == (b"..x\r\n.\r\n", 4)


async def test_pipelining_upstream_gets_one_group_per_copy() -> None:
    """With PIPELINING: MAIL, RCPT, DATA in one group (the upstream answers only after DATA), on one reused connection."""
    script = Strict(pipelining=True)
    async with strict_upstream(script) as port:
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=1, timeout=2)
        results = [await relay.send(copy_to(f"r{n}@example.org")) for n in range(3)]
        await relay.close()
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 3
    assert script.groups[1:4] == [[b"MAIL", b"RCPT", b"DATA"]] * 3  # [0] is EHLO
    assert script.bodies == [b"Subject: hi\r\n\r\nhello\r\n"] * 3 and script.sessions == 1


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    """Without PIPELINING every command waits for its reply, and copies still arrive."""
    script = Strict(pipelining=False)
    async with strict_upstream(script) as port:
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=1, timeout=2)
        results = [await relay.send(copy_to(f"r{n}@example.org")) for n in range(2)]
        await relay.close()
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 2
    assert script.violations == [] and len(script.bodies) == 2
    assert [b"MAIL"] in script.groups and all(len(g) == 1 for g in script.groups)


async def test_4xx_on_data_then_rset_in_the_next_group_on_the_same_connection() -> None:
    """A 451 to DATA is temporary; the next copy's group starts with RSET and is delivered on the same connection."""
    script = Strict(pipelining=True, data_replies={1: b"451 4.3.0 try later\r\n"})
    async with strict_upstream(script) as port:
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=1, timeout=2)
        refused = await relay.send(copy_to("a@example.org"))
        delivered = await relay.send(copy_to("b@example.org"))
        await relay.close()
    assert (refused.outcome, refused.code) == (Outcome.TEMPORARY, 451) and "try later" in refused.detail
    assert delivered.outcome is Outcome.DELIVERED
    assert script.groups[1:3] == [[b"MAIL", b"RCPT", b"DATA"], [b"RSET", b"MAIL", b"RCPT", b"DATA"]]
    assert script.sessions == 1 and len(script.bodies) == 1


async def test_connection_dropped_mid_body() -> None:
    """A pooled connection dropped mid-body is retried once on a fresh one; a fresh one dropped is temporary."""
    script = Strict(pipelining=True, drop_in_body={2, 4})
    async with strict_upstream(script) as port:
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=1, timeout=2)
        first = await relay.send(copy_to("a@example.org"))
        retried = await relay.send(copy_to("b@example.org"))  # #2 drops on the pooled connection, #3 works
        await relay._idle.pop().quit()  # the next copy opens a fresh connection: #4 drops it
        lost = await relay.send(copy_to("c@example.org"))
        await relay.close()
    assert first.outcome is Outcome.DELIVERED and retried.outcome is Outcome.DELIVERED
    assert (lost.outcome, lost.code, lost.detail) == (Outcome.TEMPORARY, 0, "connection lost")
    assert len(script.bodies) == 2 and script.sessions == 3


async def test_stalled_upstream_times_out_and_the_connection_is_dropped() -> None:
    """No answer within the time limit: temporary, and the next copy uses a new connection."""
    script = Strict(pipelining=True, stall_data={1})
    async with strict_upstream(script) as port:
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=1, timeout=0.3)
        stalled = await relay.send(copy_to("a@example.org"))
        after = await relay.send(copy_to("b@example.org"))
        await relay.close()
    assert (stalled.outcome, stalled.code) == (Outcome.TEMPORARY, 0)
    assert after.outcome is Outcome.DELIVERED and script.sessions == 2


# -- against aiosmtpd and smtp-sink ---------------------------------------------------------


async def test_per_recipient_refusals_on_a_pipelining_aiosmtpd() -> None:
    """550 permanent and 452 temporary per copy (reply in the detail); the connections go on delivering."""
    handler = PipeliningSink(
        refuse={"gone@example.org": "550 5.1.1 no such user", "full@example.org": "452 4.2.2 full"}
    )
    async with aiosmtpd_upstream(handler) as port:
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=2, timeout=5)
        rcpts = ["gone@example.org", "ok@example.org", "full@example.org", "ok2@example.org"]
        results = await send_all(relay, [copy_to(r) for r in rcpts])
        again = await send_all(relay, [copy_to("ok3@example.org"), copy_to("ok4@example.org")])
        await relay.close()
    assert [(r.outcome, r.code) for r in results] == [
        (Outcome.PERMANENT, 550),
        (Outcome.DELIVERED, 250),
        (Outcome.TEMPORARY, 452),
        (Outcome.DELIVERED, 250),
    ]
    assert results[0].detail == "RCPT: 5.1.1 no such user"
    assert [r.outcome for r in again] == [Outcome.DELIVERED] * 2
    assert sorted(r.rcpt_tos[0] for r in handler.received) == [
        "ok2@example.org",
        "ok3@example.org",
        "ok4@example.org",
        "ok@example.org",
    ]
    assert handler.sessions == 2  # refusals did not cost a connection


async def test_4xx_after_the_body_on_aiosmtpd() -> None:
    """A 451 after the body is temporary and nothing is stored; the next copy is delivered."""
    handler = PipeliningSink(fail_with="451 4.3.0 queue full")
    async with aiosmtpd_upstream(handler) as port:
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=1, timeout=5)
        refused = await relay.send(copy_to("a@example.org"))
        handler.fail_with = None
        delivered = await relay.send(copy_to("b@example.org"))
        await relay.close()
    assert (refused.outcome, refused.code, refused.detail) == (Outcome.TEMPORARY, 451, "4.3.0 queue full")
    assert delivered.outcome is Outcome.DELIVERED
    assert [r.rcpt_tos for r in handler.received] == [["b@example.org"]] and handler.sessions == 1


async def test_smtp_sink_receives_dot_stuffed_bodies_intact() -> None:
    """Through Postfix's smtp-sink (PIPELINING) each copy arrives with its dot lines as written."""
    async with smtp_sink() as (port, dumps):
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=2, timeout=5)
        results = await send_all(relay, [copy_to(f"r{n}@example.org", BODY) for n in range(4)])
        assert all(conn.pipelining for conn in relay._idle)
        await relay.close()
        dumped = [f.read_bytes() for f in dumps.iterdir()]
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 4
    expected = b"\n".join(BODY.replace(b"\r\n", b"\n").split(b"\n")[2:]) + b"\n"
    assert len(dumped) == 4 and all(d.split(b"\n\n", 1)[1].startswith(expected) for d in dumped)
    assert sorted(d.split(b"X-Rcpt-Args: ")[1].split(b"\n")[0] for d in dumped) == [
        f"<r{n}@example.org>".encode() for n in range(4)
    ]


async def test_smtp_sink_hanging_up_at_data_is_temporary() -> None:
    """smtp-sink disconnecting after the pipelined DATA: temporary with no code, nothing delivered."""
    async with smtp_sink("-q", "DATA") as (port, dumps):
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=1, timeout=5)
        result = await relay.send(copy_to("a@example.org"))
        await relay.close()
        dumped = await dumps_left(dumps)
    assert (result.outcome, result.code, result.detail) == (Outcome.TEMPORARY, 0, "connection lost")
    assert dumped == []


async def test_smtp_sink_refusing_rcpt_without_pipelining() -> None:
    """smtp-sink -f RCPT (which turns PIPELINING off) refuses each copy permanently at RCPT."""
    async with smtp_sink("-f", "RCPT") as (port, dumps):
        relay = SmtpRelay(host="127.0.0.1", port=port, pool_size=1, timeout=5)
        results = [await relay.send(copy_to(f"r{n}@example.org")) for n in range(2)]
        assert not relay._idle[0].pipelining
        await relay.close()
        dumped = await dumps_left(dumps)
    assert [(r.outcome, r.code) for r in results] == [(Outcome.PERMANENT, 500)] * 2
    assert results[0].detail.startswith("RCPT: ") and dumped == []


# -- TLS and AUTH ---------------------------------------------------------------------------


async def test_starttls_and_auth_then_pipelining(tmp_path: Path) -> None:
    """smtp+starttls:// with credentials: STARTTLS, AUTH, then pipelined copies; a wrong password is refused 535."""
    handler = PipeliningSink()
    async with aiosmtpd_upstream(
        handler,
        tls_context=tls_context(tmp_path),
        require_starttls=True,
        authenticator=only_user,
        auth_require_tls=True,
    ) as port:
        relay = make_relay(
            UpstreamConfig(url=f"smtp+starttls://user:secret@127.0.0.1:{port}?verify=no", timeout_seconds=3)
        )
        results = await send_all(relay, [copy_to("a@example.org"), copy_to("b@example.org")])
        await relay.close()
        wrong = make_relay(
            UpstreamConfig(url=f"smtp+starttls://user:nope@127.0.0.1:{port}?verify=no", timeout_seconds=3)
        )
        refused = await wrong.send(copy_to("c@example.org"))
        await wrong.close()
        checked = make_relay(UpstreamConfig(url=f"smtp+starttls://user:secret@127.0.0.1:{port}"))
        untrusted = await checked.send(copy_to("d@example.org"))  # self-signed: verification fails
        await checked.close()
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 2
    assert (refused.outcome, refused.code) == (Outcome.PERMANENT, 535) and refused.detail.startswith(
        "connect: "
    )
    assert (untrusted.outcome, untrusted.code) == (
        Outcome.TEMPORARY,
        0,
    ) and "STARTTLS failed" in untrusted.detail
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["a@example.org", "b@example.org"]


async def test_implicit_tls(tmp_path: Path) -> None:
    """smtps:// delivers over TLS from the first byte."""
    handler = PipeliningSink()
    async with aiosmtpd_upstream(handler, ssl_context=tls_context(tmp_path)) as port:
        relay = make_relay(UpstreamConfig(url=f"smtps://127.0.0.1:{port}?verify=no"))
        result = await relay.send(copy_to("a@example.org"))
        await relay.close()
    assert result.outcome is Outcome.DELIVERED and [r.rcpt_tos for r in handler.received] == [
        ["a@example.org"]
    ]


# -- through the gateway --------------------------------------------------------------------


async def test_gateway_over_a_pipelining_upstream_spools_only_temporary_refusals(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """Mailer → gateway → pipelining upstream: 250 with one copy relayed, one spooled (452), one bounced (550)."""
    service = make_service(store, test_secrets)
    await add_client(store)
    handler = PipeliningSink(
        refuse={"full@example.org": "452 4.2.2 mailbox full", "gone@example.org": "550 5.1.1 no such user"}
    )
    rcpts = ["ok@example.org", "full@example.org", "gone@example.org"]
    async with aiosmtpd_upstream(handler) as port, gateway(service, port) as gw:
        refused = await asyncio.to_thread(submit, gw.port, rcpts)
        spooled = await OutboxStore(store.db).all()
        del handler.refuse["full@example.org"]
        await gw.worker.run_once()
        left = await OutboxStore(store.db).depth()
    assert refused == {}
    assert [c.rcpt for c in spooled] == ["full@example.org"] and left == 0
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["full@example.org", "ok@example.org"]
    assert all(MESSAGE.split(b"\r\n")[2] in r.content for r in handler.received)  # the Subject line


def test_envelope_addresses_as_aiosmtplib_quotes_them() -> None:
    """The fast path gives aiosmtplib's result; nothing after a CRLF reaches the wire, a space is refused."""
    for address in [
        "reader@example.org",
        "Reader@Example.org",
        "bounces+tok_1@b.example",
        "a..b@c",
        '"x y"@z.example',
    ]:
        assert envelope_address(address) == quote_address(address)
    assert envelope_address("a@b.example\r\nRCPT TO:<victim@example.org>") == "<a@b.example>"
    with pytest.raises(ValueError):
        envelope_address("a b@c.example")


@pytest.mark.parametrize("name", ["gâteway.example", "two words", " "])
def test_a_local_hostname_that_cannot_follow_ehlo_is_a_configuration_error(name: str) -> None:
    """Non-ASCII, spaced or blank local hostnames are refused when the relay is built, naming the value."""
    with pytest.raises(UpstreamConfigError, match="local hostname"):
        make_relay(UpstreamConfig(url="smtp://127.0.0.1", local_hostname=name))
