"""The HTTP link service: unsubscribe pages and RFC 8058 one-click, click redirects, open pixel.

Routes (``TOKEN`` is a token minted by :meth:`LedgerService.mint_token`):

- ``GET /u/TOKEN`` — a page naming the client, with a button; changes nothing (scanners GET).
- ``POST /u/TOKEN`` — ``List-Unsubscribe=One-Click`` (RFC 8058, multipart or urlencoded):
  suppress for the client, answer 200, never redirect; ``action=unsubscribe|global|undo`` from
  the page's buttons.
- ``GET /c/TOKEN/LINK`` — record ``clicked`` (link id, country), 302 to the signed URL.
- ``GET /o/TOKEN`` — record ``opened``, answer a 1×1 GIF.
- ``GET /healthz``, ``GET /metrics``.

The client's IP is read in memory to derive the country and dropped; no IP and no user agent is
stored or logged.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from ledger import tokens
from ledger.errors import InvalidToken, LedgerError, SuppressedAddress
from ledger.models import GLOBAL_SCOPE, ConsentProof, EventKind, Reason
from ledger.service import LedgerService, TokenTarget
from ledger.store.engagement import EngagementStore
from ledger.store.ledger_store import InteractionEvent
from smtp_gateway.errors import GatewayError
from smtp_gateway.http.api import API_PREFIX, build_api
from smtp_gateway.http.config import LinkServiceConfig
from smtp_gateway.http.errors import BadForm, UnsupportedBody, error_response, problem_response
from smtp_gateway.http.geo import CountryLookup, IPNetwork, client_ip, open_country_lookup, parse_networks
from smtp_gateway.http.i18n import choose_language, messages
from smtp_gateway.http.middleware import BodyLimitMiddleware, RequestLogMiddleware
from smtp_gateway.http.pages import PageRenderer
from smtp_gateway.metrics import CLICKS, OPENS, REGISTRY, UNSUBSCRIBES

# The smallest transparent GIF (43 bytes).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
ONE_CLICK = "one-click"

SOURCE_ONE_CLICK = "list-unsubscribe-one-click"
SOURCE_PAGE = "unsubscribe-page"
SOURCE_PAGE_GLOBAL = "unsubscribe-page-global"
SOURCE_UNDO = "unsubscribe-page-undo"

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    """The current time (the HTTP adapter reads the clock; the core only receives it)."""
    return datetime.now(UTC)


@dataclass
class LinkService:
    """The link service's dependencies and use cases; the routes below are thin over it."""

    service: LedgerService
    config: LinkServiceConfig
    engagement: EngagementStore
    geo: CountryLookup
    proxies: tuple[IPNetwork, ...]
    metrics_networks: tuple[IPNetwork, ...]
    pages: PageRenderer
    keys: tokens.TokenKeys
    clock: Clock

    # -- request helpers -----------------------------------------------------------------------

    def language(self, conn: HTTPConnection, form: FormData | None = None) -> str:
        """The page language for this request (form field, ?lang=, Accept-Language, default)."""
        override = form.get("lang") if form is not None else None
        chosen = override if isinstance(override, str) else conn.query_params.get("lang")
        return choose_language(chosen, conn.headers.get("accept-language", ""), self.config.default_language)

    def country(self, conn: HTTPConnection) -> str:
        """The visitor's country, from its IP (read here, never kept)."""
        peer = conn.client.host if conn.client else None
        address = client_ip(peer, conn.headers.getlist("x-forwarded-for"), self.proxies)
        return "" if address is None else self.geo.country(address)

    async def target(self, token: str) -> TokenTarget:
        """What ``token`` points at; any doubt is InvalidToken (→ the same 404)."""
        return await self.service.resolve_token(token, self.clock())

    # -- use cases -----------------------------------------------------------------------------

    async def unsubscribe(self, target: TokenTarget, channel: str, source: str, country: str) -> bool:
        """Suppress the subject for the token's client; record one ``unsubscribed`` event if new."""
        now = self.clock()
        added = await self.service.store.suppress(
            target.client.id, target.subject_key, Reason.UNSUBSCRIBED, source, now
        )
        if added:
            await self._unsubscribed_event(target, channel, country, now)
        return added

    async def unsubscribe_globally(self, target: TokenTarget, country: str) -> bool:
        """Suppress the subject for every client (offered only when the operator enables it)."""
        now = self.clock()
        added = await self.service.store.suppress(
            GLOBAL_SCOPE, target.subject_key, Reason.GLOBAL_OPTOUT, SOURCE_PAGE_GLOBAL, now
        )
        if added:
            await self._unsubscribed_event(target, "global", country, now)
        return added

    async def _unsubscribed_event(
        self, target: TokenTarget, channel: str, country: str, now: datetime
    ) -> None:
        """The interaction event and the metric of a new unsubscribe."""
        event = InteractionEvent(
            target.client.id,
            EventKind.UNSUBSCRIBED,
            now,
            target.campaign_num,
            target.subject_key,
            reason=channel,
            country=country,
        )
        await self.engagement.record(event, engagement=False)
        UNSUBSCRIBES.labels(channel).inc()

    async def undo(self, target: TokenTarget) -> bool:
        """Re-subscribe after an unsubscribe from this page: an explicit re-consent with its proof.

        Only a plain unsubscribe is undone here; a complaint, a bounce or a global opt-out
        (SuppressedAddress) is not lifted by a button. Returns False when refused.
        """
        state = await self.service.store.lookup(target.client.id, target.subject_key)
        scopes = {s.scope: s.reason for s in state.suppressions}
        if GLOBAL_SCOPE in scopes:
            return False
        reason = scopes.get(target.client.id)
        if reason is None:
            return True
        if reason is not Reason.UNSUBSCRIBED:
            return False
        now = self.clock()
        proof = ConsentProof(source=SOURCE_UNDO, at=now, method="undo button after unsubscribing")
        try:
            await self.service.store.record_consent(
                target.client.id, target.subject_key, proof, now, reconsent=True
            )
        except SuppressedAddress:
            return False
        return True

    async def click(self, target: TokenTarget, link_id: str, country: str) -> None:
        """Record a click on ``link_id``: an event and, always, engagement."""
        if not target.client.tracking:
            return
        event = InteractionEvent(
            target.client.id,
            EventKind.CLICKED,
            self.clock(),
            target.campaign_num,
            target.subject_key,
            link_id=link_id,
            country=country,
        )
        await self.engagement.record(event, engagement=True)
        CLICKS.inc()

    async def open(self, target: TokenTarget, country: str) -> None:
        """Record an open: engagement only when the operator counts opens as contact."""
        if not target.client.tracking:
            return
        event = InteractionEvent(
            target.client.id,
            EventKind.OPENED,
            self.clock(),
            target.campaign_num,
            target.subject_key,
            country=country,
        )
        await self.engagement.record(event, engagement=self.config.opens_count_as_engagement)
        OPENS.inc()

    # -- routes --------------------------------------------------------------------------------

    async def unsubscribe_page(self, request: Request) -> Response:
        """GET /u/TOKEN: the confirmation page (or the done page when already unsubscribed)."""
        target = await self.target(request.path_params["token"])
        lang = self.language(request)
        state = await self.service.store.lookup(target.client.id, target.subject_key)
        scopes = {s.scope for s in state.suppressions}
        if GLOBAL_SCOPE in scopes:
            return self.pages.render("global_done.html", lang=lang, client=target.client)
        page = "done.html" if target.client.id in scopes else "confirm.html"
        return self.pages.render(
            page, lang=lang, client=target.client, offer_global=self.config.offer_global_optout
        )

    async def unsubscribe_post(self, request: Request) -> Response:
        """POST /u/TOKEN: RFC 8058 one-click, or one of the page's buttons."""
        target = await self.target(request.path_params["token"])
        form = await _read_form(request)
        lang = self.language(request, form)
        one_click = form.get("List-Unsubscribe")
        action = form.get("action")
        country = self.country(request)
        if isinstance(one_click, str) and one_click.strip().lower() == ONE_CLICK:
            await self.unsubscribe(target, ONE_CLICK, SOURCE_ONE_CLICK, country)
            return PlainTextResponse(messages(lang)["unsubscribed_plain"], headers=NO_STORE)
        if action == "unsubscribe":
            await self.unsubscribe(target, "page", SOURCE_PAGE, country)
            return self.pages.render(
                "done.html", lang=lang, client=target.client, offer_global=self.config.offer_global_optout
            )
        if action == "global" and self.config.offer_global_optout:
            await self.unsubscribe_globally(target, country)
            return self.pages.render("global_done.html", lang=lang, client=target.client)
        if action == "undo":
            if await self.undo(target):
                return self.pages.render("resubscribed.html", lang=lang, client=target.client)
            words = messages(lang, target.client.name)
            return self.pages.render(
                "message.html",
                lang=lang,
                client=target.client,
                status_code=409,
                title=words["undo_button"],
                text=words["undo_refused_text"],
            )
        raise BadForm("the form names no known action")

    async def click_redirect(self, request: Request) -> Response:
        """GET /c/TOKEN/LINK: record the click, then 302 to the URL the gateway signed."""
        # The link is checked first: it needs no database, and an altered one is 404 either way.
        link_id, url = tokens.verify_link(request.path_params["link"], self.keys)
        target = await self.target(request.path_params["token"])
        # HEAD is what link checkers send; only a GET is someone following the link.
        if request.method == "GET":
            await self.click(target, link_id, self.country(request))
        return RedirectResponse(url, status_code=302, headers=NO_STORE)

    async def open_pixel(self, request: Request) -> Response:
        """GET /o/TOKEN (or /o/TOKEN.gif): record the open, answer a 1×1 GIF."""
        token = request.path_params["token"].removesuffix(".gif")
        target = await self.target(token)
        if request.method == "GET":
            await self.open(target, self.country(request))
        return Response(PIXEL_GIF, media_type="image/gif", headers=NO_STORE)

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: 200 when the database answers, else 503."""
        try:
            await self.service.store.db.fetchval("SELECT 1")
        except Exception:
            return PlainTextResponse("database unavailable\n", status_code=503, headers=NO_STORE)
        return PlainTextResponse("ok\n", headers=NO_STORE)

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: Prometheus text, only to a direct (unproxied) peer in ``metrics_networks``."""
        peer = request.client.host if request.client else None
        address = client_ip(peer, [], ())
        proxied = "x-forwarded-for" in request.headers or "forwarded" in request.headers
        allowed = address is not None and any(
            address.version == net.version and address in net for net in self.metrics_networks
        )
        if proxied or not allowed:
            raise HTTPException(404)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)


