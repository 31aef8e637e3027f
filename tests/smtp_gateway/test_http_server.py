"""The link service over real sockets: uvicorn on port 0, real curl, privacy and bad-input checks."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import string
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import make_store
from linkservice_support import LinkEnv, make_env

from ledger import tokens
from ledger.secret_file import Secrets
from ledger.store.sqlite import SqliteDatabase
from smtp_gateway.http import HttpServer
from smtp_gateway.http.server import HttpListenError, bind_socket

CLIENT_IPS = ("193.231.20.1", "8.8.8.8", "81.180.64.1", "1.1.1.1", "2a02:2f0e::1")
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) UA-MARKER-alpha",
    "Thunderbird/128 UA-MARKER-bravo",
    "curl/8.0 UA-MARKER-charlie",
)


@pytest.fixture
async def env(tmp_path: Path, test_secrets: Secrets) -> AsyncIterator[LinkEnv]:
    """A SQLite ledger with two clients and a subject (raw file bytes are inspected here)."""
    store, _url, _schema = await make_store("sqlite", tmp_path)
    try:
        yield await make_env(store, test_secrets)
    finally:
        await store.close()


@pytest.fixture
async def server(env: LinkEnv) -> AsyncIterator[HttpServer]:
    """The link service on a real uvicorn listener on 127.0.0.1, port 0; loopback is a trusted proxy."""
    app = env.app(trusted_proxies=("127.0.0.1/32",))
    running = HttpServer(app, host="127.0.0.1", port=0)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def curl(*args: str) -> tuple[int, str]:
    """Run the real curl binary; return (exit status, stdout)."""
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "10",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_curl_one_click_multipart_and_urlencoded(env: LinkEnv, server: HttpServer) -> None:
    """`curl -X POST -F List-Unsubscribe=One-Click` and `-d` (urlencoded) both unsubscribe: 200, no redirect."""
    fmt = "%{http_code} %{content_type} [%{redirect_url}]"
    code, out = await curl(
        "-X",
        "POST",
        "-F",
        "List-Unsubscribe=One-Click",
        "-o",
        "/dev/null",
        "-w",
        fmt,
        f"{server.url}/u/{env.token}",
    )
    assert code == 0 and out.startswith("200 text/plain") and out.endswith("[]"), out
    assert not await env.allowed("acme") and await env.allowed("globex")

    other = env.mint(env.globex)
    code, out = await curl(
        "-X",
        "POST",
        "-d",
        "List-Unsubscribe=One-Click",
        "-o",
        "/dev/null",
        "-w",
        fmt,
        f"{server.url}/u/{other}",
    )
    assert code == 0 and out.startswith("200 ") and out.endswith("[]"), out
    assert not await env.allowed("globex")
    assert [row[3] for row in await env.events()] == ["one-click", "one-click"]


async def test_no_ip_address_or_user_agent_in_the_database_or_the_logs(
    env: LinkEnv, server: HttpServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """After traffic from several addresses and agents, the SQLite files and the logs hold none of them."""
    caplog.set_level(logging.DEBUG)
    keys = env.service.token_keys
    assert keys is not None
    link = tokens.sign_link("https://acme.example/spring-sale", keys)
    tokens_by_client = [env.token, env.mint(env.globex)]
    async with httpx.AsyncClient(base_url=server.url, follow_redirects=False) as http:
        for i, address in enumerate(CLIENT_IPS):
            headers = {"x-forwarded-for": address, "user-agent": USER_AGENTS[i % len(USER_AGENTS)]}
            token = tokens_by_client[i % 2]
            assert (await http.get(f"/u/{token}", headers=headers)).status_code == 200
            assert (await http.get(f"/o/{token}", headers=headers)).status_code == 200
            assert (await http.get(f"/c/{token}/{link}", headers=headers)).status_code == 302
            assert (await http.get(f"/u/{token}zz", headers=headers)).status_code == 404
        one_click = {"List-Unsubscribe": "One-Click"}
        for token, address in zip(tokens_by_client, CLIENT_IPS, strict=False):
            headers = {"x-forwarded-for": address, "user-agent": USER_AGENTS[0]}
            assert (await http.post(f"/u/{token}", data=one_click, headers=headers)).status_code == 200

    countries = {row[5] for row in await env.events()}
    assert {"RO", "US", "MD", "AU"} <= countries  # the addresses were used, in memory

    db = env.store.db
    assert isinstance(db, SqliteDatabase)
    raw = await asyncio.to_thread(_database_bytes, db.path)
    server_logs = "\n".join(
        record.getMessage() + (record.exc_text or "")
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))  # the test's own client, not the server
    )
    captured = capfd.readouterr()
    printed = captured.out + captured.err
    assert "GET /u/{token} 200" in server_logs  # the request log ran and was captured
    for address in CLIENT_IPS:
        packed = ipaddress.ip_address(address).packed
        assert address.encode() not in raw and packed not in raw, address
        assert address not in server_logs and address not in printed, address
    for agent in USER_AGENTS:
        marker = agent.split()[-1]
        assert marker.encode() not in raw and marker not in server_logs and marker not in printed
    for token in tokens_by_client:
        assert token not in server_logs  # paths hold tokens: only route templates are logged


def _database_bytes(path: str) -> bytes:
    """The raw bytes of a SQLite database: main file, WAL (must exist: WAL mode) and shared memory."""
    assert Path(path + "-wal").exists()
    files = [Path(path), Path(path + "-wal"), Path(path + "-shm")]
    return b"".join(file.read_bytes() for file in files if file.exists())


async def test_bad_input_never_gives_a_server_error(env: LinkEnv, server: HttpServer) -> None:
    """Garbage tokens of every length, odd links, huge and mistyped bodies, odd methods: never a 5xx."""
    alphabet = string.ascii_letters + string.digits + "-_.~%!$&'()*+,;=:@"
    statuses: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=server.url, follow_redirects=False, timeout=10) as http:
        for length in range(1, 130):
            junk = "".join(secrets.choice(alphabet) for _ in range(length))
            b32 = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(length))
            prefix = env.token[: min(length, len(env.token) - 1)]  # never the whole, valid token
            for token in (junk, b32, prefix):
                for method, path in (
                    ("GET", f"/u/{token}"),
                    ("POST", f"/u/{token}"),
                    ("GET", f"/o/{token}"),
                    ("GET", f"/c/{env.token}/{token}"),
                    ("GET", f"/c/{token}/{token}.{token}"),
                ):
                    data = {"List-Unsubscribe": "One-Click"} if method == "POST" else None
                    statuses[f"{method} {path}"] = (await http.request(method, path, data=data)).status_code
        for path in ("/u/%00%ff", "/u/..%2f..%2fetc", "/c/%e2%98%83/%f0", "/o/" + "a" * 5000, "/u/ĸelvin"):
            statuses[path] = (await http.get(path)).status_code
        target = f"/u/{env.token}"
        cases: dict[str, httpx.Response] = {
            "huge body": await http.post(
                target,
                content=b"List-Unsubscribe=One-Click&" + b"x" * 2_000_000,
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            "huge chunked body": await http.post(
                target,
                content=_chunks(b"y" * 65536, 40),
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            "json": await http.post(target, json={"List-Unsubscribe": "One-Click"}),
            "text": await http.post(
                target, content=b"List-Unsubscribe=One-Click", headers={"content-type": "text/plain"}
            ),
            "no content type": await http.post(target, content=b"List-Unsubscribe=One-Click"),
            "multipart without boundary": await http.post(
                target, content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
            ),
            "broken multipart": await http.post(
                target,
                content=b"--x\r\nContent-Disposition: form-da",
                headers={"content-type": "multipart/form-data; boundary=x"},
            ),
            "file upload": await http.post(target, files={"List-Unsubscribe": ("a.txt", b"One-Click")}),
            "empty form": await http.post(target, data={}),
            "unknown action": await http.post(target, data={"action": "explode"}),
            "too many fields": await http.post(target, data={f"f{i}": "x" for i in range(100)}),
            "bad lang": await http.post(target, data={"action": "unsubscribe", "lang": "\x00" * 50}),
            "put": await http.put(target, content=b"x"),
            "delete": await http.delete(target),
            "bad accept-language": await http.get(target, headers={"accept-language": ";q=;" * 5000}),
        }
    assert not [where for where, status in statuses.items() if status >= 500]
    assert not [name for name, response in cases.items() if response.status_code >= 500]
    assert cases["huge body"].status_code == 413 and cases["huge chunked body"].status_code == 413
    assert cases["json"].status_code == 415 and cases["text"].status_code == 415
    assert cases["put"].status_code == 405
    assert cases["bad lang"].status_code == 200  # a bogus language falls back to the default
    # Only "bad lang" (a real page action) unsubscribed; every refused request changed nothing.
    assert [row[3] for row in await env.events()] == ["page"]


async def _chunks(piece: bytes, count: int) -> AsyncIterator[bytes]:
    """A chunked request body (no Content-Length) of ``count`` pieces."""
    for _ in range(count):
        yield piece


async def test_a_deleted_clients_token_gives_404_not_500(env: LinkEnv, server: HttpServer) -> None:
    """Tokens of a client deleted after sending resolve like forged ones."""
    token = env.mint(env.globex)
    await env.store.db.execute("DELETE FROM clients WHERE id = $1", "globex")
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get(f"/u/{token}")).status_code == 404
        assert (await http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})).status_code == 404


async def test_pre_bound_socket_start_stop_and_port_in_use(env: LinkEnv) -> None:
    """The server runs on a socket bound by the caller, stops cleanly, and a busy port is a clear error."""
    sock = bind_socket("127.0.0.1", 0)
    running = HttpServer(env.app(), sock=sock)
    await running.start()
    host, port = running.address
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://{host}:{port}/healthz")).text == "ok\n"
        with pytest.raises(HttpListenError, match=f"127.0.0.1:{port}"):
            bind_socket("127.0.0.1", port)
        await running.stop()
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://{host}:{port}/healthz")
    await running.stop()  # idempotent
