"""The receive-side fast paths: the chunked DATA reader and the MAIL/RCPT path parse, checked against aiosmtpd."""

from __future__ import annotations

import asyncio
import random
import socket
import string

from aiosmtpd.smtp import SMTP
from submission_support import MESSAGE, PASSWORD, add_client, gateway, make_service, sink

from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from smtp_gateway.data_reader import DataSection, DataState, read_data
from smtp_gateway.submission import GatewaySMTP

LINE_LIMIT = 1001  # aiosmtpd's default line_length_limit, which is also its reader's limit


def per_line(
    stream: bytes, size_limit: int | None, line_limit: int = LINE_LIMIT
) -> tuple[DataSection, bytes]:
    """aiosmtpd's algorithm, line by line (the reference): the section and the bytes left after it."""
    data, rest, size, state = [], stream, 0, DataState.NOMINAL
    while True:
        line, _, rest = rest.partition(b"\r\n")
        line += b"\r\n"
        if line == b".\r\n":
            break
        size += len(line)
        if state is DataState.NOMINAL and size_limit and size > size_limit:
            state, data = DataState.TOO_MUCH, []
        if state is DataState.NOMINAL and len(line) > line_limit:
            state, data = DataState.TOO_LONG, []
        if state is DataState.NOMINAL:
            data.append(line[1:] if line.startswith(b".") else line)
    content = b"".join(data) if state is DataState.NOMINAL else b""
    return DataSection(content, state), rest


def random_section(rng: random.Random) -> bytes:
    """A stuffed DATA section ending in the "." line: dot lines, bare CR/LF, long and empty lines."""
    pieces = [b".", b"..", b"x", b"hello world.", b"\r", b"\n", b" ", b"=2E", b"end."]
    lines = []
    for _ in range(rng.randint(0, 40)):
        kind = rng.random()
        if kind < 0.05:
            lines.append(b"y" * rng.randint(990, 1010))  # around the line limit
        else:
            line = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
            lines.append(b"." + line if line.startswith(b".") else line)  # stuffed as a mailer would
    return b"".join(line + b"\r\n" for line in lines) + b".\r\n"


async def read_in_pieces(
    stream: bytes, pieces: list[int], size_limit: int | None
) -> tuple[DataSection, bytes]:
    """Feed ``stream`` to a real StreamReader in pieces while read_data runs; the section and what is left."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)

    async def feed() -> None:
        offset = 0
        for length in pieces:
            reader.feed_data(stream[offset : offset + length])
            offset += length
            await asyncio.sleep(0)
        reader.feed_data(stream[offset:])
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    section = await read_data(reader, size_limit=size_limit, line_limit=LINE_LIMIT)
    await feeder
    return section, await reader.read()


async def test_matches_aiosmtpd_on_random_sections_split_anywhere() -> None:
    """2,000 random sections, cut into random pieces: the same content, limit verdict and leftover as per line."""
    rng = random.Random(20261122)
    for _ in range(2000):
        section = random_section(rng)
        stream = section + b"QUIT\r\n"  # what follows the "." line must stay unread
        pieces = [rng.randint(1, 9) if rng.random() < 0.5 else rng.randint(1, 3000) for _ in range(30)]
        limit = rng.choice([None, 0, 200, 2000, 100_000])
        got = await read_in_pieces(stream, pieces, limit)
        expected = per_line(stream, limit)
        if expected[0].state is DataState.NOMINAL or got[0].state is DataState.NOMINAL:
            assert got == expected, section
        else:  # both faults in one message: either verdict is an error reply that reads it all
            assert got[1] == expected[1] and got[0].content == b""


async def test_edge_sections() -> None:
    """Empty message, a first line of dots, the end marker split after CR, a line exactly at the limit."""
    cases = [
        (b".\r\n", b""),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...x\r\n.\r\n", b"..x\r\n"),
        (b"a\r\n..\r\nb.\r\n.\r\n", b"a\r\n.\r\nb.\r\n"),
        (b"y" * 999 + b"\r\n.\r\n", b"y" * 999 + b"\r\n"),
    ]
    for stream, content in cases:
        for cut in range(1, len(stream)):
            section, rest = await read_in_pieces(stream + b"NOOP\r\n", [cut], None)
            assert (section, rest) == (DataSection(content, DataState.NOMINAL), b"NOOP\r\n"), (stream, cut)
    long, _ = await read_in_pieces(b"y" * 1000 + b"\r\n.\r\n", [7], None)
    assert long.state is DataState.TOO_LONG


def _session(port: int, data: bytes, piece: int) -> list[bytes]:
    """AUTH, one transaction whose DATA section is sent ``piece`` bytes at a time, then NOOP; the replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            while (line := reader.readline())[3:4] == b"-":
                pass
            return line

        reply()
        for command in (
            b"EHLO mailer.test",
            b"AUTH PLAIN AGFjbWUA" + _b64(PASSWORD),
            b"MAIL FROM:<news@acme.example>",
        ):
            sock.sendall(command + b"\r\n")
            reply()
        sock.sendall(b"RCPT TO:<reader@example.org>\r\nDATA\r\n")
        answers = [reply(), reply()]
        for offset in range(0, len(data), piece):
            sock.sendall(data[offset : offset + piece])
        answers.append(reply())
        sock.sendall(b"NOOP\r\n")
        answers.append(reply())
        return answers


