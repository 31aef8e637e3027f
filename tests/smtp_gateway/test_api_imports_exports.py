"""Bulk imports (streamed bodies) and streamed exports over the admin API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_support import ApiEnv, make_api_env
from conftest import NOW
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.importing import HashAlgo, hash_address
from ledger.models import GLOBAL_SCOPE, Reason
from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from smtp_gateway.http import HttpServer

PREFIX = "/api/v1"
CSV = {"content-type": "text/csv"}
ACME_ROWS = 1100  # more than one database fetch (1,000 rows) and one 64 KB piece of text
SINCE = NOW.isoformat()


@pytest.fixture
async def env(store: SqlLedgerStore, test_secrets: Secrets) -> ApiEnv:
    """acme and globex with keys for each and for the operator."""
    return await make_api_env(store, test_secrets)


async def checks(http: httpx.AsyncClient, path: str, addresses: list[str]) -> dict[str, tuple[bool, Any]]:
    """address → (allowed, reason) from a check endpoint."""
    response = await http.post(f"{PREFIX}{path}", json={"addresses": addresses})
    assert response.status_code == 200, response.text
    return {r["address"]: (r["allowed"], r["reason"]) for r in response.json()["results"]}


async def count(store: SqlLedgerStore, table: str, scope: str) -> int:
    """Rows of ``table`` (suppressions or hashed_suppressions) in ``scope``."""
    return int(await store.db.fetchval(f"SELECT COUNT(*) FROM {table} WHERE scope = $1", scope))


# -- exports ------------------------------------------------------------------------------------


async def seed_for_export(env: ApiEnv) -> list[str]:
    """acme's 1,100 unsubscribes (with addresses), plus rows an acme export must leave out; acme's addresses."""
    addresses = [f"Person{i}@Example.org" for i in range(ACME_ROWS)]
    for address in addresses:
        await env.service.unsubscribe(address, "acme", "crm sync", NOW)
    await env.service.unsubscribe("globex-only@example.org", "globex", "phone", NOW)
    await env.service.unsubscribe("everyone@example.org", None, "written request", NOW)
    return [env.service.identify(a).address for a in addresses]


async def test_export_streams_every_row_as_csv_jsonl_and_hashed(env: ApiEnv) -> None:
    """csv, jsonl and hashed csv each hold all 1,100 of acme's rows and nothing of globex or the global list."""
    addresses = await seed_for_export(env)
    async with env.client(env.app(), env.acme_key) as http:
        # Bulk-imported rows keep no address: the CLI leaves them out, and so does the API.
        imported = await http.post(
            f"{PREFIX}/clients/acme/suppressions/import", content=b"no-address@example.org\n", headers=CSV
        )
        assert imported.json()["imported"] == 1
        as_csv = await http.get(f"{PREFIX}/clients/acme/suppressions")
        as_jsonl = await http.get(f"{PREFIX}/clients/acme/suppressions", params={"format": "jsonl"})
        hashed = await http.get(f"{PREFIX}/clients/acme/suppressions", params={"hashed": "true"})
    expected = {(a, "acme", "unsubscribed", SINCE, "crm sync") for a in addresses}
    assert as_csv.status_code == 200 and as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert "content-length" not in as_csv.headers and as_csv.headers["cache-control"] == "no-store"
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == ["email", "scope", "reason", "since", "source"]
    assert len(rows) == ACME_ROWS + 1 and {tuple(r) for r in rows[1:]} == expected
    assert as_jsonl.headers["content-type"] == "application/x-ndjson; charset=utf-8"
    records = [json.loads(line) for line in as_jsonl.text.splitlines()]
    assert len(records) == ACME_ROWS
    assert {(r["email"], r["scope"], r["reason"], r["since"], r["source"]) for r in records} == expected
    digests = list(csv.reader(io.StringIO(hashed.text)))
    assert digests[0][0] == "sha256" and len(digests) == ACME_ROWS + 1
    assert {r[0] for r in digests[1:]} == {hashlib.sha256(a.lower().encode()).hexdigest() for a in addresses}


