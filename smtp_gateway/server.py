"""Listeners and the process model: components started in one loop, N processes on one port.

A *component* is anything with ``async start()`` and ``async stop()``: the submission listener,
the outbox worker, the event log, the HTTP link service, the inbound listener. ``serve`` builds
a list of them, starts them in order and stops them in reverse order on SIGTERM/SIGINT.

``--workers N`` forks N processes; each binds its own listening sockets with ``SO_REUSEPORT`` so
the kernel spreads connections across them (no accept thundering herd, no shared socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from smtp_gateway.errors import GatewayError

log = logging.getLogger(__name__)


class ListenError(GatewayError):
    """A listening address cannot be bound (in use, not local, no permission)."""


class Component(Protocol):
    """A part of the running server with a start and a stop."""

    async def start(self) -> None:
        """Start serving (returns once ready)."""

    async def stop(self) -> None:
        """Stop serving and release resources."""


def split_hostport(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) → (host, port)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket; ``reuse_port`` lets N processes share the port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve listen address {host}:{port}: {exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise ListenError("this platform has no SO_REUSEPORT: run with --workers 1")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class TcpListener:
    """A component serving an asyncio protocol factory on one socket."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
    ) -> None:
        """Listen on ``host:port`` (port 0: any free port, see :attr:`port` once started)."""
        self.name = name
        self.factory = factory
        self.host, self.requested_port = host, port
        self.reuse_port = reuse_port
        self.server: asyncio.Server | None = None
        self.port = port

    async def start(self) -> None:
        """Bind and serve."""
        sock = bind_socket(self.host, self.requested_port, reuse_port=self.reuse_port)
        self.port = sock.getsockname()[1]
        self.server = await asyncio.get_running_loop().create_server(self.factory, sock=sock)
        log.info("%s listening on %s:%d", self.name, self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting; sessions in progress are left to finish or time out."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), timeout=5)
            self.server = None


async def run_components(components: Sequence[Component], stop: asyncio.Event) -> None:
    """Start ``components`` in order, wait for ``stop``, stop them in reverse order."""
    started: list[Component] = []
    try:
        for component in components:
            await component.start()
            started.append(component)
        await stop.wait()
    finally:
        for component in reversed(started):
            try:
                await component.stop()
            except Exception:  # one failing stop must not keep the others running
                log.exception("error while stopping %r", component)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (a clean shutdown flushes the event log)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def new_event_loop(prefer_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """uvloop when installed and wanted (faster sockets), else the standard loop."""
    if prefer_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def run_workers(count: int, target: Callable[[int], Any]) -> int:
    """Fork ``count`` processes running ``target(index)``; return the worst exit status.

    SIGTERM/SIGINT to the parent are passed to every worker; a worker that dies is not
    restarted (the service manager restarts the whole service), and its siblings are stopped.
    """
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the child: run and never return into the parent's code
            status = 0
            try:
                target(index)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d crashed", index)
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    worst = 0
    try:
        while children:
            try:
                pid, raw = os.wait()
            except ChildProcessError:
                break
            children.pop(pid, None)
            status = os.waitstatus_to_exitcode(raw)
            if status != 0:
                worst = worst or (status if status > 0 else 1)
                forward(signal.SIGTERM, None)  # one worker down: take the service down cleanly
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return worst


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> bool:
    """Whether something accepts connections on ``host:port`` within ``timeout`` (tests, bench)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False