def _b64(text: str) -> bytes:
    """The base64 of ``text``, continuing 'AGFjbWUA' (\\0acme\\0) — PLAIN credentials in one piece."""
    import base64

    return base64.b64encode(b"\0acme\0" + text.encode())[8:]


async def test_gateway_reads_dot_lines_sent_in_small_pieces(
    store: SqlLedgerStore, test_secrets: Secrets
) -> None:
    """Over a socket, 3 bytes at a time: dot lines arrive unstuffed upstream; a too-long line gets 500 and the session goes on."""
    service = make_service(store, test_secrets)
    await add_client(store)
    body = MESSAGE + b"..\r\n...leading dots\r\nlast.\r\n"
    async with sink() as (upstream, port), gateway(service, port) as gw:
        sent = await asyncio.to_thread(_session, gw.port, body + b".\r\n", 3)
        too_long = await asyncio.to_thread(_session, gw.port, MESSAGE + b"z" * 2000 + b"\r\n.\r\n", 500)
    assert [a[:3] for a in sent] == [b"250", b"354", b"250", b"250"]
    assert [a[:3] for a in too_long] == [b"250", b"354", b"500", b"250"]
    assert len(upstream.received) == 1
    assert upstream.received[0].content.endswith(b".\r\n..leading dots\r\nlast.\r\n")


async def test_plain_paths_parse_as_aiosmtpd_parses_them() -> None:
    """MAIL/RCPT paths: the fast parse gives aiosmtpd's (address, parameters) for 3,000 random and 12 odd ones."""
    # The running loop: without one aiosmtpd makes its own, whose unclosed socketpair leaks.
    stock, gateway_smtp = SMTP(Sink(), loop=asyncio.get_running_loop()), GatewaySMTP.__new__(GatewaySMTP)
    gateway_smtp.local_part_limit = 0
    rng = random.Random(7)
    atext = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
    paths = ["<a@b.c>", "<a@b.c> ", "<a@b.c>x", "<a@b.c> (c) SIZE=1", " <a@b.c>", "<a..b@c>", '<"q r"@s.t>']
    paths += [
        "<é@b.c> SMTPUTF8",
        "<a@[10.0.0.1]>",
        "<a@b.c>\tSIZE=1 ",
        "<a@b.c> BODY=8BITMIME  SMTPUTF8",
        "<>",
    ]
    for _ in range(3000):
        local = ".".join("".join(rng.choices(atext, k=rng.randint(1, 8))) for _ in range(rng.randint(1, 3)))
        domain = ".".join(
            "".join(rng.choices(string.ascii_letters + "-0", k=rng.randint(1, 6))) for _ in range(2)
        )
        params = rng.choice(["", " SIZE=1234", "  BODY=8BITMIME SMTPUTF8", " x=y ", "\tA"])
        paths.append(f"<{local}@{domain}>{params}")
    for path in paths:
        assert gateway_smtp._getaddr(path) == stock._getaddr(path), path


class Sink:
    """An aiosmtpd handler that is never called (the parse needs an SMTP object only)."""
