"""`consentgate client api-key …` and `consentgate api-key …`: keys of the admin HTTP API."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.context import fail, now, open_ledger, out_console, run, state
from ledger.api_keys import ApiKey
from ledger.store.api_keys import ApiKeyStore

client_key_app = typer.Typer(help="API keys that act for one client.", no_args_is_help=True)
api_key_app = typer.Typer(
    help="Keys of the admin HTTP API (/api/v1): create, list, revoke.", no_args_is_help=True
)


def _create(ctx: typer.Context, client_id: str | None, label: str) -> None:
    """Create a key and print it once."""
    settings = state(ctx).settings()

    async def body() -> tuple[ApiKey, str]:
        async with open_ledger(settings) as store:
            return await ApiKeyStore(store).create(client_id, label, now())

    key, token = run(body)
    who = f"client {client_id}" if client_id else "the operator (every client)"
    out_console.print(f"API key {key.id} for {who} — shown once, store it now:", soft_wrap=True)
    print(token)
    out_console.print(
        f"use it as: curl -H 'Authorization: Bearer {token[:12]}…' {settings.http.public_url}/api/v1/me",
        soft_wrap=True,
        markup=False,
    )


@client_key_app.command("create")
def client_key_create(
    ctx: typer.Context,
    client_id: str = typer.Argument(..., help="The client the key acts for (sees only its data)."),
    label: str = typer.Option("", "--label", help="What the key is for, e.g. 'CRM sync'."),
) -> None:
    """Create an API key that sees and changes only this client's data."""
    _create(ctx, client_id, label)


@api_key_app.command("create")
def api_key_create(
    ctx: typer.Context,
    admin: bool = typer.Option(False, "--admin", help="An operator key: every client and subject requests."),
    client: str | None = typer.Option(None, "--client", help="A key for this client instead."),
    label: str = typer.Option("", "--label", help="What the key is for."),
) -> None:
    """Create an API key: `--admin` for the operator, or `--client ID` (same as `client api-key create`)."""
    if admin == (client is not None):
        raise fail("give exactly one of --admin or --client ID")
    _create(ctx, client, label)


@api_key_app.command("list")
def api_key_list(
    ctx: typer.Context,
    client: str | None = typer.Option(None, "--client", help="Only this client's keys."),
) -> None:
    """List keys (ids, whom they act for, when made and revoked; never the secrets)."""
    settings = state(ctx).settings()

    async def body() -> list[ApiKey]:
        async with open_ledger(settings) as store:
            return await ApiKeyStore(store).list(client)

    table = Table("id", "acts for", "label", "created", "revoked")
    for key in run(body):
        table.add_row(
            key.id,
            key.client_id or "(operator)",
            key.label,
            key.created_at.isoformat(timespec="seconds"),
            key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
        )
    out_console.print(table)


@api_key_app.command("revoke")
def api_key_revoke(
    ctx: typer.Context,
    key_id: str = typer.Argument(..., help="The key's id (the part after cg_, as `api-key list` shows)."),
) -> None:
    """Revoke a key: requests with it are refused (401) from now on."""
    settings = state(ctx).settings()

    async def body() -> ApiKey:
        async with open_ledger(settings) as store:
            return await ApiKeyStore(store).revoke(key_id, now())

    key = run(body)
    out_console.print(f"API key {key.id} revoked")
