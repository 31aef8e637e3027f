"""Soak: sustained load into `consentgate serve`, SIGKILLed and restarted; nothing lost, no unsubscribe leak.

``python -m bench soak [--seconds 60] [--kills 3] [--clients 4] [--unsubscribes 10] [--upstream-down 0] [--json]``

* A real ``consentgate serve`` (subprocess, SQLite ledger, one worker) relays to an aiosmtpd sink
  running in this process.
* ``--clients`` async mailers (aiosmtplib) send one-recipient messages with unique Message-IDs
  to a pool of addresses, reconnecting whenever the gateway is gone.
* ``--kills`` times, evenly spread, the gateway is SIGKILLed and restarted at once.
* ``--upstream-down S``: mid-run the sink stops for S seconds (copies go to the outbox) and comes
  back; the outbox depth (``consentgate_outbox_depth`` from ``/metrics``) is sampled throughout.
* Meanwhile addresses are unsubscribed, alternately by ``consentgate unsubscribe add`` (CLI)
  and by the RFC 8058 one-click ``POST /u/TOKEN`` (token taken from a copy the sink received).

Checks, printed at the end (exit status 1 if either fails):

* **lost** — messages answered 250 after DATA that neither reached the sink nor wait in the
  outbox (must be 0); duplicates (at-least-once) are counted, not failed;
* **leaks** — copies at the sink for an address whose RCPT was *sent* after its unsubscribe was
  acknowledged (CLI exit 0, or HTTP 200/202) (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

EXE = str(Path(sys.executable).with_name("consentgate"))
MSGID_RE = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)
UNSUB_RE = re.compile(rb"<(https?://[^>]+/u/([a-z2-7]+))>")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> bool:
    """Whether 127.0.0.1:port accepts connections within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Sink:
    """What the upstream received: (rcpt, message-id) per copy, and the unsubscribe URL per address."""

    copies: list[tuple[str, str]] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        """Keep the envelope recipient and the Message-ID."""
        content: bytes = envelope.original_content  # type: ignore[attr-defined]
        head = content.split(b"\r\n\r\n", 1)[0]
        found = MSGID_RE.search(head)
        url = UNSUB_RE.search(head)
        with self.lock:
            for rcpt in envelope.rcpt_tos:  # type: ignore[attr-defined]
                self.copies.append((rcpt, found.group(1).decode() if found else ""))
                if url:
                    self.urls[rcpt] = url.group(1).decode()
        return "250 2.0.0 queued"


@dataclass
class Result:
    """The soak's figures."""

    seconds: float
    kills: int
    accepted: int = 0
    refused_suppressed: int = 0
    transient_failures: int = 0
    delivered_unique: int = 0
    duplicates: int = 0
    pending_in_outbox: int = 0
    lost: int = 0
    unsubscribes_cli: int = 0
    unsubscribes_one_click: int = 0
    leaks: int = 0
    accepted_per_second: float = 0.0
    upstream_down_seconds: float = 0.0
    outbox_depth_max: float = 0.0
    outbox_depth_end: float = -1.0
    lost_ids: list[str] = field(default_factory=list)
    leak_ids: list[str] = field(default_factory=list)


