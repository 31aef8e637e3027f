"""`consentgate subject …`: data-subject requests (GDPR Art. 15-21) for one address."""

from __future__ import annotations

import csv
import io
import json

import typer

from cli.context import err_console, fail, now, open_ledger, out_console, read_secrets, run, state
from ledger.service import LedgerService
from ledger.store.subjects import SubjectStore

subject_app = typer.Typer(
    help="Data-subject requests: export, erase, restrict, rectify.", no_args_is_help=True
)


@subject_app.command("export")
def subject_export(
    ctx: typer.Context,
    email: str = typer.Argument(..., help="The person's address."),
    fmt: str = typer.Option("json", "--format", help="json or csv."),
) -> None:
    """Print everything held about the person, across clients (Art. 15 access, Art. 20 portability)."""
    if fmt not in ("json", "csv"):
        raise fail("--format must be json or csv")
    settings = state(ctx).settings()
    pepper = read_secrets(settings).pepper

    async def body() -> dict[str, object]:
        async with open_ledger(settings) as store:
            identity = LedgerService(store, pepper).identify(email)
            return await SubjectStore(store).export(identity)

    data = run(body)
    if fmt == "json":
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "client", "kind", "at", "details"])
    writer.writerow(
        [
            "subject",
            "",
            "",
            data["first_seen"] or "",
            json.dumps({k: data[k] for k in ("address", "subject_key", "restricted")}),
        ]
    )
    for section, time_key in (
        ("suppressions", "since"),
        ("relationships", "consent_at"),
        ("consent_events", "at"),
        ("events", "at"),
    ):
        for item in data[section]:  # type: ignore[attr-defined]
            client = item.get("client", item.get("scope", ""))
            kind = item.get("kind", item.get("reason", item.get("status", "")))
            writer.writerow(
                [section, client, kind or "", item.get(time_key) or "", json.dumps(item, ensure_ascii=False)]
            )
    print(out.getvalue(), end="")


@subject_app.command("erase")
def subject_erase(
    ctx: typer.Context,
    email: str = typer.Argument(..., help="The person's address."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    source: str = typer.Option("data-subject request", help="Reference of the request (no personal data)."),
) -> None:
    """Erase the person (Art. 17): only the keyed hash stays, so they are never mailed or re-added."""
    settings = state(ctx).settings()
    pepper = read_secrets(settings).pepper
    if not yes and not typer.confirm(f"erase everything held about {email}? this cannot be undone"):
        raise typer.Exit(1)

    async def body() -> tuple[dict[str, int], int, bool, bool]:
        async with open_ledger(settings) as store:
            identity = LedgerService(store, pepper).identify(email)
            report = await SubjectStore(store).erase(identity, source, now())
            return (
                report.deleted,
                report.chains_checkpointed,
                report.global_suppression_added,
                report.wal_truncated,
            )

    deleted, chains, added, truncated = run(body)
    parts = ", ".join(f"{table} {count}" for table, count in deleted.items() if count) or "no personal rows"
    out_console.print(f"erased: deleted {parts}; {chains} chain(s) checkpointed", soft_wrap=True)
    out_console.print(
        "kept: keyed hash in suppressions" + (" (global 'erased' suppression added)" if added else "")
    )
    if not truncated:
        err_console.print(
            "warning: another process holds the database open; old page copies stay in the WAL until its next checkpoint"
        )


def _restrict(ctx: typer.Context, email: str, restricted: bool, source: str) -> None:
    """Set or lift a restriction of processing."""
    settings = state(ctx).settings()
    pepper = read_secrets(settings).pepper

    async def body() -> None:
        async with open_ledger(settings) as store:
            identity = LedgerService(store, pepper).identify(email)
            await store.set_restricted(identity, restricted, source, now())

    run(body)
    out_console.print(f"{'restricted' if restricted else 'unrestricted'}: {email}")


@subject_app.command("restrict")
def subject_restrict(
    ctx: typer.Context,
    email: str = typer.Argument(..., help="The person's address."),
    source: str = typer.Option("data-subject request", help="Reference of the request."),
) -> None:
    """Restrict processing (Art. 18): every client's mail to the address is refused with `restricted`."""
    _restrict(ctx, email, True, source)


@subject_app.command("unrestrict")
def subject_unrestrict(
    ctx: typer.Context,
    email: str = typer.Argument(..., help="The person's address."),
    source: str = typer.Option("data-subject request", help="Reference of the request."),
) -> None:
    """Lift a restriction of processing."""
    _restrict(ctx, email, False, source)


@subject_app.command("rectify")
def subject_rectify(
    ctx: typer.Context,
    old: str = typer.Argument(..., help="The wrong address."),
    new: str = typer.Argument(..., help="The corrected address."),
    source: str = typer.Option("data-subject request", help="Reference of the request."),
) -> None:
    """Move consent, suppressions, engagement and events to the corrected address (Art. 16)."""
    settings = state(ctx).settings()
    pepper = read_secrets(settings).pepper

    async def body() -> dict[str, int]:
        async with open_ledger(settings) as store:
            service = LedgerService(store, pepper)
            return await SubjectStore(store).rectify(
                service.identify(old), service.identify(new), source, now()
            )

    moved = run(body)
    out_console.print(f"rectified {old} -> {new}: " + ", ".join(f"{k} {v}" for k, v in moved.items()))