async def test_operator_exports_the_global_list_including_hashed_lists(env: ApiEnv) -> None:
    """The operator key exports the global list; with hashed=true an imported sha256 list comes along."""
    await env.service.unsubscribe("everyone@example.org", None, "written request", NOW)
    digest = hash_address("provider-list@example.org", HashAlgo.SHA256).hex()
    async with env.client(env.app(), env.admin_key) as http:
        imported = await http.post(
            f"{PREFIX}/global/suppressions/import",
            params={"hashed": "sha256", "source": "old provider"},
            content=f"{digest}\nnot-a-digest\n".encode(),
            headers={"content-type": "text/plain"},
        )
        plain = await http.get(f"{PREFIX}/global/suppressions", params={"format": "jsonl"})
        hashed = await http.get(f"{PREFIX}/global/suppressions", params={"format": "jsonl", "hashed": "true"})
    report = imported.json()
    assert (report["imported"], report["rejected"], report["rejects"][0]["line"]) == (1, 1, 2)
    assert [json.loads(line)["email"] for line in plain.text.splitlines()] == ["everyone@example.org"]
    values = {json.loads(line)["sha256"]: json.loads(line) for line in hashed.text.splitlines()}
    assert set(values) == {hashlib.sha256(b"everyone@example.org").hexdigest(), digest}
    assert values[digest]["source"] == "old provider" and values[digest]["scope"] == GLOBAL_SCOPE


async def test_a_client_key_cannot_export_or_import_for_another_client_or_the_global_list(
    env: ApiEnv,
) -> None:
    """acme's key: globex's paths read like an unknown client (404), the global list's are 403; nothing written."""
    await env.service.unsubscribe("globex-only@example.org", "globex", "phone", NOW)
    body = b"email\nintruder@example.org\n"
    async with env.client(env.app(), env.acme_key) as http:
        unknown = await http.get(f"{PREFIX}/clients/nosuchclient/suppressions")
        refused = [
            await http.get(f"{PREFIX}/clients/globex/suppressions"),
            await http.get(f"{PREFIX}/clients/globex/suppressions", params={"hashed": "true"}),
            await http.post(f"{PREFIX}/clients/globex/suppressions/import", content=body, headers=CSV),
            await http.post(
                f"{PREFIX}/clients/globex/consents/import", params={"source": "x"}, content=body, headers=CSV
            ),
        ]
        operator_only = [
            await http.get(f"{PREFIX}/global/suppressions"),
            await http.post(f"{PREFIX}/global/suppressions/import", content=body, headers=CSV),
        ]
    assert unknown.status_code == 404
    assert [(r.status_code, r.json()) for r in refused] == [(404, unknown.json())] * 4
    assert [r.status_code for r in operator_only] == [403, 403]
    assert all("globex-only" not in r.text for r in [*refused, *operator_only])
    assert await count(env.store, "suppressions", "globex") == 1
    assert await count(env.store, "suppressions", GLOBAL_SCOPE) == 0


# -- imports ------------------------------------------------------------------------------------

GOOD_AND_BAD = (
    b"Email,Reason,Date,Source\r\n"
    b"ann@example.org,,2026-01-05,call centre\r\n"  # 2
    b"not-an-address,,,\r\n"  # 3: bad address
    b"bob@example.org,complaint,,\r\n"  # 4
    b"cy@example.org,,2026-02-31,\r\n"  # 5: bad date
    b"dee@example.org,,\r\n"  # 6: too few columns
    b"\xff\xfeed@example.org,,,\r\n"  # 7: not UTF-8
    b"fay@example.org,sometimes,,\r\n"  # 8: unknown reason
    b"Ann@Example.org,,,\r\n"  # 9: ann again
    b"gus@example.org,,,\r\n"  # 10
)
IMPORTED = ["ann@example.org", "bob@example.org", "gus@example.org"]
NOT_IMPORTED = ["cy@example.org", "dee@example.org", "fay@example.org"]


