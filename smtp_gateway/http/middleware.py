"""ASGI middleware of the link service: request log without personal data, body size limit.

The request log names the method, the route *template* (``/u/{token}``, never the path: it holds
a token), the status and the duration. Uvicorn's own access log is off: it would write the
client's address.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smtp_gateway.http.errors import BodyTooLarge
from smtp_gateway.metrics import HTTP_REQUEST_SECONDS, HTTP_RESPONSES

logger = logging.getLogger("consentgate.http")

UNMATCHED_ROUTE = "(unmatched)"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# Sent with every response: no sniffing, no framing, and the token in the URL never leaks to a
# logo host or to the site a click redirects to.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)

ErrorRenderer = Callable[[HTTPConnection, BaseException], Response]


def route_of(scope: Scope) -> str:
    """The matched route's template, or a fixed label (never the raw path)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    # A mounted app (the API under /api/v1) matches its routes below the mount's root_path.
    return f"{scope.get('root_path', '')}{path}" if isinstance(path, str) else UNMATCHED_ROUTE


class RequestLogMiddleware:
    """Logs and measures every request; turns an unexpected exception into the error page."""

    def __init__(self, app: ASGIApp, render_error: ErrorRenderer) -> None:
        """Wrap ``app``; ``render_error`` is the service's one exception-to-response mapping."""
        self.app = app
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request, recording method, route template, status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            """Note the status and add the security headers."""
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if response_started:
                raise
            response = self.render_error(HTTPConnection(scope), exc)
            await response(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = route_of(scope)
            method = scope.get("method", "")
            method = method if method in _KNOWN_METHODS else "OTHER"
            HTTP_REQUEST_SECONDS.labels(route).observe(elapsed)
            HTTP_RESPONSES.labels(route, str(status)).inc()
            logger.info("%s %s %d %.1fms", method, route, status, elapsed * 1000)


class BodyLimitMiddleware:
    """Refuses request bodies larger than the limit for their path, declared or streamed (413).

    ``limits`` are (path pattern, bytes) pairs, the first pattern that matches the start of the
    path wins; other paths get ``limit``.
    """

    def __init__(
        self, app: ASGIApp, limit: int, limits: tuple[tuple[re.Pattern[str], int], ...] = ()
    ) -> None:
        """Wrap ``app`` with a body limit of ``limit`` bytes (or a pattern's own)."""
        self.app = app
        self.default_limit = limit
        self.limits = limits

    def limit_for(self, path: str) -> int:
        """The body limit for ``path``."""
        for pattern, limit in self.limits:
            if pattern.match(path):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Content-Length up front, then count the bytes actually received."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                raise BodyTooLarge(f"declared body of {len(value)} digits over the {limit}-byte limit")
        received = 0

        async def limited_receive() -> Message:
            """Pass body chunks through until the limit is crossed."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"body over the {limit}-byte limit")
            return message

        await self.app(scope, limited_receive, send)
