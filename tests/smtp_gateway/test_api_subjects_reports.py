"""Data-subject requests and campaign reports through the admin API, on SQLite and PostgreSQL."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from api_support import ApiEnv, make_api_env
from conftest import NOW

from ledger.models import ConsentProof, EventKind
from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from ledger.store.ledger_store import InteractionEvent
from ledger.store.reports import campaign_report
from ledger.store.subjects import SubjectStore
from smtp_gateway.http.api.schemas_subjects import SubjectExport

# The erasure check of the store tests ("the address is in no row of any table"), reused as is.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ledger"))
from test_operator_store import dump_everything

DAY = timedelta(days=1)
SUBJECT_PATHS = ("export", "erase", "restrict", "unrestrict", "rectify")


@pytest.fixture
async def env(store: SqlLedgerStore, test_secrets: Secrets) -> ApiEnv:
    """Clients acme and globex, an operator key and a key for each client."""
    return await make_api_env(store, test_secrets)


async def check(env: ApiEnv, key: str, address: str, client: str = "acme") -> dict[str, object]:
    """The API's decision for one address, as ``key`` sees it."""
    async with env.client(env.app(), key) as http:
        response = await http.post(f"/api/v1/clients/{client}/check", json={"addresses": [address]})
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()["results"][0]
    return result


async def test_erase_leaves_the_address_nowhere_and_the_person_stays_refused(env: ApiEnv) -> None:
    """After POST /subjects/erase no table holds the address; every client refuses it and a re-opt-in is 409."""
    address = "Erin.Erased@Example.org"
    normal = "erin.erased@example.org"
    service, store = env.service, env.store
    await service.consent(address, "acme", ConsentProof("form", NOW - DAY, "double opt-in"), NOW - DAY)
    identity = service.identify(address)
    num = await store.campaign_num("acme", "spring", NOW)
    await store.record_events(
        [InteractionEvent("acme", EventKind.OPENED, NOW, num, identity.subject_key, country="FR")]
    )
    await store.set_restricted(identity, True, "dsr", NOW)
    assert normal in await dump_everything(store)

    async with env.client(env.app(), env.admin_key) as http:
        erased = await http.post("/api/v1/subjects/erase", json={"address": address, "source": "dsr 42"})
        assert erased.status_code == 200, erased.text
        report = erased.json()
        assert report["global_suppression_added"] is True and report["deleted"]["events"] == 1
        text = (await dump_everything(store)).lower()
        assert normal not in text and normal.encode().hex() not in text
        again = await http.post(
            "/api/v1/clients/acme/consents", json={"address": address, "source": "form", "reconsent": True}
        )
        assert again.status_code == 409
        export = (await http.post("/api/v1/subjects/export", json={"address": address})).json()
    assert export["stored_address"] is None and export["consent_events"][-1]["kind"] == "erasure"
    assert (await check(env, env.admin_key, address)) == {
        "address": address,
        "allowed": False,
        "reason": "erased",
        "scope": "global",
    }
    assert (await check(env, env.globex_key, address, "globex"))["reason"] == "global"
    assert normal not in (await dump_everything(store)).lower()
    figures = await campaign_report(store.db, "spring", "acme")
    assert figures.unique_opens == 1 and figures.countries == {"FR": 1}