class Node:
    """One `consentgate serve` installation in a temporary folder."""

    def __init__(self, folder: Path, upstream_port: int) -> None:
        """Prepare the environment (ports, upstream, fast retries)."""
        self.folder = folder
        self.smtp_port, self.http_port, self.inbound_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
        self.env |= {
            "CONSENTGATE_SMTP__LISTEN": f"127.0.0.1:{self.smtp_port}",
            "CONSENTGATE_SMTP__INBOUND_LISTEN": f"127.0.0.1:{self.inbound_port}",
            "CONSENTGATE_HTTP__LISTEN": f"127.0.0.1:{self.http_port}",
            "CONSENTGATE_HTTP__PUBLIC_URL": f"http://127.0.0.1:{self.http_port}",
            "CONSENTGATE_UPSTREAM__URL": f"smtp://127.0.0.1:{upstream_port}",
            "CONSENTGATE_OUTBOX__RETRY_BASE_SECONDS": "0.5",
            "CONSENTGATE_OUTBOX__RETRY_MAX_SECONDS": "2",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(folder / "serve.log", "ab")  # noqa: SIM115 - kept open across restarts

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a consentgate command in the folder."""
        return subprocess.run(
            [EXE, *args], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=60
        )

    def start(self) -> None:
        """Start serve and wait for the submission port."""
        self.proc = subprocess.Popen(
            [EXE, "serve"], cwd=self.folder, env=self.env, stdout=self.log, stderr=self.log
        )
        if not wait_port(self.smtp_port):
            raise SystemExit(f"serve did not start; see {self.folder / 'serve.log'}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no flush."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def outbox_rcpts_and_ids(self) -> set[str]:
        """Message-IDs of the copies still waiting in the outbox."""
        db = sqlite3.connect(self.folder / "data" / "consentgate.db")
        try:
            ids = set()
            for (message,) in db.execute("SELECT message FROM outbox"):
                found = MSGID_RE.search(bytes(message))
                if found:
                    ids.add(found.group(1).decode())
            return ids
        finally:
            db.close()


class Load:
    """The mailers, the unsubscribers, and what each of them saw."""

    def __init__(self, node: Node, sink: Sink, password: str, addresses: list[str]) -> None:
        """Send as client acme to ``addresses``."""
        self.node, self.sink, self.password, self.addresses = node, sink, password, addresses
        self.accepted: dict[str, tuple[str, float]] = {}  # message-id -> (rcpt, RCPT sent at)
        self.rcpt_sent: dict[str, tuple[str, float]] = {}
        self.refused = 0
        self.transient = 0
        self.acks: dict[str, float] = {}
        self.cli_unsubs = 0
        self.click_unsubs = 0
        self._counter = 0
        self.running = True

    async def mailer(self, seed: int) -> None:
        """Send until stopped, reconnecting through kills."""
        import aiosmtplib

        rng = random.Random(seed)
        while self.running:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.node.smtp_port, timeout=10)
            try:
                await smtp.connect()
                await smtp.login("acme", self.password)
                while self.running:
                    await self._one(smtp, rng)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                self.transient += 1
                await asyncio.sleep(0.1)
            finally:
                smtp.close()

    async def _one(self, smtp: object, rng: random.Random) -> None:
        """One message to one address; records what the gateway answered."""
        import aiosmtplib

        assert isinstance(smtp, aiosmtplib.SMTP)
        self._counter += 1
        msgid = f"soak-{self._counter}-{rng.randrange(1 << 30)}@acme.example"
        rcpt = rng.choice(self.addresses)
        message = (
            f"From: Acme <news@acme.example>\r\nTo: {rcpt}\r\nSubject: soak\r\nMessage-ID: <{msgid}>\r\n"
            f"X-Campaign-ID: soak\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Hello, this is message {self._counter}. https://acme.example/offer\r\n"
        ).encode()
        await smtp.mail("news@acme.example")
        sent_at = time.monotonic()
        code, _ = await _rcpt(smtp, rcpt)
        if code != 250:
            await smtp.rset()
            if code >= 500:
                self.refused += 1
            return
        self.rcpt_sent[msgid] = (rcpt, sent_at)
        try:
            response = await smtp.data(message)
        except aiosmtplib.SMTPDataError:
            self.transient += 1
            return
        if response.code == 250:
            self.accepted[msgid] = (rcpt, sent_at)

    async def unsubscriber(self, count: int, seconds: float) -> None:
        """Unsubscribe ``count`` addresses over the run, alternating CLI and one-click POST."""
        import httpx

        interval = seconds / (count + 1)
        async with httpx.AsyncClient(timeout=10) as http:
            for n in range(count):
                await asyncio.sleep(interval)
                if not self.running:
                    return
                with self.sink.lock:
                    candidates = [a for a in self.sink.urls if a not in self.acks]
                if not candidates:
                    continue
                address = candidates[0]
                if n % 2 == 0:
                    done = await asyncio.to_thread(
                        self.node.cli, "unsubscribe", "add", address, "--client", "acme"
                    )
                    if done.returncode == 0:
                        self.acks[address] = time.monotonic()
                        self.cli_unsubs += 1
                else:
                    url = self.sink.urls[address]
                    try:
                        response = await http.post(url, data={"List-Unsubscribe": "One-Click"})
                    except httpx.HTTPError:
                        continue  # the gateway was being killed: not acknowledged, not counted
                    if response.status_code in (200, 202):
                        self.acks[address] = time.monotonic()
                        self.click_unsubs += 1


async def _rcpt(smtp: object, rcpt: str) -> tuple[int, str]:
    """RCPT without aiosmtplib raising on a refusal."""
    import aiosmtplib

    assert isinstance(smtp, aiosmtplib.SMTP)
    try:
        response = await smtp.rcpt(rcpt)
    except aiosmtplib.SMTPRecipientRefused as exc:
        return exc.code, exc.message
    return response.code, response.message


async def _outage(sink: Sink, port: int, holder: list[object], start_after: float, down: float) -> None:
    """Stop the upstream for ``down`` seconds after ``start_after`` seconds, then bring it back."""
    from aiosmtpd.controller import Controller

    await asyncio.sleep(start_after)
    await asyncio.to_thread(holder[0].stop)  # type: ignore[attr-defined]
    await asyncio.sleep(down)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    await asyncio.to_thread(controller.start)
    holder[0] = controller


async def _depth_sampler(node: Node, samples: list[float], stop: asyncio.Event) -> None:
    """Read consentgate_outbox_depth from /metrics every 0.5 s (missing while the node restarts)."""
    import httpx

    async with httpx.AsyncClient(timeout=2) as http:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                text = (await http.get(f"http://127.0.0.1:{node.http_port}/metrics")).text
                found = re.search(r"^consentgate_outbox_depth (\S+)$", text, re.MULTILINE)
                if found:
                    samples.append(float(found.group(1)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def soak(
    seconds: float, kills: int, clients: int, unsubscribes: int, folder: Path, upstream_down: float = 0.0
) -> Result:
    """Run the soak in ``folder``; returns the figures."""
    from aiosmtpd.controller import Controller

    sink = Sink()
    upstream_port = free_port()
    holder: list[object] = [Controller(sink, hostname="127.0.0.1", port=upstream_port)]
    holder[0].start()  # type: ignore[attr-defined]
    node = Node(folder, upstream_port)
    depths: list[float] = []
    sampling = asyncio.Event()
    try:
        for args in (("init",), ("client", "add", "acme", "--domain", "acme.example", "--json")):
            done = node.cli(*args)
            if done.returncode != 0:
                raise SystemExit(f"consentgate {' '.join(args)} failed: {done.stderr}")
        password = json.loads(done.stdout)["password"]
        node.start()
        load = Load(node, sink, password, [f"reader{i}@example.org" for i in range(50)])
        tasks = [asyncio.create_task(load.mailer(i)) for i in range(clients)]
        tasks.append(asyncio.create_task(load.unsubscriber(unsubscribes, seconds)))
        sampler = asyncio.create_task(_depth_sampler(node, depths, sampling))
        if upstream_down:
            outage = asyncio.create_task(
                _outage(sink, upstream_port, holder, max(0.0, (seconds - upstream_down) / 2), upstream_down)
            )
        started = time.monotonic()
        for _ in range(kills):
            await asyncio.sleep(seconds / (kills + 1))
            await asyncio.to_thread(node.kill)
            await asyncio.to_thread(node.start)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
        load.running = False
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - started
        # Let the retry worker drain what the upstream did not take (it never refuses here).
        if upstream_down:
            await outage
        for _ in range(120):
            with sink.lock:
                got = {m for _, m in sink.copies}
            if set(load.accepted) <= got and depths and depths[-1] == 0:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # one more depth sample after the drain
        sampling.set()
        await sampler
        pending = await asyncio.to_thread(node.outbox_rcpts_and_ids)
    finally:
        node.stop()
        holder[0].stop()  # type: ignore[attr-defined]
    result = _figures(load, sink, pending, seconds=elapsed, kills=kills)
    result.upstream_down_seconds = upstream_down
    result.outbox_depth_max = max(depths, default=0.0)
    result.outbox_depth_end = depths[-1] if depths else -1.0
    return result


def _figures(load: Load, sink: Sink, pending: set[str], *, seconds: float, kills: int) -> Result:
    """Count losses, duplicates and leaks."""
    result = Result(seconds=round(seconds, 1), kills=kills)
    result.accepted = len(load.accepted)
    result.refused_suppressed = load.refused
    result.transient_failures = load.transient
    seen: dict[str, int] = {}
    for _rcpt, msgid in sink.copies:
        seen[msgid] = seen.get(msgid, 0) + 1
    result.delivered_unique = len([m for m in load.accepted if m in seen])
    result.duplicates = sum(n - 1 for n in seen.values() if n > 1)
    missing = [m for m in load.accepted if m not in seen]
    result.pending_in_outbox = len([m for m in missing if m in pending])
    result.lost_ids = [m for m in missing if m not in pending][:20]
    result.lost = len([m for m in missing if m not in pending])
    for rcpt, msgid in sink.copies:
        acked = load.acks.get(rcpt)
        sent = load.rcpt_sent.get(msgid)
        if acked is not None and sent is not None and sent[1] > acked:
            result.leak_ids.append(msgid)
    result.leaks = len(result.leak_ids)
    result.unsubscribes_cli = load.cli_unsubs
    result.unsubscribes_one_click = load.click_unsubs
    result.accepted_per_second = round(result.accepted / seconds, 1) if seconds else 0.0
    return result


def main(argv: list[str]) -> int:
    """Parse options, run, print; exit 1 on any loss or leak."""
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--unsubscribes", type=int, default=10)
    parser.add_argument(
        "--upstream-down", type=float, default=0.0, help="Stop the upstream this many seconds mid-run."
    )
    parser.add_argument("--json", action="store_true", help="Print the figures as one JSON object.")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder (serve.log, ledger).")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="consentgate-soak-"))
    result = asyncio.run(
        soak(args.seconds, args.kills, args.clients, args.unsubscribes, folder, args.upstream_down)
    )
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        for key, value in asdict(result).items():
            print(f"{key:>24}: {value}")
        print(f"{'work folder':>24}: {folder if args.keep else '(removed)'}")
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 1 if result.lost or result.leaks else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
