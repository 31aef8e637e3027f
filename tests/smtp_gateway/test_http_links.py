"""The link service's routes in process (httpx ASGI transport), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import NOW
from linkservice_support import ADDRESS, PROXY, ROMANIAN_IP, US_IP, LinkEnv, make_env

from ledger import tokens
from ledger.models import GLOBAL_SCOPE, Reason
from ledger.secret_file import Secrets
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from ledger.store.engagement import EngagementStore
from smtp_gateway.http.app import PIXEL_GIF


@pytest.fixture
async def env(store: SqlLedgerStore, test_secrets: Secrets) -> LinkEnv:
    """A ledger with two clients and a subject, on the parametrised backend."""
    return await make_env(store, test_secrets)


async def test_one_click_multipart_and_urlencoded_unsubscribe_with_200_and_no_redirect(env: LinkEnv) -> None:
    """RFC 8058: both encodings suppress for that client only, answer 200, never redirect."""
    app = env.app()
    async with env.client(app) as http:
        multipart = await http.post(f"/u/{env.token}", files={"List-Unsubscribe": (None, "One-Click")})
        assert multipart.request.headers["content-type"].startswith("multipart/form-data")
        assert multipart.status_code == 200
        assert "location" not in multipart.headers
        assert not await env.allowed("acme")
        assert await env.allowed("globex")
        again = await http.post(
            f"/u/{env.token}",
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert again.status_code == 200 and "location" not in again.headers
    # Idempotent: one suppression, one event, however often the mail client retries.
    assert await env.events() == [("acme", 7, "unsubscribed", "one-click", "", "")]
    decision = await env.service.check(ADDRESS, "acme", NOW)
    assert decision.reason is Reason.UNSUBSCRIBED and decision.scope == "acme"


async def test_urlencoded_one_click_alone_unsubscribes(env: LinkEnv) -> None:
    """The urlencoded body on its own (no earlier multipart) suppresses too."""
    async with env.client(env.app()) as http:
        response = await http.post(f"/u/{env.token}", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert not await env.allowed("acme") and await env.allowed("globex")


async def test_get_changes_nothing(env: LinkEnv) -> None:
    """Link scanners GET every link: the page, the HEAD, repeated — nothing is suppressed."""
    async with env.client(env.app()) as http:
        for _ in range(3):
            page = await http.get(f"/u/{env.token}")
            assert page.status_code == 200
        head = await http.head(f"/u/{env.token}")
        assert head.status_code == 200
    assert "Acme Books" in page.text and 'name="action" value="unsubscribe"' in page.text
    assert await env.allowed("acme")
    assert await env.events() == []
    assert await env.store.db.fetchval("SELECT COUNT(*) FROM suppressions") == 0


async def test_page_button_then_undo_is_an_explicit_reconsent(env: LinkEnv) -> None:
    """The page's button unsubscribes; its undo button re-subscribes with proof unsubscribe-page-undo."""
    async with env.client(env.app()) as http:
        done = await http.post(f"/u/{env.token}", data={"action": "unsubscribe", "lang": "en"})
        assert done.status_code == 200 and "You are unsubscribed" in done.text
        assert 'value="undo"' in done.text
        assert not await env.allowed("acme")
        shown = await http.get(f"/u/{env.token}")
        assert "You are unsubscribed" in shown.text  # GET shows the state, still changes nothing
        undone = await http.post(f"/u/{env.token}", data={"action": "undo"})
        assert undone.status_code == 200 and "subscribed again" in undone.text
    assert await env.allowed("acme")
    chain = await env.store.chain_events("acme", env.subject.subject_key)
    assert [(e.kind, e.source, e.detail) for e in chain] == [
        ("opt_out", "unsubscribe-page", "unsubscribed"),
        ("opt_in", "unsubscribe-page-undo", "reconsent"),
    ]
    assert (await env.store.verify_ledger())[1] is None