async def _read_form(request: Request) -> FormData:
    """The POSTed form; only the two encodings RFC 8058 and HTML forms use are accepted."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in FORM_TYPES:
        raise UnsupportedBody("expected a form body")
    # Small caps: a one-click body has one field, the page's forms two.
    return await request.form(max_files=0, max_fields=16, max_part_size=4096)


def build_app(
    service: LedgerService,
    config: LinkServiceConfig,
    *,
    clock: Clock | None = None,
    country_lookup: CountryLookup | None = None,
) -> Starlette:
    """The link service as a Starlette app (serve it with :class:`smtp_gateway.http.server.HttpServer`).

    ``service`` must carry the token keys. ``clock`` and ``country_lookup`` default to the real
    clock and the configured (or bundled) IP-to-country database.
    """
    if service.token_keys is None:
        raise GatewayError("the link service needs a LedgerService with token keys")
    pages = PageRenderer(config.templates_dir)
    links = LinkService(
        service=service,
        config=config,
        engagement=EngagementStore(service.store.db),
        geo=country_lookup or open_country_lookup(config.geoip_database),
        proxies=parse_networks(config.trusted_proxies),
        metrics_networks=parse_networks(config.metrics_networks),
        pages=pages,
        keys=service.token_keys,
        clock=clock or _utc_now,
    )

    def render_error(conn: HTTPConnection, exc: BaseException) -> Response:
        """The one mapping from exceptions to responses (see smtp_gateway.http.errors)."""
        if conn.url.path.startswith(API_PREFIX + "/"):
            return problem_response(exc)
        return error_response(conn, exc, pages, config.default_language)

    async def handle(request: Request, exc: Exception) -> Response:
        """Starlette's exception hook, delegating to the one mapping."""
        return render_error(request, exc)

    routes: list[BaseRoute] = [
        Route("/u/{token}", links.unsubscribe_page, methods=["GET"]),
        Route("/u/{token}", links.unsubscribe_post, methods=["POST"]),
        Route("/c/{token}/{link}", links.click_redirect, methods=["GET"]),
        Route("/o/{token}", links.open_pixel, methods=["GET"]),
        Route("/healthz", links.healthz, methods=["GET"]),
        Route("/metrics", links.metrics, methods=["GET"]),
    ]
    if config.api.enabled:
        routes.append(Mount(API_PREFIX, app=build_api(service, config.api, links.clock)))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestLogMiddleware, render_error=render_error),
            Middleware(
                BodyLimitMiddleware,
                limit=config.max_body_bytes,
                # Imports stream large files; every other API body is JSON.
                limits=(
                    (re.compile(rf"{API_PREFIX}/.+/import$"), config.api.max_import_bytes),
                    (re.compile(rf"{API_PREFIX}/"), config.api.max_json_bytes),
                ),
            ),
        ],
        exception_handlers={
            HTTPException: handle,
            InvalidToken: handle,
            LedgerError: handle,
            GatewayError: handle,
        },
    )
    app.state.links = links
    return app
