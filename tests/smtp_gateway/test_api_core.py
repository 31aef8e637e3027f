"""The admin API's core endpoints (checks, suppressions, consents, limits, errors) on SQLite and PostgreSQL,
and API keys made by the CLI used against a real `consentgate serve` over a socket."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import ApiEnv, make_api_env
from conftest import NOW
from submission_support import free_port

from ledger.importing import HashAlgo, HashedRow
from ledger.models import GLOBAL_SCOPE, Client, ClientMode, ConsentProof, Reason
from ledger.secret_file import Secrets
from ledger.store import SqlLedgerStore
from ledger.store.api_keys import ApiKeyStore
from ledger.store.imports import import_hashed
from smtp_gateway.http.api.config import DEFAULT_MAX_JSON_BYTES
from smtp_gateway.server import wait_for_port

PREFIX = "/api/v1"
PROBLEM = "application/problem+json"
CLI = str(Path(sys.executable).parent / "consentgate")


@pytest.fixture
async def env(store: SqlLedgerStore, test_secrets: Secrets) -> ApiEnv:
    """acme and globex with keys (admin, acme's, globex's)."""
    return await make_api_env(store, test_secrets)


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    """An RFC 9457 document with type, title and status, served as application/problem+json."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert body["status"] == status
    return dict(body)


def field_names(body: dict[str, object]) -> set[str]:
    """The fields a validation problem names."""
    errors = body.get("errors")
    assert isinstance(errors, list)
    return {str(e["field"]) for e in errors}


async def test_check_of_1000_addresses_in_order_with_every_reason(env: ApiEnv) -> None:
    """1,000 addresses: 1,000 answers in order — unsubscribe, global, hashed list, invalid, no consent, allowed."""
    store, service = env.store, env.service
    await store.add_client(
        Client("initech", "Initech", domains=("initech.example",), mode=ClientMode.REQUIRE_CONSENT), NOW
    )
    _, initech_key = await ApiKeyStore(store).create("initech", "crm", NOW)
    addresses: list[str] = []
    expected: list[tuple[bool, str | None, str | None]] = []
    hashed: list[HashedRow] = []
    for i in range(1000):
        address = f"person{i}@example.org"
        kind = i % 10
        if kind in (0, 5):
            await service.unsubscribe(address, "initech", "phone", NOW)
            expected.append((False, "unsubscribed", "initech"))
        elif kind in (1, 6):
            await service.unsubscribe(address, None, "letter", NOW)
            expected.append((False, "global_optout", GLOBAL_SCOPE))
        elif kind in (2, 7):
            digest = hashlib.sha256(address.encode()).digest()
            hashed.append(HashedRow(i, digest, None, "old provider"))
            expected.append((False, "unsubscribed", "initech"))
        elif kind in (3, 8):
            address = f"not an address {i}"
            expected.append((False, "invalid_address", None))
        elif kind == 4:
            await service.consent(address, "initech", ConsentProof("web form", NOW, "double-opt-in"), NOW)
            expected.append((True, None, None))
        else:
            expected.append((False, "no_consent", "initech"))
        addresses.append(address)
    await import_hashed(store, "initech", HashAlgo.SHA256, hashed, "old provider", NOW)
    app = env.app()
    async with env.client(app, env.admin_key) as admin, env.client(app, initech_key) as client:
        as_admin = await admin.post(f"{PREFIX}/clients/initech/check", json={"addresses": addresses})
        as_client = await client.post(f"{PREFIX}/clients/initech/check", json={"addresses": addresses})
    assert as_admin.status_code == 200 and as_client.status_code == 200
    results = as_admin.json()["results"]
    assert [r["address"] for r in results] == addresses
    got = [(r["allowed"], r["reason"], r["scope"]) for r in results]
    mismatched = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert mismatched == []
    assert Counter(r["reason"] for r in results) == {
        "unsubscribed": 400,
        "global_optout": 200,
        "invalid_address": 200,
        "no_consent": 100,
        None: 100,
    }
    # The client's own key sees the same decisions, but only "global" for the global list.
    client_view = as_client.json()["results"]
    for admin_row, client_row in zip(results, client_view, strict=True):
        if admin_row["reason"] == "global_optout":
            assert (client_row["reason"], client_row["scope"]) == ("global", GLOBAL_SCOPE)
        else:
            assert client_row == admin_row


async def test_limits_of_a_check_name_their_field(env: ApiEnv) -> None:
    """1,001 addresses, or none: 422 naming ``addresses``; an invalid address to suppress: 422 naming ``address``."""
    async with env.client(env.app(), env.acme_key) as http:
        too_many = await http.post(
            f"{PREFIX}/clients/acme/check", json={"addresses": [f"a{i}@example.org" for i in range(1001)]}
        )
        none = await http.post(f"{PREFIX}/global/check", json={"addresses": []})
        bad = await http.post(f"{PREFIX}/clients/acme/suppressions", json={"address": "no-at-sign"})
    assert field_names(assert_problem(too_many, 422)) == {"addresses"}
    assert field_names(assert_problem(none, 422)) == {"addresses"}
    assert field_names(assert_problem(bad, 422)) == {"address"}
    assert await env.store.db.fetchval("SELECT COUNT(*) FROM suppressions") == 0


