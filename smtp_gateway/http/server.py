"""Serve the link service with uvicorn inside an asyncio loop someone else runs (``serve``).

Uvicorn is started piecewise (startup, main loop task, shutdown) instead of ``Server.serve()``,
which would take over the process's signal handlers. Its access log is off and its proxy-header
handling is off: the app derives the country from the client address itself and logs requests
without any address.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from smtp_gateway.errors import GatewayError

GRACEFUL_SHUTDOWN_SECONDS = 5.0
KEEP_ALIVE_SECONDS = 5


class HttpListenError(GatewayError):
    """The link service cannot listen on the configured address."""


class _NoTrace(logging.Filter):
    """Drops uvicorn's TRACE records: they start with the client's ``host:port``."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep DEBUG and above."""
        return record.levelno >= logging.DEBUG


_NO_TRACE = _NoTrace()


def _silence_access_log(config: uvicorn.Config) -> None:
    """Make sure uvicorn never writes its access log line (it starts with the client's address).

    ``access_log=False`` only detaches uvicorn's own handlers: a handler that anyone else attaches
    to ``uvicorn.access`` (a logging config, a test harness) would switch it back on, because
    the protocol decides with ``hasHandlers()``. Each connection's protocol is told directly.
    """
    base: Any = config.http_protocol_class

    class _NoAccessLog(base):  # type: ignore[misc]
        """uvicorn's HTTP protocol with the access log forced off."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            """Build the protocol, then turn its access log off."""
            super().__init__(*args, **kwargs)
            self.access_log = False

    config.http_protocol_class = _NoAccessLog


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); raises HttpListenError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family, reuse_port=reuse_port)
    except (OSError, ValueError) as exc:
        raise HttpListenError(f"the link service cannot listen on {host}:{port}: {exc}") from None


class HttpServer:
    """The link service's listener as a start/stop component of the ``serve`` loop."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 8025,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
    ) -> None:
        """Serve ``app`` on ``sock`` (pre-bound, e.g. shared by workers) or on ``host:port``.

        The socket is owned by the server from :meth:`start` on and closed by :meth:`stop`.
        """
        self.app = app
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self._sock = sock
        self._server: uvicorn.Server | None = None
        self._main_loop: asyncio.Task[None] | None = None
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) listened on (the real port when 0 was asked for, once started)."""
        return self._address or (self.host, self.port)

    @property
    def url(self) -> str:
        """``http://host:port`` of the listener (for tests and the startup message)."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        """Bind (unless given a socket) and start accepting requests; returns once listening."""
        if self._server is not None:
            raise RuntimeError("HttpServer already started")
        if self._sock is None:
            self._sock = bind_socket(self.host, self.port, reuse_port=self.reuse_port)
        name = self._sock.getsockname()
        self._address = (str(name[0]), int(name[1]))
        # Accepted connections inherit this from the listening socket. Without it, uvicorn's
        # separate header and body writes meet Nagle and delayed ACKs: ~40 ms per keep-alive
        # request on a pre-bound socket (measured), against ~0.3 ms with it.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = uvicorn.Config(
            self.app,
            access_log=False,
            log_config=None,
            proxy_headers=False,
            server_header=False,
            lifespan="off",
            ws="none",
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_SECONDS),
        )
        config.load()
        _silence_access_log(config)
        logging.getLogger("uvicorn.error").addFilter(_NO_TRACE)
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._sock])
        self._server = server
        self._main_loop = asyncio.create_task(server.main_loop(), name="http-link-service")
        logging.getLogger("consentgate.http").info("link service listening on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), close the socket."""
        server, main_loop = self._server, self._main_loop
        if server is None or main_loop is None:
            return
        server.should_exit = True
        await main_loop
        await server.shutdown(sockets=[self._sock] if self._sock else None)
        self._server = self._main_loop = None

    async def __aenter__(self) -> HttpServer:
        """Start on entering ``async with``."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop on leaving ``async with``."""
        await self.stop()


async def serve_http(app: ASGIApp, sock: socket.socket) -> HttpServer:
    """Start serving ``app`` on a pre-bound socket in the running loop; stop it with ``.stop()``."""
    server = HttpServer(app, sock=sock)
    await server.start()
    return server