async def test_csv_import_reports_bad_rows_by_line_imports_the_rest_and_is_idempotent(env: ApiEnv) -> None:
    """Bad rows come back by line; the good ones are refused at the check endpoint; sending again adds nothing."""
    async with env.client(env.app(), env.acme_key) as http:
        first = await http.post(
            f"{PREFIX}/clients/acme/suppressions/import", content=GOOD_AND_BAD, headers=CSV
        )
        decided = await checks(http, "/clients/acme/check", IMPORTED + NOT_IMPORTED)
        again = await http.post(
            f"{PREFIX}/clients/acme/suppressions/import", content=GOOD_AND_BAD, headers=CSV
        )
    assert first.status_code == 200, first.text
    report = first.json()
    assert {
        k: report[k] for k in ("dry_run", "imported", "already_suppressed", "duplicates", "rejected")
    } == {
        "dry_run": False,
        "imported": 3,
        "already_suppressed": 0,
        "duplicates": 1,
        "rejected": 5,
    }
    assert [r["line"] for r in report["rejects"]] == [3, 5, 6, 7, 8] and not report["rejects_truncated"]
    errors = {r["line"]: r["error"] for r in report["rejects"]}
    assert "2026-02-31" in errors[5] and errors[6] == "expected 4 columns, found 3"
    assert "not valid UTF-8" in errors[7] and "sometimes" in errors[8]
    assert {a: decided[a] for a in IMPORTED} == {
        "ann@example.org": (False, "unsubscribed"),
        "bob@example.org": (False, "complaint"),
        "gus@example.org": (False, "unsubscribed"),
    }
    assert all(decided[a][0] for a in NOT_IMPORTED)
    second = again.json()
    assert (second["imported"], second["already_suppressed"], second["rejected"]) == (0, 3, 5)
    assert await count(env.store, "suppressions", "acme") == 3
    assert (await env.service.check("ann@example.org", "globex", NOW)).allowed


async def test_dry_run_counts_without_writing(env: ApiEnv) -> None:
    """dry_run=true reports what would be imported and leaves the list as it was."""
    async with env.client(env.app(), env.acme_key) as http:
        response = await http.post(
            f"{PREFIX}/clients/acme/suppressions/import",
            params={"dry_run": "true"},
            content=GOOD_AND_BAD,
            headers=CSV,
        )
    assert response.json()["dry_run"] is True and response.json()["imported"] == 3
    assert await count(env.store, "suppressions", "acme") == 0


async def test_global_unsubscribe_import_is_refused_for_every_client(env: ApiEnv) -> None:
    """An operator's JSON-lines global import: acme's key sees the address refused by the global list."""
    body = b'{"email": "signed@example.org", "source": "letter 2026-114"}\n{"email": 5}\n'
    async with env.client(env.app(), env.admin_key) as admin:
        imported = await admin.post(
            f"{PREFIX}/global/suppressions/import",
            content=body,
            headers={"content-type": "application/x-ndjson"},
        )
    async with env.client(env.app(), env.acme_key) as acme:
        decided = await checks(acme, "/clients/acme/check", ["signed@example.org"])
    assert imported.json()["imported"] == 1 and imported.json()["rejects"][0]["line"] == 2
    assert decided == {"signed@example.org": (False, "global")}


async def test_consent_import_refuses_suppressed_addresses(env: ApiEnv) -> None:
    """Unsubscribed here or globally: `suppressed`, by line; valid opt-ins recorded; bad rows rejected."""
    await env.service.unsubscribe("left@example.org", "acme", "phone", NOW)
    await env.service.unsubscribe("nobody-mails-me@example.org", None, "written request", NOW)
    body = (
        b"email,date,method\n"
        b"new@example.org,2026-10-01,double-opt-in\n"  # 2
        b"left@example.org,2026-10-01,double-opt-in\n"  # 3: unsubscribed from acme
        b"nobody-mails-me@example.org,,\n"  # 4: global opt-out
        b"broken@,,\n"  # 5: bad address
        b"other@example.org,,\n"  # 6
    )
    async with env.client(env.app(), env.acme_key) as http:
        response = await http.post(
            f"{PREFIX}/clients/acme/consents/import",
            params={"source": "web form", "notice_version": "v3"},
            content=body,
            headers={"content-type": "text/csv; charset=utf-8"},
        )
        decided = await checks(http, "/clients/acme/check", ["left@example.org", "new@example.org"])
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["imported"], report["suppressed_not_imported"], report["rejected"]) == (2, 2, 1)
    assert [r["line"] for r in report["suppressed"]] == [3, 4]
    assert "unsubscribed" in report["suppressed"][0]["error"] and "global" in report["suppressed"][1]["error"]
    assert [r["line"] for r in report["rejects"]] == [5]
    assert decided["left@example.org"] == (False, "unsubscribed") and decided["new@example.org"][0]
    active = await env.store.db.fetchval(
        "SELECT COUNT(*) FROM relationships WHERE client_id = 'acme' AND status = 'active'"
    )
    assert active == 2
    proof = await env.store.db.fetchrow(
        "SELECT source, method, notice_version FROM ledger_events WHERE client_id = 'acme' AND kind = 'opt_in' "
        "AND subject_key = $1",
        env.service.identify("other@example.org").subject_key,
    )
    assert proof is not None and tuple(proof) == ("web form", "", "v3")


