"""The baseline: a bare aiosmtpd → aiosmtplib pass-through with a pooled upstream (no policy, no rewrite).

``python -m bench.passthrough LISTEN_PORT UPSTREAM_PORT [POOL]``: relays each message as one
transaction (all recipients) on a reused upstream connection. Runs on uvloop like the gateway.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP

from smtp_gateway.server import new_event_loop


class PassThrough:
    """aiosmtpd handler relaying every message upstream unchanged."""

    def __init__(self, port: int, pool: int) -> None:
        """Relay to 127.0.0.1:``port`` with up to ``pool`` connections."""
        self.port = port
        self.slots = asyncio.Semaphore(pool)
        self.idle: list[aiosmtplib.SMTP] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Forward the message; a temporary failure tells the client to retry."""
        async with self.slots:
            conn = self.idle.pop() if self.idle else None
            if conn is None:
                conn = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False)
                await conn.connect()
            try:
                await conn.sendmail(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)
            except aiosmtplib.SMTPException as exc:
                conn.close()
                return f"451 4.3.0 upstream: {exc}"
            self.idle.append(conn)
        return "250 2.0.0 OK"


async def serve(listen: int, upstream: int, pool: int) -> None:
    """Serve until SIGTERM."""
    handler = PassThrough(upstream, pool)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="passthrough", decode_data=False, loop=loop), "127.0.0.1", listen
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    listen_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    pool_size = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(listen_port, upstream_port, pool_size))