async def test_removal_only_of_manual_entries_by_an_operator(env: ApiEnv) -> None:
    """An unsubscribe cannot be removed (409, even by the operator); a manual entry can, then mail is allowed."""
    async with env.client(env.app(), env.acme_key) as acme, env.client(env.app(), env.admin_key) as admin:
        for address, reason in (("phoned@example.org", "unsubscribed"), ("dnc@example.org", "manual")):
            added = await acme.post(
                f"{PREFIX}/clients/acme/suppressions", json={"address": address, "reason": reason}
            )
            assert added.status_code == 200 and added.json() == {"added": True}
        again = await acme.post(f"{PREFIX}/clients/acme/suppressions", json={"address": "phoned@example.org"})
        assert again.json() == {"added": False}
        by_client = await acme.post(
            f"{PREFIX}/clients/acme/suppressions/remove", json={"address": "dnc@example.org"}
        )
        assert_problem(by_client, 403)
        unsubscribe = await admin.post(
            f"{PREFIX}/clients/acme/suppressions/remove", json={"address": "phoned@example.org"}
        )
        assert_problem(unsubscribe, 409)
        manual = await admin.post(
            f"{PREFIX}/clients/acme/suppressions/remove", json={"address": "dnc@example.org"}
        )
        assert manual.status_code == 200 and manual.json() == {"removed": True}
        gone = await admin.post(
            f"{PREFIX}/clients/acme/suppressions/remove", json={"address": "dnc@example.org"}
        )
        assert_problem(gone, 404)
        check = await acme.post(
            f"{PREFIX}/clients/acme/check", json={"addresses": ["dnc@example.org", "phoned@example.org"]}
        )
    assert [r["allowed"] for r in check.json()["results"]] == [True, False]


async def test_reconsent_lifts_an_unsubscribe_never_a_complaint(env: ApiEnv) -> None:
    """/consents: refused while suppressed; with reconsent it lifts acme's unsubscribe but not a complaint."""
    await env.service.unsubscribe("changed-mind@example.org", "acme", "phone", NOW)
    await env.service.unsubscribe(
        "complained@example.org", "acme", "feedback loop", NOW, reason=Reason.COMPLAINT
    )
    proof = {"source": "web form", "method": "double-opt-in", "at": "2026-11-22T11:00:00Z"}
    async with env.client(env.app(), env.acme_key) as http:
        plain = await http.post(
            f"{PREFIX}/clients/acme/consents", json={"address": "changed-mind@example.org", **proof}
        )
        assert_problem(plain, 409)
        lifted = await http.post(
            f"{PREFIX}/clients/acme/consents",
            json={"address": "changed-mind@example.org", "reconsent": True, **proof},
        )
        assert lifted.status_code == 200 and lifted.json() == {"recorded": True}
        complaint = await http.post(
            f"{PREFIX}/clients/acme/consents",
            json={"address": "complained@example.org", "reconsent": True, **proof},
        )
        assert_problem(complaint, 409)
        future = await http.post(
            f"{PREFIX}/clients/acme/consents",
            json={"address": "new@example.org", "source": "form", "at": "2027-01-01T00:00:00Z"},
        )
        assert field_names(assert_problem(future, 422)) == {"at"}
        # A number is not a date-time (pydantic alone would read it as Unix seconds: 1970).
        epoch = await http.post(
            f"{PREFIX}/clients/acme/consents",
            json={"address": "new@example.org", "source": "form", "at": 1e-9},
        )
        assert "at" in field_names(assert_problem(epoch, 422))
        check = await http.post(
            f"{PREFIX}/clients/acme/check",
            json={"addresses": ["changed-mind@example.org", "complained@example.org"]},
        )
    results = check.json()["results"]
    assert results[0]["allowed"] is True
    assert (results[1]["allowed"], results[1]["reason"]) == (False, "complaint")