async def test_consent_reconsent_needs_the_rows_own_proof(env: ApiEnv) -> None:
    """reconsent=true lifts acme's unsubscribe only for a row with its own later date and method."""
    await env.service.unsubscribe("back@example.org", "acme", "phone", NOW.replace(month=1))
    await env.service.unsubscribe("undated@example.org", "acme", "phone", NOW.replace(month=1))
    body = b"email,date,method\nback@example.org,2026-11-01,double-opt-in\nundated@example.org,,\n"
    async with env.client(env.app(), env.acme_key) as http:
        response = await http.post(
            f"{PREFIX}/clients/acme/consents/import",
            params={"source": "web form", "reconsent": "true"},
            content=body,
            headers=CSV,
        )
        decided = await checks(http, "/clients/acme/check", ["back@example.org", "undated@example.org"])
    assert response.json()["imported"] == 1 and [r["line"] for r in response.json()["suppressed"]] == [3]
    assert decided["back@example.org"][0] and decided["undated@example.org"] == (False, "unsubscribed")


async def test_wrong_content_type_is_415(env: ApiEnv) -> None:
    """JSON, a form, no type, or a non-UTF-8 charset: 415 problem documents, nothing imported."""
    async with env.client(env.app(), env.acme_key) as http:
        answers = [
            await http.post(f"{PREFIX}/clients/acme/suppressions/import", json={"email": "a@example.org"}),
            await http.post(f"{PREFIX}/clients/acme/suppressions/import", data={"email": "a@example.org"}),
            await http.post(
                f"{PREFIX}/clients/acme/suppressions/import",
                content=b"a@example.org\n",
                headers={"content-type": "text/csv; charset=iso-8859-1"},
            ),
            await http.post(
                f"{PREFIX}/clients/acme/consents/import",
                params={"source": "x"},
                content=b"a@example.org\n",
                headers={"content-type": "application/octet-stream"},
            ),
        ]
    assert [r.status_code for r in answers] == [415] * 4
    assert all(r.headers["content-type"] == "application/problem+json" for r in answers)
    assert "text/csv" in answers[0].json()["detail"] and "UTF-8" in answers[2].json()["detail"]
    assert await count(env.store, "suppressions", "acme") == 0


async def test_oversized_body_is_413_declared_or_streamed(env: ApiEnv) -> None:
    """Over max_import_bytes: 413 whether Content-Length says so or a chunked body runs over; nothing imported."""
    body = b"".join(f"user{i}@example.org\n".encode() for i in range(100))  # ~2 KB

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    app = env.app(max_import_bytes=1000)
    async with env.client(app, env.acme_key) as http:
        small = await http.post(f"{PREFIX}/clients/acme/suppressions/import", content=body[:900], headers=CSV)
        declared = await http.post(f"{PREFIX}/clients/acme/suppressions/import", content=body, headers=CSV)
        streamed = await http.post(
            f"{PREFIX}/clients/acme/suppressions/import", content=chunks(), headers=CSV
        )
    assert small.status_code == 200
    assert "content-length" not in streamed.request.headers
    assert [declared.status_code, streamed.status_code] == [413, 413]
    assert streamed.json()["title"] == "Request body too large"
    assert await count(env.store, "suppressions", "acme") == small.json()["imported"]


