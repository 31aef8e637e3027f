"""`consentgate client …`: the agency's clients (tenants), their credentials and settings."""

from __future__ import annotations

import ipaddress
import json
import re

import typer
from rich.table import Table

from cli.context import fail, now, open_ledger, out_console, run, state
from ledger.models import Client, ClientMode, OnSuppressed, is_valid_client_id
from ledger.passwords import generate_password, hash_password

client_app = typer.Typer(help="Clients: add them, list them, change their settings.", no_args_is_help=True)


def _check_domains(domains: list[str]) -> tuple[str, ...]:
    """Lower-case and sanity-check sender domains."""
    cleaned = tuple(d.strip().lower().rstrip(".") for d in domains)
    for domain in cleaned:
        if "." not in domain or "@" in domain or " " in domain:
            raise fail(f"{domain!r} is not a domain name (example: example.com)")
    return cleaned


def _check_networks(networks: list[str]) -> tuple[str, ...]:
    """Validate trusted-network CIDRs."""
    try:
        return tuple(str(ipaddress.ip_network(n, strict=False)) for n in networks)
    except ValueError as exc:
        raise fail(f"bad --trusted-network: {exc}") from None


@client_app.command("add")
def client_add(
    ctx: typer.Context,
    client_id: str = typer.Argument(..., help="Slug: lower-case letters, digits, dashes (e.g. acme)."),
    domain: list[str] = typer.Option(..., "--domain", help="Sender domain (repeatable)."),
    name: str = typer.Option("", help="Display name shown on unsubscribe pages (default: the id)."),
    postal_address: str = typer.Option("", help="Postal address printed in every footer."),
    mode: ClientMode = typer.Option(ClientMode.SUPPRESSION_ONLY, help="Whether consent is required."),
    on_suppressed: OnSuppressed = typer.Option(
        OnSuppressed.REJECT, help="reject: 550 at RCPT; drop: accept and never deliver."
    ),
    tracking: bool = typer.Option(True, help="Rewrite links for click tracking and add an open pixel."),
    trusted_network: list[str] = typer.Option(
        [], "--trusted-network", help="CIDR allowed to submit as this client without AUTH (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the credentials as JSON."),
) -> None:
    """Add a client and print its SMTP username and password (shown once, stored hashed)."""
    if not is_valid_client_id(client_id):
        raise fail(f"{client_id!r} is not a valid client id (lower-case letters, digits, dashes)")
    settings = state(ctx).settings()
    password = generate_password()
    client = Client(
        id=client_id,
        name=name or client_id,
        domains=_check_domains(domain),
        postal_address=postal_address,
        mode=mode,
        on_suppressed=on_suppressed,
        tracking=tracking,
        password_hash=hash_password(password),
        trusted_networks=_check_networks(trusted_network),
    )

    async def body() -> Client:
        async with open_ledger(settings) as store:
            return await store.add_client(client, now())

    added = run(body)
    if as_json:
        out_console.print_json(json.dumps({"client": added.id, "username": added.id, "password": password}))
        return
    out_console.print(f"client   {added.id} ({', '.join(added.domains)})")
    out_console.print(f"username {added.id}")
    out_console.print(f"password {password}")
    out_console.print("(the password is shown only now; it is stored hashed)")


@client_app.command("list")
def client_list(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List clients with their domains and settings (never their credentials)."""
    settings = state(ctx).settings()

    async def body() -> list[Client]:
        async with open_ledger(settings) as store:
            return await store.list_clients()

    clients = run(body)
    rows = [
        {
            "id": c.id,
            "name": c.name,
            "domains": list(c.domains),
            "mode": str(c.mode),
            "on_suppressed": str(c.on_suppressed),
            "tracking": c.tracking,
            "dkim_selector": c.dkim_selector,
            "paused": c.paused_reason,
        }
        for c in clients
    ]
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    table = Table("id", "name", "domains", "mode", "on suppressed", "tracking", "dkim", "paused")
    for r in rows:
        table.add_row(
            str(r["id"]),
            str(r["name"]),
            ", ".join(r["domains"]),  # type: ignore[arg-type]
            str(r["mode"]),
            str(r["on_suppressed"]),
            "on" if r["tracking"] else "off",
            str(r["dkim_selector"] or "-"),
            str(r["paused"] or "-"),
        )
    out_console.print(table)


@client_app.command("resume")
def client_resume(
    ctx: typer.Context,
    client_id: str = typer.Argument(..., help="The paused client."),
) -> None:
    """Lift a client's pause (set by the complaint-rate guard) and restart its complaint window."""
    from cli.inbound import inbound_policy
    from ledger.bounce_service import InboundLedger

    settings = state(ctx).settings()

    async def body() -> tuple[str, Client]:
        async with open_ledger(settings) as store:
            before = await store.get_client(client_id)
            resumed = await InboundLedger(store, inbound_policy(settings)).resume_client(client_id, now())
            return before.paused_reason, resumed

    previous, resumed = run(body)
    if previous:
        out_console.print(f"client {resumed.id} resumed (was paused: {previous})")
    else:
        out_console.print(f"client {resumed.id} was not paused; complaint window restarted")


@client_app.command("dkim-keygen")
def client_dkim_keygen(
    ctx: typer.Context,
    client_id: str = typer.Argument(..., help="The client whose mail will be signed."),
    selector: str = typer.Option(..., "--selector", "-s", help="DKIM selector (e.g. cg2026)."),
    bits: int = typer.Option(2048, help="RSA key size (Gmail needs RSA; 2048 is the norm)."),
) -> None:
    """Create the client's DKIM key (stored in the ledger) and print the DNS TXT record to publish."""
    from smtp_gateway.dkim_sign import generate_rsa_key

    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", selector):
        raise fail(f"{selector!r} is not a usable selector (letters, digits, dashes)")
    if bits < 1024:
        raise fail("DKIM keys shorter than 1024 bits are refused by receivers")
    settings = state(ctx).settings()
    pem, txt = generate_rsa_key(bits)

    async def body() -> Client:
        async with open_ledger(settings) as store:
            return await store.update_client(
                client_id, dkim_selector=selector, dkim_private_key=pem.decode("ascii")
            )

    client = run(body)
    out_console.print(f"DKIM key stored for client {client.id}; publish this TXT record for each domain:")
    # DNS character-strings hold at most 255 octets: long keys are split, resolvers join them.
    chunks = " ".join(f'"{txt[i : i + 250]}"' for i in range(0, len(txt), 250))
    for domain in client.domains:
        out_console.print(f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )", soft_wrap=True)