async def test_undo_never_lifts_a_complaint_or_a_global_optout(env: LinkEnv) -> None:
    """A complaint or a global opt-out is not undone by a button (409, suppression kept)."""
    await env.store.suppress("acme", env.subject.subject_key, Reason.COMPLAINT, "arf", NOW)
    async with env.client(env.app()) as http:
        refused = await http.post(f"/u/{env.token}", data={"action": "undo"})
        assert refused.status_code == 409
        assert not await env.allowed("acme")
        await env.store.suppress(GLOBAL_SCOPE, env.subject.subject_key, Reason.GLOBAL_OPTOUT, "t", NOW)
        assert (await http.post(f"/u/{env.token}", data={"action": "undo"})).status_code == 409
    decision = await env.service.check(ADDRESS, "acme", NOW)
    assert decision.scope == GLOBAL_SCOPE


async def test_global_optout_only_when_offered(env: LinkEnv) -> None:
    """The 'all senders' button exists and works only when the operator enables it."""
    async with env.client(env.app()) as http:
        page = await http.get(f"/u/{env.token}")
        assert 'value="global"' not in page.text
        refused = await http.post(f"/u/{env.token}", data={"action": "global"})
        assert refused.status_code == 400
    assert await env.allowed("globex") and await env.allowed("acme")
    async with env.client(env.app(offer_global_optout=True)) as http:
        page = await http.get(f"/u/{env.token}")
        assert 'value="global"' in page.text
        done = await http.post(f"/u/{env.token}", data={"action": "global"})
        assert done.status_code == 200 and "all senders" in done.text
    assert not await env.allowed("globex") and not await env.allowed("acme")
    assert (await env.service.check(ADDRESS, None, NOW)).reason is Reason.GLOBAL_OPTOUT


async def test_click_redirects_and_records_one_click_with_link_id_and_country(env: LinkEnv) -> None:
    """A click 302s to the signed URL and records one `clicked` with its link id and the country."""
    keys = env.service.token_keys
    assert keys is not None
    url = "https://acme.example/books?id=42&utm=x"
    link = tokens.sign_link(url, keys)
    async with env.client(env.app(), peer=PROXY) as http:
        response = await http.get(f"/c/{env.token}/{link}", headers={"x-forwarded-for": f"{ROMANIAN_IP}"})
    assert response.status_code == 302
    assert response.headers["location"] == url
    assert response.headers["referrer-policy"] == "no-referrer"
    assert await env.events() == [("acme", 7, "clicked", "", tokens.link_id(url, keys), "RO")]
    engaged = await EngagementStore(env.store.db).last_engagement("acme", env.subject.subject_key)
    assert engaged == NOW


async def test_forwarded_for_ignored_from_an_untrusted_peer(env: LinkEnv) -> None:
    """X-Forwarded-For from a peer that is not a trusted proxy is not believed."""
    keys = env.service.token_keys
    assert keys is not None
    link = tokens.sign_link("https://acme.example/", keys)
    async with env.client(env.app(), peer=US_IP) as http:
        response = await http.get(f"/c/{env.token}/{link}", headers={"x-forwarded-for": ROMANIAN_IP})
    assert response.status_code == 302
    assert [row[5] for row in await env.events()] == ["US"]


async def test_altered_link_id_or_url_is_404(env: LinkEnv) -> None:
    """Changing one character of the link id, or pointing it at another URL, gives 404."""
    keys = env.service.token_keys
    assert keys is not None
    link = tokens.sign_link("https://acme.example/a", keys)
    link_id, _, encoded = link.partition(".")
    other = base64.urlsafe_b64encode(b"https://evil.example/a").rstrip(b"=").decode()
    flipped = ("b" if link_id[3] != "b" else "c").join((link_id[:3], link_id[4:]))
    async with env.client(env.app()) as http:
        for bad in (f"{link_id}.{other}", f"{flipped}.{encoded}", link_id, f"{link_id}.", encoded):
            response = await http.get(f"/c/{env.token}/{bad}")
            assert response.status_code == 404, bad
            assert "location" not in response.headers
    assert await env.events() == []