async def test_export_is_what_the_cli_exports_with_a_nested_schema(env: ApiEnv) -> None:
    """The export holds the consent proof, suppression and events: SubjectStore.export's data, and the schema says so."""
    address = "ana@example.org"
    service, store = env.service, env.store
    await service.consent(address, "acme", ConsentProof("signup form", NOW - DAY, "double opt-in", "v3"), NOW)
    identity = service.identify(address)
    num = await store.campaign_num("acme", "spring", NOW)
    await store.record_events(
        [InteractionEvent("acme", EventKind.CLICKED, NOW, num, identity.subject_key, link_id="l1")]
    )
    async with env.client(env.app(), env.admin_key) as http:
        await http.post("/api/v1/clients/globex/suppressions", json={"address": address, "source": "phone"})
        response = await http.post("/api/v1/subjects/export", json={"address": address})
        schema = (await http.get("/api/v1/openapi.json")).json()
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["known"] and body["stored_address"] == address
    assert [(s["scope"], s["reason"], s["source"]) for s in body["suppressions"]] == [
        ("globex", "unsubscribed", "phone")
    ]
    opt_in = body["consent_events"][0]
    assert (opt_in["kind"], opt_in["source"], opt_in["method"], opt_in["notice_version"]) == (
        "opt_in",
        "signup form",
        "double opt-in",
        "v3",
    )
    assert [(e["campaign"], e["kind"], e["link"]) for e in body["events"]] == [("spring", "clicked", "l1")]
    assert SubjectExport.model_validate(body) == SubjectExport.model_validate(
        await SubjectStore(store).export(identity)
    )
    answer = schema["paths"]["/subjects/export"]["post"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"] == {"$ref": "#/components/schemas/SubjectExport"}
    exported = schema["components"]["schemas"]["SubjectExport"]["properties"]
    assert exported["consent_events"]["items"] == {"$ref": "#/components/schemas/ExportedConsentEvent"}


async def test_restrict_refuses_as_restricted_for_the_operator_and_global_for_a_client(env: ApiEnv) -> None:
    """restrict: the operator sees `restricted`, a client key only `global`; unrestrict lets mail through again."""
    address = "r@example.org"
    async with env.client(env.app(), env.admin_key) as http:
        restricted = await http.post("/api/v1/subjects/restrict", json={"address": address})
        assert restricted.status_code == 200 and restricted.json() == {"restricted": True}
        assert (await check(env, env.admin_key, address))["reason"] == "restricted"
        assert (await check(env, env.acme_key, address)) == {
            "address": address,
            "allowed": False,
            "reason": "global",
            "scope": "global",
        }
        lifted = await http.post(
            "/api/v1/subjects/unrestrict", json={"address": address, "source": "ticket 7"}
        )
        assert lifted.json() == {"restricted": False}
    assert (await check(env, env.acme_key, address))["allowed"] is True
    kinds = [
        e.kind for e in await env.store.chain_events("global", env.service.identify(address).subject_key)
    ]
    assert [str(k) for k in kinds] == ["restriction", "restriction_lifted"]


async def test_rectify_moves_an_unsubscribe_to_the_corrected_address(env: ApiEnv) -> None:
    """A client's unsubscribe of a mistyped address moves to the corrected one; the same person twice is a 422."""
    async with env.client(env.app(), env.acme_key) as client_http:
        added = await client_http.post(
            "/api/v1/clients/acme/suppressions", json={"address": "typo@exmaple.org"}
        )
        assert added.status_code == 200
    async with env.client(env.app(), env.admin_key) as http:
        moved = await http.post(
            "/api/v1/subjects/rectify",
            json={"old_address": "typo@exmaple.org", "new_address": "typo@example.org", "source": "ticket 9"},
        )
        assert moved.status_code == 200, moved.text
        assert moved.json() == {"suppressions": 1, "relationships": 0, "events": 0, "chains": 1}
        same = await http.post(
            "/api/v1/subjects/rectify",
            json={"old_address": "Typo@Example.org", "new_address": "typo@example.org"},
        )
        bad = await http.post(
            "/api/v1/subjects/rectify", json={"old_address": "nope", "new_address": "a@b.example"}
        )
    assert (await check(env, env.acme_key, "typo@example.org"))["reason"] == "unsubscribed"
    assert (await check(env, env.acme_key, "typo@exmaple.org"))["allowed"] is True
    assert same.status_code == 422 and [e["field"] for e in same.json()["errors"]] == ["new_address"]
    assert bad.status_code == 422 and [e["field"] for e in bad.json()["errors"]] == ["old_address"]
    checked, broken = await env.store.verify_ledger()
    assert broken is None and checked >= 2


async def test_client_keys_may_not_make_subject_requests(env: ApiEnv) -> None:
    """Every /subjects endpoint answers 403 to a client key (401 without one) and changes nothing."""
    address = "kept@example.org"
    await env.service.consent(address, "acme", ConsentProof("form", NOW), NOW)
    bodies = {"rectify": {"old_address": address, "new_address": "other@example.org"}}
    app = env.app()
    async with env.client(app, env.acme_key) as http, env.client(app, None) as anonymous:
        for name in SUBJECT_PATHS:
            body = bodies.get(name, {"address": address})
            refused = await http.post(f"/api/v1/subjects/{name}", json=body)
            assert refused.status_code == 403, name
            assert refused.headers["content-type"] == "application/problem+json"
            assert (await anonymous.post(f"/api/v1/subjects/{name}", json=body)).status_code == 401
    exported = await SubjectStore(env.store).export(env.service.identify(address))
    assert exported["stored_address"] == address and not exported["restricted"]
    assert [r["client"] for r in exported["relationships"]] == ["acme"]


async def _launch(env: ApiEnv) -> None:
    """Campaign ``launch`` of acme: 4 recipients, opens, clicks, a bounce, a refusal, an unsubscribe."""
    store = env.store
    num = await store.campaign_num("acme", "launch", NOW)
    k = [env.service.identify(f"p{i}@example.org").subject_key for i in range(4)]
    e = EventKind
    await store.record_events(
        [
            *(InteractionEvent("acme", e.DELIVERED, NOW, num, key) for key in k[:3]),
            InteractionEvent(
                "acme", e.BOUNCED, NOW, num, k[3], reason="hard: 550 5.1.1 <p3@example.org> unknown"
            ),
            InteractionEvent("acme", e.SUPPRESSED, NOW, num, None, reason="unsubscribed"),
            InteractionEvent("acme", e.OPENED, NOW, num, k[0], country="DE"),
            InteractionEvent("acme", e.OPENED, NOW + DAY, num, k[0], country="DE"),
            InteractionEvent("acme", e.OPENED, NOW + DAY, num, k[1]),
            InteractionEvent("acme", e.CLICKED, NOW + DAY, num, k[0], link_id="l1"),
            InteractionEvent(
                "acme", e.CLICKED, NOW + DAY, num, k[1], link_id="https://x.example/?u=p1@example.org"
            ),
            InteractionEvent("acme", e.UNSUBSCRIBED, NOW + DAY, num, k[2]),
        ]
    )
    # globex has a campaign of the same name: it must not leak into acme's figures.
    other = await store.campaign_num("globex", "launch", NOW)
    await store.record_events([InteractionEvent("globex", e.DELIVERED, NOW, other, k[0]) for _ in range(5)])


async def test_report_numbers_match_the_recorded_events(env: ApiEnv) -> None:
    """The report counts the client's events only: accepted 4, delivered 3, opens 2, clicks 2, one hard bounce."""
    await _launch(env)
    async with env.client(env.app(), env.acme_key) as http:
        response = await http.get("/api/v1/clients/acme/campaigns/launch/report")
    assert response.status_code == 200, response.text
    r = response.json()
    assert (r["accepted"], r["delivered"], r["unique_opens"], r["unique_clicks"], r["unsubscribes"]) == (
        4,
        3,
        2,
        2,
        1,
    )
    assert r["bounced"] == {"hard": 1} and r["refused"] == {"unsubscribed": 1} and r["countries"] == {"DE": 2}
    assert r["clicks_per_link"] == {"l1": 1, "(redacted link)": 1}
    assert list(r["timeline"]) == [NOW.date().isoformat(), (NOW + DAY).date().isoformat()]
    assert "@" not in response.text
    assert r == (await campaign_report(env.store.db, "launch", "acme")).as_dict()


async def test_campaign_names_from_the_list_work_in_the_report_path(env: ApiEnv) -> None:
    """Names with /, ?, #, %, spaces, dots and accents: each listed report path answers that campaign's report."""
    names = ["spring/2026 #1 ?50% off", "Été ünïcode", "a/../b", "..", "plain"]
    for i, name in enumerate(names):
        await env.store.campaign_num("acme", name, NOW + i * timedelta(seconds=1))
    await env.store.campaign_num("globex", "globex only", NOW)
    async with env.client(env.app(), env.acme_key) as http:
        listed = await http.get("/api/v1/clients/acme/campaigns")
        assert listed.status_code == 200
        campaigns = listed.json()["campaigns"]
        assert [c["name"] for c in campaigns] == names
        for campaign in campaigns:
            response = await http.get("/api/v1" + campaign["report"])
            assert response.status_code == 200, (campaign, response.text)
            assert response.json()["campaign"] == campaign["name"]
        # A caller encoding the name itself reaches the same report.
        by_hand = await http.get(f"/api/v1/clients/acme/campaigns/{quote(names[0], safe='')}/report")
        # No campaign name holds a control character (the gateway refuses them in headers).
        control = await http.get("/api/v1/clients/acme/campaigns/a%00b/report")
    assert by_hand.json()["campaign"] == names[0]
    assert control.status_code == 422 and control.json()["errors"][0]["field"] == "campaign"


async def test_another_clients_report_reads_like_an_unknown_one(env: ApiEnv) -> None:
    """globex's key gets 404 for acme's list and report, with the same body as an unknown campaign."""
    await _launch(env)
    app = env.app()
    async with env.client(app, env.globex_key) as globex, env.client(app, env.acme_key) as acme:
        theirs = await globex.get("/api/v1/clients/acme/campaigns/launch/report")
        listing = await globex.get("/api/v1/clients/acme/campaigns")
        unknown = await acme.get("/api/v1/clients/acme/campaigns/nope/report")
        own = await globex.get("/api/v1/clients/globex/campaigns/launch/report")
    assert theirs.status_code == listing.status_code == unknown.status_code == 404
    assert theirs.json() == unknown.json() == listing.json()
    assert own.status_code == 200 and own.json()["delivered"] == 5 and own.json()["client"] == "globex"
    async with env.client(app, env.admin_key) as admin:
        names = (await admin.get("/api/v1/clients/acme/campaigns")).json()["campaigns"]
    assert [c["name"] for c in names] == ["launch"]