async def test_unreadable_files_are_a_clear_422(env: ApiEnv) -> None:
    """A CSV without an e-mail column, or saved as UTF-16: 422 naming the body and saying what is wrong."""
    utf16 = "email,reason\nann@example.org,\n".encode("utf-16")
    async with env.client(env.app(), env.acme_key) as http:
        no_column = await http.post(
            f"{PREFIX}/clients/acme/suppressions/import", content=b"name,phone\nAnn,123\n", headers=CSV
        )
        wide = await http.post(f"{PREFIX}/clients/acme/suppressions/import", content=utf16, headers=CSV)
        consents = await http.post(
            f"{PREFIX}/clients/acme/consents/import", params={"source": "x"}, content=utf16, headers=CSV
        )
    assert [r.status_code for r in (no_column, wide, consents)] == [422] * 3
    problems = [r.json()["errors"][0] for r in (no_column, wide, consents)]
    assert all(p["field"] == "body" for p in problems)
    assert (
        problems[0]["message"].startswith("<request body>:1: the CSV header")
        and "no e-mail column" in (problems[0]["message"])
    )
    assert "not valid UTF-8" in problems[1]["message"] and "save the file as UTF-8" in problems[2]["message"]
    assert await count(env.store, "suppressions", "acme") == 0


async def test_consent_at_in_the_future_is_422(env: ApiEnv) -> None:
    """A default consent date after now is refused, naming the `at` parameter."""
    async with env.client(env.app(), env.acme_key) as http:
        response = await http.post(
            f"{PREFIX}/clients/acme/consents/import",
            params={"source": "x", "at": "2030-01-01T00:00:00Z"},
            content=b"a@example.org\n",
            headers=CSV,
        )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "at"


# -- over a real socket -------------------------------------------------------------------------


class ReceiveProbe:
    """Wraps the app and counts the request body bytes it has read, to see when it reads them."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``; nothing read yet."""
        self.app = app
        self.read = 0
        self.wanted = 0
        self.reached = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve through ``app``, counting body bytes as the app takes them."""

        async def counting() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.read += len(message.get("body", b""))
                if self.wanted and self.read >= self.wanted:
                    self.reached.set()
            return message

        await self.app(scope, counting, send)


async def test_streamed_upload_and_export_over_a_socket(env: ApiEnv) -> None:
    """uvicorn on port 0: the server reads the first half of a chunked upload before the second is sent."""
    rows = [f"streamed{i}@example.org".encode() for i in range(20_000)]
    first = b"email\n" + b"\n".join(rows[:10_000]) + b"\n"
    second = b"\n".join(rows[10_000:]) + b"\nnot an address\n"
    probe = ReceiveProbe(env.app())
    probe.wanted = len(first)
    sent_second = False

    async def upload() -> AsyncIterator[bytes]:
        nonlocal sent_second
        for start in range(0, len(first), 16_384):
            yield first[start : start + 16_384]
        # The server must have taken in all of the first half while the client still holds the rest.
        await asyncio.wait_for(probe.reached.wait(), 10)
        sent_second = True
        yield second

    async with HttpServer(probe, host="127.0.0.1", port=0) as server:
        headers = {"Authorization": f"Bearer {env.acme_key}", **CSV}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
            imported = await http.post(f"{PREFIX}/clients/acme/suppressions/import", content=upload())
            async with http.stream("GET", f"{PREFIX}/global/suppressions") as refused:
                status = refused.status_code
            # Imports keep no address, so add some that can be exported, then stream them out.
            for i in range(3):
                await env.service.unsubscribe(f"known{i}@example.org", "acme", "phone", NOW)
            async with http.stream("GET", f"{PREFIX}/clients/acme/suppressions") as export:
                pieces = [piece async for piece in export.aiter_bytes()]
                exported_headers = export.headers
    assert sent_second and probe.read == len(first) + len(second)
    assert imported.status_code == 200, imported.text
    report = imported.json()
    assert (report["imported"], report["rejected"], report["rejects"][0]["line"]) == (20_000, 1, 20_002)
    assert status == 403
    assert exported_headers["transfer-encoding"] == "chunked" and "content-length" not in exported_headers
    lines = b"".join(pieces).decode().splitlines()
    assert lines[0] == "email,scope,reason,since,source" and len(lines) == 4
    assert await count(env.store, "suppressions", "acme") == 20_003
    assert (
        Reason.UNSUBSCRIBED.value in lines[1]
        and (await env.service.check("streamed19999@example.org", "acme", NOW)).reason is Reason.UNSUBSCRIBED
    )