async def test_rate_limit_answers_429_with_retry_after(env: ApiEnv) -> None:
    """burst=3: the 4th quick request is a 429 problem with Retry-After; another key is not affected."""
    app = env.app(burst=3, rate_per_minute=60)
    async with env.client(app, env.acme_key) as acme, env.client(app, env.globex_key) as globex:
        statuses = [(await acme.get(f"{PREFIX}/me")).status_code for _ in range(3)]
        limited = await acme.get(f"{PREFIX}/me")
        other = await globex.get(f"{PREFIX}/me")
    assert statuses == [200, 200, 200]
    assert_problem(limited, 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert other.status_code == 200


async def test_errors_are_problem_documents(env: ApiEnv) -> None:
    """401, 403, 404, 405, 413, 415 and 422 all answer application/problem+json with type, title, status."""
    app = env.app()
    async with env.client(app, env.acme_key) as acme, env.client(app, None) as anonymous:
        assert_problem(await anonymous.get(f"{PREFIX}/me"), 401)
        assert_problem(
            await acme.post(f"{PREFIX}/global/suppressions", json={"address": "x@example.org"}), 403
        )
        assert_problem(
            await acme.post(f"{PREFIX}/clients/nobody/check", json={"addresses": ["x@example.org"]}), 404
        )
        assert assert_problem_headers(await acme.put(f"{PREFIX}/me"), 405)["allow"] == "GET"
        # A path with two routes (export and add) names both methods, not only the first route's.
        both = assert_problem_headers(await acme.delete(f"{PREFIX}/clients/acme/suppressions"), 405)
        assert both["allow"] == "GET, POST"
        huge = b'{"addresses": ["' + b"a" * DEFAULT_MAX_JSON_BYTES + b'"]}'
        too_large = await acme.post(
            f"{PREFIX}/clients/acme/check", content=huge, headers={"content-type": "application/json"}
        )
        assert_problem(too_large, 413)
        not_json = await acme.post(
            f"{PREFIX}/clients/acme/check", content=b"addresses=x", headers={"content-type": "text/plain"}
        )
        assert not_json.status_code in (415, 422)
        assert_problem(not_json, not_json.status_code)
        assert_problem(await acme.post(f"{PREFIX}/clients/acme/check", json={"adresses": ["typo"]}), 422)


def assert_problem_headers(response: httpx.Response, status: int) -> httpx.Headers:
    """:func:`assert_problem`, returning the headers."""
    assert_problem(response, status)
    return response.headers


# -- the CLI's keys against a real server -------------------------------------------------------


def cg(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a consentgate command in ``folder``."""
    return subprocess.run([CLI, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], str]]:
    """An installation with client acme, `consentgate serve` running on free ports: (folder, env, base URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    http_port = free_port()
    env |= {
        "CONSENTGATE_SMTP__LISTEN": f"127.0.0.1:{free_port()}",
        "CONSENTGATE_SMTP__INBOUND_LISTEN": f"127.0.0.1:{free_port()}",
        "CONSENTGATE_HTTP__LISTEN": f"127.0.0.1:{http_port}",
    }
    assert cg(tmp_path, env, "init").returncode == 0
    assert cg(tmp_path, env, "client", "add", "acme", "--domain", "acme.example").returncode == 0
    proc = subprocess.Popen(
        [CLI, "serve"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        if not wait_for_port("127.0.0.1", http_port, timeout=20):
            proc.kill()
            pytest.fail(f"serve did not start: {proc.communicate()[1]!r}")
        yield tmp_path, env, f"http://127.0.0.1:{http_port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_cli_key_works_over_a_socket_until_revoked(served: tuple[Path, dict[str, str], str]) -> None:
    """`client api-key create` prints the key once; it works against `serve`; list hides it; revoke → 401."""
    folder, env, base = served
    created = cg(folder, env, "client", "api-key", "create", "acme", "--label", "CRM sync")
    assert created.returncode == 0, created.stderr
    keys = [line for line in created.stdout.splitlines() if line.startswith("cg_")]
    assert len(keys) == 1
    token = keys[0]
    key_id, secret = token.split("_")[1], token.split("_")[2]
    assert created.stdout.count(secret) == 1  # shown once, and only in full on its own line
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=10) as http:
        me = http.get(f"{PREFIX}/me", headers=headers)
        assert me.status_code == 200
        assert me.json() == {"key_id": key_id, "client_id": "acme", "admin": False}
        added = http.post(
            f"{PREFIX}/clients/acme/suppressions", headers=headers, json={"address": "phoned@example.org"}
        )
        assert added.status_code == 200
        listed = cg(folder, env, "api-key", "list")
        assert listed.returncode == 0 and key_id in listed.stdout and "CRM sync" in listed.stdout
        assert secret not in listed.stdout and secret not in listed.stderr
        assert cg(folder, env, "api-key", "revoke", key_id).returncode == 0
        refused = http.get(f"{PREFIX}/me", headers=headers)
    assert_problem(refused, 401)
    check = cg(folder, env, "check", "phoned@example.org", "--client", "acme")
    assert check.returncode == 1 and "unsubscribed" in check.stdout


async def test_request_log_names_the_route_never_the_address(
    env: ApiEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The request log names the API route template under /api/v1, and no address or key appears in it."""
    address = "logged.person@example.org"
    with caplog.at_level("INFO", "consentgate.http"):
        async with env.client(env.app(), env.acme_key) as client:
            response = await client.post(f"{PREFIX}/clients/acme/check", json={"addresses": [address]})
            assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "consentgate.http"]
    assert any(f"POST {PREFIX}/clients/{{client_id}}/check 200" in line for line in lines), lines
    assert not any(address in line or env.acme_key in line for line in lines)
