"""The README's embedded default, run for real: init, client add, dkim-keygen, serve, send, find the .eml."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from submission_support import MESSAGE, free_port

from smtp_gateway.server import wait_for_port

CLI = [str(Path(sys.executable).parent / "consentgate")]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], int]]:
    """A fresh installation in ``tmp_path`` on free ports: (folder, environment, submission port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    ports = [free_port() for _ in range(3)]
    env |= {
        "CONSENTGATE_SMTP__LISTEN": f"127.0.0.1:{ports[0]}",
        "CONSENTGATE_SMTP__INBOUND_LISTEN": f"127.0.0.1:{ports[1]}",
        "CONSENTGATE_HTTP__LISTEN": f"127.0.0.1:{ports[2]}",
    }
    yield tmp_path, env, ports[0]


def cli(folder: Path, env: dict[str, str], *args: str) -> str:
    """Run a consentgate command in ``folder``; its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run([*CLI, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def start(folder: Path, env: dict[str, str], port: int, *extra: str) -> subprocess.Popen[str]:
    """Start `consentgate serve` and wait until it accepts connections."""
    proc = subprocess.Popen(
        [*CLI, "serve", *extra],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not wait_for_port("127.0.0.1", port, timeout=20):
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"serve did not start:\n{out}\n{err}")
    return proc


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, expect a clean exit; returns stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("serve did not stop on SIGTERM")
    assert proc.returncode == 0, err
    return err


def test_first_message_lands_in_data_outbox(node: tuple[Path, dict[str, str], int]) -> None:
    """init → client add → dkim-keygen → serve → smtplib: a DKIM-valid copy appears in data/outbox/."""
    folder, env, port = node
    cli(folder, env, "init")
    credentials = json.loads(cli(folder, env, "client", "add", "acme", "--domain", "acme.example", "--json"))
    printed = cli(folder, env, "client", "dkim-keygen", "acme", "--selector", "cg1")
    record = re.search(r"cg1\._domainkey\.acme\.example\. IN TXT \( (.*) \)", printed.replace("\n", ""))
    assert record is not None
    txt = "".join(re.findall(r'"([^"]*)"', record.group(1)))
    proc = start(folder, env, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.login(credentials["username"], credentials["password"])
            assert client.sendmail("news@acme.example", ["reader@example.org"], MESSAGE) == {}
    finally:
        stop(proc)
    copies = sorted((folder / "data" / "outbox").glob("*.eml"))
    assert len(copies) == 1
    assert not list((folder / "data" / "outbox").glob(".*"))  # no temp file left behind
    content = copies[0].read_bytes()
    assert content.startswith(b"Return-Path: <bounces+") and b"Delivered-To: reader@example.org" in content
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in content
    signed = content.split(b"\r\n", 2)[2]  # what the upstream got: without the delivery headers
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: txt.encode())


def test_workers_share_the_port(node: tuple[Path, dict[str, str], int]) -> None:
    """`serve --workers 2`: two processes on one port (SO_REUSEPORT), every message delivered once."""
    folder, env, port = node
    cli(folder, env, "init")
    credentials = json.loads(cli(folder, env, "client", "add", "acme", "--domain", "acme.example", "--json"))
    proc = start(folder, env, port, "--workers", "2")
    try:
        for n in range(6):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.login(credentials["username"], credentials["password"])
                client.sendmail("news@acme.example", [f"reader{n}@example.org"], MESSAGE)
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
    finally:
        stop(proc)
    assert len(children) == 2
    assert len(list((folder / "data" / "outbox").glob("*.eml"))) == 6
