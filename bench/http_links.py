"""Benchmark: the HTTP link service (uvicorn, one process) against a bare app on the same server.

Run: .venv/bin/python -m bench links [--requests N] [--connections N]

The server runs in its own process (a SQLite ledger with one client and N subjects); the load
generator is a raw asyncio HTTP/1.1 keep-alive client (cheaper than any HTTP library, so the
server is what is measured). Baseline: a bare Starlette route answering "ok" on the same
HttpServer — the floor of uvicorn + Starlette here. Figures: requests/s and median latency.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def _serve(kind: str, folder: str, subjects: int, out: Queue[Any]) -> None:
    """Build a ledger and serve the link service (or the bare app); report port and tokens."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ledger import tokens
    from ledger.models import Client
    from ledger.service import LedgerService
    from ledger.store import open_store
    from ledger.store.migrate import migrate
    from smtp_gateway.http import HttpServer, LinkServiceConfig, build_app

    now = datetime.now(UTC)
    store = await open_store(f"sqlite:///{folder}/ledger.db")
    await migrate(store.db)
    keys = tokens.TokenKeys({1: secrets.token_bytes(32)}, 1)
    service = LedgerService(store, secrets.token_bytes(32), token_keys=keys)
    client = await store.add_client(Client("acme", "Acme"), now)
    minted = []
    for i in range(subjects):
        identity = service.identify(f"user{i}@example.org")
        await store.ensure_subject(identity, now)
        minted.append(service.mint_token(client, 1, identity.subject_key, now))
    link = tokens.sign_link("https://acme.example/landing", keys)
    if kind == "bare":

        async def ok(request: Any) -> PlainTextResponse:
            """The floor: no database, no template."""
            return PlainTextResponse("ok")

        app: Any = Starlette(routes=[Route("/ok", ok)])
    else:
        app = build_app(service, LinkServiceConfig())
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    out.put((server.address[1], minted, link))
    await asyncio.Event().wait()


def _server_process(kind: str, folder: str, subjects: int, out: Queue[Any]) -> None:
    """Process entry point."""
    import logging

    logging.disable(logging.INFO)
    asyncio.run(_serve(kind, folder, subjects, out))


async def _load(
    port: int, requests: list[bytes], connections: int
) -> tuple[float, list[float], dict[int, int]]:
    """Send ``requests`` over ``connections`` keep-alive connections; (seconds, latencies, statuses)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            request = queue.pop()
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return time.perf_counter() - started, latencies, statuses


def _get(path: str) -> bytes:
    """A GET request."""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def _one_click(path: str) -> bytes:
    """An RFC 8058 one-click POST."""
    body = b"List-Unsubscribe=One-Click"
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def main(argv: list[str]) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(prog="python -m bench links")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("bare", "links"):
            out: Queue[Any] = ctx.Queue()
            proc = ctx.Process(target=_server_process, args=(kind, f"{folder}/{kind}", args.requests, out))
            Path(f"{folder}/{kind}").mkdir()
            proc.start()
            try:
                port, minted, link = out.get(timeout=120)
                if kind == "bare":
                    cases = {"bare GET /ok": [_get("/ok")] * args.requests}
                else:
                    cases = {
                        "GET /u/TOKEN (page)": [_get(f"/u/{t}") for t in minted],
                        "GET /o/TOKEN (open)": [_get(f"/o/{t}") for t in minted],
                        "GET /c/TOKEN/LINK (click)": [_get(f"/c/{t}/{link}") for t in minted],
                        "POST /u/TOKEN (one-click)": [_one_click(f"/u/{t}") for t in minted],
                    }
                for name, requests in cases.items():
                    seconds, latencies, statuses = asyncio.run(_load(port, requests, args.connections))
                    rows.append(
                        (name, len(requests) / seconds, statistics.median(latencies) * 1000, statuses)
                    )
            finally:
                proc.terminate()
                proc.join()
    floor = rows[0][1]
    print(f"{'request':30} {'req/s':>9} {'median ms':>10} {'vs bare':>8}  statuses")
    for name, rate, median, statuses in rows:
        print(f"{name:30} {rate:9.0f} {median:10.2f} {rate / floor:8.2f}  {statuses}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
