"""The HTTP link service: unsubscribe pages, RFC 8058 one-click, click redirects, open pixel."""

from smtp_gateway.http.app import build_app
from smtp_gateway.http.config import LinkServiceConfig
from smtp_gateway.http.server import HttpServer, serve_http

__all__ = ["HttpServer", "LinkServiceConfig", "build_app", "serve_http"]