async def test_open_pixel_is_an_uncacheable_gif_and_counts_engagement_only_if_configured(
    env: LinkEnv,
) -> None:
    """The pixel is a 1×1 GIF with no-store; opens move engagement only when configured."""
    engagement = EngagementStore(env.store.db)
    async with env.client(env.app()) as http:
        response = await http.get(f"/o/{env.token}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert "no-store" in response.headers["cache-control"]
    assert response.content == PIXEL_GIF and response.content[:6] == b"GIF89a"
    assert (
        int.from_bytes(response.content[6:8], "little")
        == int.from_bytes(response.content[8:10], "little")
        == 1
    )
    assert [row[2] for row in await env.events()] == ["opened"]
    assert await engagement.last_engagement("acme", env.subject.subject_key) is None
    env.clock_now = NOW + timedelta(hours=1)
    async with env.client(env.app(opens_count_as_engagement=True)) as http:
        assert (await http.get(f"/o/{env.token}.gif")).status_code == 200
    assert await engagement.last_engagement("acme", env.subject.subject_key) == NOW + timedelta(hours=1)


async def test_no_tracking_client_records_nothing_but_still_redirects(env: LinkEnv) -> None:
    """A client with tracking off: clicks still reach the URL, nothing is recorded."""
    await env.store.update_client("acme", tracking=False)
    keys = env.service.token_keys
    assert keys is not None
    async with env.client(env.app()) as http:
        click = await http.get(f"/c/{env.token}/{tokens.sign_link('https://acme.example/', keys)}")
        pixel = await http.get(f"/o/{env.token}")
    assert click.status_code == 302 and pixel.status_code == 200
    assert await env.events() == []


async def test_bad_tokens_all_give_the_same_plain_404(env: LinkEnv, test_secrets: Secrets) -> None:
    """Forged, truncated, expired, unknown-key, unknown-subject and deleted-client tokens look alike."""
    other_keys = tokens.TokenKeys({9: secrets.token_bytes(32)}, 9)
    stranger = LedgerService(env.store, test_secrets.pepper, token_keys=other_keys)
    last = env.token[-1]
    bad = {
        "forged": env.token[:-1] + ("a" if last != "a" else "b"),
        "truncated": env.token[:-2],
        "short": env.token[:8],
        "expired": env.mint(now=NOW - timedelta(days=401)),
        "unknown key": stranger.mint_token(env.acme, 7, env.subject.subject_key, NOW),
        "unknown subject": env.service.mint_token(env.acme, 7, secrets.token_bytes(32), NOW),
        "deleted client": env.mint(env.globex),
    }
    await env.store.db.execute("DELETE FROM clients WHERE id = $1", "globex")
    bodies = set()
    async with env.client(env.app()) as http:
        for name, token in bad.items():
            for method, path in (("GET", f"/u/{token}"), ("POST", f"/u/{token}"), ("GET", f"/o/{token}")):
                response = await http.request(
                    method, path, data={"List-Unsubscribe": "One-Click"} if method == "POST" else None
                )
                assert response.status_code == 404, (name, method, path)
                bodies.add(response.text)
    assert len(bodies) == 1
    body = bodies.pop()
    assert "Acme" not in body and "Globex" not in body and "expired" not in body.lower()
    assert await env.store.db.fetchval("SELECT COUNT(*) FROM suppressions") == 0
    assert await env.events() == []


async def test_languages_from_accept_language_and_override(env: LinkEnv) -> None:
    """Romanian from Accept-Language, English when asked with ?lang=en, and the reverse."""
    async with env.client(env.app()) as http:
        ro = await http.get(f"/u/{env.token}", headers={"accept-language": "ro-RO,ro;q=0.9,en;q=0.8"})
        en = await http.get(f"/u/{env.token}?lang=en", headers={"accept-language": "ro"})
        forced_ro = await http.get(f"/u/{env.token}?lang=ro", headers={"accept-language": "en-GB"})
        fallback = await http.get(f"/u/{env.token}", headers={"accept-language": "de, fr;q=0.5"})
        done_ro = await http.post(f"/u/{env.token}", data={"action": "unsubscribe", "lang": "ro"})
    assert '<html lang="ro">' in ro.text and "Dezabonează-mă" in ro.text
    assert ro.headers["content-language"] == "ro"
    assert '<html lang="en">' in en.text and "Unsubscribe from Acme Books?" in en.text
    assert '<html lang="ro">' in forced_ro.text
    assert '<html lang="en">' in fallback.text
    assert "V-ați dezabonat" in done_ro.text


async def test_client_branding_and_per_client_template_override(env: LinkEnv, tmp_path: Path) -> None:
    """The page shows the client's logo and colour; a client's own template replaces the built-in."""
    folder = tmp_path / "pages" / "globex"
    folder.mkdir(parents=True)
    (folder / "confirm.html").write_text(
        '{% extends "base.html" %}{% block content %}<h1>Globex special: {{ t.confirm_title }}</h1>'
        '<form method="post"><button name="action" value="unsubscribe">{{ t.confirm_button }}</button></form>'
        "{% endblock %}"
    )
    app = env.app(templates_dir=tmp_path / "pages")
    async with env.client(app) as http:
        acme = await http.get(f"/u/{env.token}")
        globex = await http.get(f"/u/{env.mint(env.globex)}")
    assert 'src="https://acme.example/l.png"' in acme.text and "--accent: #0b5394" in acme.text
    assert "Globex special: Unsubscribe from Globex?" in globex.text
    assert "Globex special" not in acme.text


async def test_hostile_branding_is_not_trusted_into_the_page(env: LinkEnv) -> None:
    """A client name with markup is escaped; a bogus colour or a javascript: logo is ignored."""
    await env.store.update_client(
        "acme",
        name="<script>alert(1)</script>",
        settings={"accent_color": "red;}</style><script>", "logo_url": "javascript:alert(1)"},
    )
    async with env.client(env.app()) as http:
        page = await http.get(f"/u/{env.token}")
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert "javascript:" not in page.text and "--accent: #1d4ed8" in page.text


async def test_token_signed_with_an_old_key_still_works_after_rotation(
    store: SqlLedgerStore, tmp_path: Path
) -> None:
    """rotate_token_key: tokens and click links signed with the old key keep working; new ones use the new key."""
    from ledger.secret_file import create_secrets, load_secrets, rotate_token_key

    path = tmp_path / "secret.json"
    create_secrets(path)
    before = await make_env(store, load_secrets(path))
    old_keys = before.service.token_keys
    assert old_keys is not None
    old_link = tokens.sign_link("https://acme.example/old", old_keys)
    new_id = rotate_token_key(path)
    after = await make_env_on_existing(before, load_secrets(path))
    assert after.service.token_keys is not None and after.service.token_keys.current == new_id
    new_token = after.mint()
    assert new_token != before.token
    async with after.client(after.app()) as http:
        assert (await http.get(f"/c/{before.token}/{old_link}")).status_code == 302
        assert (await http.get(f"/u/{new_token}")).status_code == 200
        assert (
            await http.post(f"/u/{before.token}", data={"List-Unsubscribe": "One-Click"})
        ).status_code == 200
    assert not await after.allowed("acme")


async def make_env_on_existing(env: LinkEnv, loaded: Secrets) -> LinkEnv:
    """The same ledger seen through a service built from re-loaded (rotated) secrets."""
    from linkservice_support import token_keys

    service = LedgerService(env.store, loaded.pepper, token_keys=token_keys(loaded))
    return LinkEnv(env.store, service, env.acme, env.globex, env.subject, env.token)


async def test_healthz_and_metrics_only_for_local_unproxied_peers(env: LinkEnv) -> None:
    """/healthz answers ok; /metrics answers loopback peers, not the public or a proxied request."""
    app = env.app()
    async with env.client(app, peer="127.0.0.1") as http:
        assert (await http.get("/healthz")).text == "ok\n"
        await http.post(f"/u/{env.token}", data={"List-Unsubscribe": "One-Click"})
        metrics = await http.get("/metrics")
        proxied = await http.get("/metrics", headers={"x-forwarded-for": US_IP})
    assert metrics.status_code == 200
    assert 'consentgate_unsubscribes_total{channel="one-click"}' in metrics.text
    assert 'consentgate_http_responses_total{route="/u/{token}",status="200"}' in metrics.text
    assert proxied.status_code == 404
    async with env.client(app, peer=US_IP) as http:
        assert (await http.get("/metrics")).status_code == 404
