"""Everyday ledger commands: unsubscribe, consent, check an address, verify the chains."""

from __future__ import annotations

import json
from datetime import datetime

import typer

from cli.context import EXIT_ERROR, fail, now, open_ledger, out_console, read_secrets, run, state
from ledger.models import ConsentProof, Decision
from ledger.service import LedgerService

unsubscribe_app = typer.Typer(help="Unsubscribe (suppress) addresses.", no_args_is_help=True)
consent_app = typer.Typer(help="Record opt-ins with their proof.", no_args_is_help=True)
ledger_app = typer.Typer(help="The tamper-evident consent ledger.", no_args_is_help=True)


def _scope_options(client: str | None, global_: bool) -> str | None:
    """Exactly one of --client / --global; returns the client id or None for global."""
    if bool(client) == global_:
        raise fail("give exactly one of --client ID or --global")
    return client


@unsubscribe_app.command("add")
def unsubscribe_add(
    ctx: typer.Context,
    email: str = typer.Argument(..., help="The address to suppress."),
    client: str | None = typer.Option(None, "--client", help="Suppress for this client only."),
    global_: bool = typer.Option(False, "--global", help="Suppress for every client (signed request)."),
    source: str = typer.Option("cli", help="Where the request came from, e.g. 'written request 2026-17'."),
) -> None:
    """Suppress an address for one client or globally; honoured at the very next RCPT."""
    scope = _scope_options(client, global_)
    settings = state(ctx).settings()
    secrets = read_secrets(settings)

    async def body() -> bool:
        async with open_ledger(settings) as store:
            service = LedgerService(store, secrets.pepper, settings.retention.inactivity_days)
            return await service.unsubscribe(email, scope, source, now())

    added = run(body)
    where = f"client {scope}" if scope else "all clients (global)"
    out_console.print(f"{'suppressed' if added else 'already suppressed'}: {email} for {where}")


@consent_app.command("add")
def consent_add(
    ctx: typer.Context,
    email: str = typer.Argument(..., help="The address that opted in."),
    client: str = typer.Option(..., "--client", help="The client the consent is given to."),
    source: str = typer.Option(..., help="Where the opt-in happened, e.g. 'signup form /newsletter'."),
    method: str = typer.Option("", help="How: double-opt-in, checkbox, paper form…"),
    notice_version: str = typer.Option("", help="Version of the privacy notice / form shown."),
    legal_basis: str = typer.Option("consent", help="GDPR Art. 6 basis."),
    at: datetime | None = typer.Option(None, help="When consent was given (ISO, UTC); default now."),
    reconsent: bool = typer.Option(
        False, help="The person's own fresh opt-in: lifts this client's suppression of the address."
    ),
) -> None:
    """Record an opt-in with its proof; a suppressed address is never re-subscribed without --reconsent."""
    settings = state(ctx).settings()
    secrets = read_secrets(settings)
    moment = now()
    given = at.replace(tzinfo=at.tzinfo or moment.tzinfo) if at else moment
    proof = ConsentProof(source, given, method, notice_version, legal_basis)

    async def body() -> None:
        async with open_ledger(settings) as store:
            service = LedgerService(store, secrets.pepper, settings.retention.inactivity_days)
            await service.consent(email, client, proof, moment, reconsent=reconsent)

    run(body)
    out_console.print(f"consent recorded: {email} for client {client}")


def _describe(decision: Decision) -> dict[str, str | bool | None]:
    """JSON-able form of a decision."""
    return {
        "allowed": decision.allowed,
        "reason": str(decision.reason) if decision.reason else None,
        "scope": decision.scope,
    }


def check(
    ctx: typer.Context,
    email: str = typer.Argument(..., help="The address to check."),
    client: str | None = typer.Option(None, "--client", help="Check as this client (default: global only)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Say whether an address may be mailed, and why not. Exit 0 allowed, 1 refused, 2 error."""
    settings = state(ctx).settings()
    secrets = read_secrets(settings)

    async def body() -> Decision:
        async with open_ledger(settings) as store:
            service = LedgerService(store, secrets.pepper, settings.retention.inactivity_days)
            return await service.check(email, client, now())

    decision = run(body)
    if as_json:
        out_console.print_json(json.dumps({"email": email, "client": client, **_describe(decision)}))
    elif decision.allowed:
        out_console.print(f"allowed: {email}" + (f" for client {client}" if client else ""))
    else:
        out_console.print(f"refused: {email} ({decision.reason}, scope {decision.scope})")
    raise typer.Exit(0 if decision.allowed else 1)


@ledger_app.command("verify")
def ledger_verify(ctx: typer.Context) -> None:
    """Walk every hash chain; exit 1 naming the first event altered or deleted outside the purge."""
    settings = state(ctx).settings()

    async def body() -> tuple[str, str | None]:
        async with open_ledger(settings) as store:
            checked, batches = await store.verify_ledger_report()
            covered = (
                f", {batches.batches} import batch(es) covering {batches.rows} suppression(s)"
                if batches.batches
                else ""
            )
            broken = batches.broken
            return f"{checked} chain(s){covered}", broken.describe() if broken else None

    checked, broken = run(body)
    if broken:
        out_console.print(f"[bold red]ledger broken:[/] {broken}")
        raise typer.Exit(1)
    out_console.print(f"ledger ok: {checked} verified")


__all__ = ["EXIT_ERROR", "check", "consent_app", "ledger_app", "unsubscribe_app"]
