"""Tenant isolation, walked over every operation of the live OpenAPI document (SQLite and PostgreSQL).

With acme's key, every operation is tried against globex's data: globex's client id in the path,
an address only globex has seen in the body. Each must be refused (404 on client paths, 403 on
operator paths) with the same body as for a client that does not exist, or — for the global
operations a client key may use — answer exactly as for an address nobody has seen. The whole
database must be unchanged afterwards. ``OPERATIONS`` classifies every operation; a new endpoint
fails this file until it is classified there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

import httpx
import pytest
from api_support import ApiEnv, make_api_env
from conftest import NOW
from starlette.applications import Starlette

from ledger.models import GLOBAL_SCOPE, ConsentProof, EventKind, Reason
from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from ledger.store.api_keys import ApiKeyStore
from ledger.store.ledger_store import InteractionEvent
from ledger.store.sqlite import SqliteDatabase


class Access(Enum):
    """Who may use an operation."""

    CLIENT = "client"  # any key, for its own client: the path names the client ({client_id})
    OPERATOR = "operator"  # operator keys only (403 for a client key, whatever the path says)
    GLOBAL = "global"  # any key, no client in the path; must reveal nothing of another client
    PUBLIC = "public"  # no key at all (the docs)


# Every operation of /api/v1/openapi.json, as (METHOD, path). Add new endpoints here.
OPERATIONS: dict[tuple[str, str], Access] = {
    ("GET", "/me"): Access.GLOBAL,
    ("POST", "/clients/{client_id}/check"): Access.CLIENT,
    ("POST", "/global/check"): Access.GLOBAL,
    ("POST", "/clients/{client_id}/suppressions"): Access.CLIENT,
    ("POST", "/clients/{client_id}/suppressions/remove"): Access.OPERATOR,
    ("POST", "/global/suppressions"): Access.OPERATOR,
    ("POST", "/global/suppressions/remove"): Access.OPERATOR,
    ("POST", "/clients/{client_id}/consents"): Access.CLIENT,
    ("GET", "/clients/{client_id}/suppressions"): Access.CLIENT,
    ("GET", "/global/suppressions"): Access.OPERATOR,
    ("POST", "/clients/{client_id}/suppressions/import"): Access.CLIENT,
    ("POST", "/global/suppressions/import"): Access.OPERATOR,
    ("POST", "/clients/{client_id}/consents/import"): Access.CLIENT,
    ("POST", "/subjects/export"): Access.OPERATOR,
    ("POST", "/subjects/erase"): Access.OPERATOR,
    ("POST", "/subjects/restrict"): Access.OPERATOR,
    ("POST", "/subjects/unrestrict"): Access.OPERATOR,
    ("POST", "/subjects/rectify"): Access.OPERATOR,
    ("GET", "/clients/{client_id}/campaigns"): Access.CLIENT,
    ("GET", "/clients/{client_id}/campaigns/{campaign}/report"): Access.CLIENT,
}
# Flags that would make a request harmless (a dry run, a list of digests): the walk sends the
# harmful form. Every other boolean is sent true (e.g. reconsent: try to lift the unsubscribe).
HARMLESS_WHEN_TRUE = frozenset({"dry_run", "hashed"})

PREFIX = "/api/v1"
# Addresses only globex has data for (acme never touched them), and one nobody has seen.
GLOBEX_UNSUBSCRIBED = "phoned-in@example.org"
GLOBEX_MANUAL = "do-not-contact@example.org"
GLOBEX_CONSENTED = "opted-in@example.org"
FRESH = "never-seen@example.org"
GLOBEX_CAMPAIGN = "globex-spring"
NO_CLIENT = "nosuchclient"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture
async def env(store: SqlLedgerStore, test_secrets: Secrets) -> ApiEnv:
    """acme and globex with keys; globex holds suppressions, a consent and campaign events."""
    made = await make_api_env(store, test_secrets)
    service = made.service
    await service.unsubscribe(GLOBEX_UNSUBSCRIBED, "globex", "phone", NOW)
    await service.unsubscribe(GLOBEX_MANUAL, "globex", "do-not-contact list", NOW, reason=Reason.MANUAL)
    await service.consent(GLOBEX_CONSENTED, "globex", ConsentProof("web form", NOW, "double-opt-in"), NOW)
    num = await store.campaign_num("globex", GLOBEX_CAMPAIGN, NOW)
    subject = service.identify(GLOBEX_UNSUBSCRIBED).subject_key
    await store.record_events(
        [
            InteractionEvent("globex", EventKind.DELIVERED, NOW, num, subject),
            InteractionEvent(
                "globex", EventKind.OPENED, NOW + timedelta(hours=1), num, subject, country="DE"
            ),
            InteractionEvent("globex", EventKind.UNSUBSCRIBED, NOW + timedelta(hours=2), num, subject),
        ]
    )
    return made


def api_app(env: ApiEnv) -> Starlette:
    """The app with a rate limit the walk never reaches (the limit is tested on its own)."""
    return env.app(burst=100_000, rate_per_minute=6_000_000)


async def dump(store: SqlLedgerStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: what "nothing changed" is compared on."""
    if isinstance(store.db, SqliteDatabase):
        tables = await store.db.fetch(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    else:
        tables = await store.db.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
    snapshot: dict[str, list[tuple[Any, ...]]] = {}
    for (name,) in tables:
        rows = await store.db.fetch(f"SELECT * FROM {name}")
        snapshot[str(name)] = sorted(
            (tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows), key=repr
        )
    return snapshot


# -- requests built from the schema ------------------------------------------------------------


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a ``$ref`` followed and ``anyOf``/``oneOf`` narrowed to the first non-null branch."""
    while True:
        if "$ref" in schema:
            node: Any = document
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
            continue
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            schema = next(b for b in branches if b.get("type") != "null")
            continue
        return schema


def value_for(document: dict[str, Any], name: str, schema: dict[str, Any], address: str, client: str) -> Any:
    """A valid value for field ``name``: the target's address, client id and campaign where they fit."""
    schema = _resolve(document, schema)
    lowered = name.lower()
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "array":
        return [value_for(document, name, schema.get("items", {}), address, client)]
    if kind == "object" or "properties" in schema:
        return {
            prop: value_for(document, prop, sub, address, client)
            for prop, sub in schema.get("properties", {}).items()
        }
    if kind == "boolean":
        return lowered not in HARMLESS_WHEN_TRUE
    if kind in ("integer", "number"):
        return schema.get("default", schema.get("minimum", 1))
    if "address" in lowered or "email" in lowered or schema.get("format") in ("email", "idn-email"):
        return address
    if lowered in ("client", "client_id"):
        return client
    if "campaign" in lowered:
        return GLOBEX_CAMPAIGN
    if schema.get("format") == "date-time":
        return (NOW - timedelta(days=1)).isoformat()
    if schema.get("format") == "date":
        return (NOW - timedelta(days=1)).date().isoformat()
    for key in ("default", "examples"):
        found = schema.get(key)
        if isinstance(found, str) and found:
            return found
        if isinstance(found, list) and found:
            return found[0]
    return "isolation-walk".ljust(int(schema.get("minLength", 0)), "x")


@dataclass(frozen=True)
class Operation:
    """One operation of the schema and how to call it."""

    method: str
    path: str
    spec: dict[str, Any]

    @property
    def access(self) -> Access:
        """Its class in OPERATIONS."""
        return OPERATIONS[(self.method, self.path)]

    def request(self, document: dict[str, Any], client: str, address: str) -> dict[str, Any]:
        """httpx keyword arguments: ``client`` in the path, ``address`` wherever the body takes one."""
        url = self.path
        params: dict[str, Any] = {}
        for parameter in self.spec.get("parameters", []):
            name, where = parameter["name"], parameter["in"]
            value = (
                client
                if name == "client_id"
                else value_for(document, name, parameter["schema"], address, client)
            )
            if where == "path":
                url = url.replace("{" + name + "}", str(value))
            elif where == "query":
                params[name] = value
        kwargs: dict[str, Any] = {"method": self.method, "url": PREFIX + url, "params": params}
        content = self.spec.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            kwargs["json"] = value_for(
                document, "body", content["application/json"]["schema"], address, client
            )
        elif "multipart/form-data" in content:
            kwargs["files"] = {"file": ("list.csv", f"email\n{address}\n".encode(), "text/csv")}
        elif content:
            kwargs["content"] = f"email\n{address}\n".encode()
            kwargs["headers"] = {"content-type": next(iter(content))}
        return kwargs


async def operations(app: Starlette) -> tuple[dict[str, Any], list[Operation]]:
    """The live schema and every operation in it."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as http:
        response = await http.get(f"{PREFIX}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    found = [
        Operation(method.upper(), path, spec)
        for path, item in document["paths"].items()
        for method, spec in item.items()
        if method in HTTP_METHODS
    ]
    return document, found


async def call(http: httpx.AsyncClient, request: dict[str, Any]) -> httpx.Response:
    """Send a request built by :meth:`Operation.request` (a fresh dict each time)."""
    return await http.request(**request)


def normalised(response: httpx.Response, address: str) -> tuple[int, str, str]:
    """Status, media type and body with the asked-for address blanked (to compare two answers)."""
    return (
        response.status_code,
        response.headers.get("content-type", ""),
        response.text.replace(address, "<address>"),
    )


# -- the walk ----------------------------------------------------------------------------------


async def test_table_covers_exactly_the_schema(env: ApiEnv) -> None:
    """Every operation of the live schema is classified in OPERATIONS, and nothing else is."""
    _document, found = await operations(api_app(env))
    in_schema = {(op.method, op.path) for op in found}
    assert in_schema - OPERATIONS.keys() == set(), "classify these new operations in OPERATIONS"
    assert OPERATIONS.keys() - in_schema == set(), "these operations are gone from the schema"
    # Where the schema itself marks an operation operator-only, the table agrees.
    marked = {(op.method, op.path) for op in found if op.spec.get("x-consentgate-key") == "operator"}
    assert {k for k in marked if OPERATIONS[k] is not Access.OPERATOR} == set()


async def test_client_key_is_refused_everywhere_on_another_clients_data(env: ApiEnv) -> None:
    """acme's key against globex: 404/403 exactly as for a missing client, or an answer that says nothing."""
    app = api_app(env)
    document, found = await operations(app)
    before = await dump(env.store)
    checked: dict[Access, int] = {}
    async with env.client(app, env.acme_key) as http:
        for op in found:
            label = f"{op.method} {op.path}"
            for address in (GLOBEX_UNSUBSCRIBED, GLOBEX_MANUAL, GLOBEX_CONSENTED):
                attempt = await call(http, op.request(document, "globex", address))
                if op.access is Access.PUBLIC:
                    assert attempt.status_code == 200, label
                    assert address not in attempt.text and GLOBEX_CAMPAIGN not in attempt.text, label
                    continue
                if op.access is Access.GLOBAL:
                    # Same answer as for an address nobody has seen: globex's data shows nowhere.
                    fresh = await call(http, op.request(document, NO_CLIENT, FRESH))
                    assert attempt.status_code < 400, (label, attempt.text)
                    assert normalised(attempt, address) == normalised(fresh, FRESH), label
                    assert "globex" not in attempt.text and GLOBEX_CAMPAIGN not in attempt.text, label
                    continue
                expected = 404 if op.access is Access.CLIENT else 403
                assert attempt.status_code == expected, (label, address, attempt.text)
                assert attempt.headers["content-type"] == "application/problem+json", label
                # The refusal for globex reads exactly like the one for a client that does not exist.
                missing = await call(http, op.request(document, NO_CLIENT, FRESH))
                assert (missing.status_code, missing.text) == (attempt.status_code, attempt.text), label
                assert "globex" not in attempt.text, label
            checked[op.access] = checked.get(op.access, 0) + 1
    assert await dump(env.store) == before
    # The walk reached every class the API has today (a broken schema read would walk nothing).
    assert checked.get(Access.CLIENT, 0) >= 3 and checked.get(Access.OPERATOR, 0) >= 3
    assert checked.get(Access.GLOBAL, 0) >= 2


async def test_global_check_of_globex_suppression_says_allowed_without_reason(env: ApiEnv) -> None:
    """The global list check by acme's key: globex's unsubscribe shows as allowed, no reason, no scope."""
    async with env.client(api_app(env), env.acme_key) as http:
        response = await http.post(f"{PREFIX}/global/check", json={"addresses": [GLOBEX_UNSUBSCRIBED]})
    assert response.status_code == 200
    assert response.json()["results"] == [
        {"address": GLOBEX_UNSUBSCRIBED, "allowed": True, "reason": None, "scope": None}
    ]


async def test_every_operation_needs_a_key(env: ApiEnv) -> None:
    """No key, a malformed Authorization header, an unknown or wrong key: 401 problem on every operation."""
    app = api_app(env)
    document, found = await operations(app)
    key_id = env.acme_key.split("_")[1]
    bad_headers = [
        {},
        {"Authorization": f"Basic {env.acme_key}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": env.acme_key},
        {"Authorization": f"Bearer cg_{key_id}_{'a' * 32}"},  # a real id, a wrong secret
        {"Authorization": f"Bearer cg_aaaaaaaa_{'a' * 32}"},  # an id nobody has
    ]
    before = await dump(env.store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as http:
        assert (await http.get(f"{PREFIX}/openapi.json")).status_code == 200
        for op in found:
            label = f"{op.method} {op.path}"
            if op.access is Access.PUBLIC:
                assert (await call(http, op.request(document, "globex", FRESH))).status_code == 200, label
                continue
            bodies = set()
            for headers in bad_headers:
                request = op.request(document, "acme", GLOBEX_UNSUBSCRIBED)
                request["headers"] = {**request.get("headers", {}), **headers}
                response = await call(http, request)
                assert response.status_code == 401, (label, headers, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.headers["www-authenticate"].startswith("Bearer")
                bodies.add(response.text)
            # Whether a key id exists is not told: every refusal reads the same.
            assert len(bodies) == 1, (label, bodies)
    assert await dump(env.store) == before


async def test_revoked_key_is_refused_everywhere(env: ApiEnv) -> None:
    """Once revoked, acme's key gets 401 on every operation, even its own client's check."""
    app = api_app(env)
    document, found = await operations(app)
    async with env.client(app, env.acme_key) as http:
        own = await http.post(f"{PREFIX}/clients/acme/check", json={"addresses": [FRESH]})
        assert own.status_code == 200
        await ApiKeyStore(env.store).revoke(env.acme_key.split("_")[1], NOW)
        for op in found:
            if op.access is Access.PUBLIC:
                continue
            response = await call(http, op.request(document, "acme", FRESH))
            assert response.status_code == 401, (op.method, op.path, response.text)


async def test_operator_key_does_what_a_client_key_cannot(env: ApiEnv) -> None:
    """One example per class: the operator reads globex's check, writes the global list, sees global reasons."""
    app = api_app(env)
    document, found = await operations(app)
    async with env.client(app, env.admin_key) as admin, env.client(app, env.acme_key) as acme:
        # Client path: globex's check, which acme's key gets a 404 for.
        check = await admin.post(f"{PREFIX}/clients/globex/check", json={"addresses": [GLOBEX_UNSUBSCRIBED]})
        assert check.status_code == 200
        assert check.json()["results"][0] == {
            "address": GLOBEX_UNSUBSCRIBED,
            "allowed": False,
            "reason": "unsubscribed",
            "scope": "globex",
        }
        # Operator path: remove globex's manual entry (403 for acme's key), then it is allowed.
        removal = {"address": GLOBEX_MANUAL, "source": "ops"}
        assert (
            await acme.post(f"{PREFIX}/clients/globex/suppressions/remove", json=removal)
        ).status_code == 403
        assert (
            await admin.post(f"{PREFIX}/clients/globex/suppressions/remove", json=removal)
        ).status_code == 200
        assert (await env.service.check(GLOBEX_MANUAL, "globex", NOW)).allowed
        # Global path: after a global opt-out, the operator sees why; acme's key sees only "global".
        added = await admin.post(f"{PREFIX}/global/suppressions", json={"address": FRESH})
        assert added.status_code == 200 and added.json() == {"added": True}
        body = {"addresses": [FRESH]}
        seen_by_admin = (await admin.post(f"{PREFIX}/global/check", json=body)).json()["results"][0]
        seen_by_acme = (await acme.post(f"{PREFIX}/global/check", json=body)).json()["results"][0]
        assert (seen_by_admin["reason"], seen_by_admin["scope"]) == ("global_optout", GLOBAL_SCOPE)
        assert (seen_by_acme["reason"], seen_by_acme["scope"]) == ("global", GLOBAL_SCOPE)
        # And nowhere is the operator key turned away as a client key is.
        for op in found:
            response = await call(admin, op.request(document, "globex", GLOBEX_CONSENTED))
            assert response.status_code not in (401, 403) and response.status_code < 500, (
                op.method,
                op.path,
                response.text,
            )
