"""`consentgate purge`: apply the retention policy now (``serve`` runs the same daily)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.table import Table

from cli.context import fail, now, open_ledger, out_console, run, state
from cli.settings import Settings
from ledger.retention import RetentionPolicy
from ledger.store.purge import PurgeReport, run_purge


def retention_policy(settings: Settings) -> RetentionPolicy:
    """The retention policy of the configuration."""
    r = settings.retention
    return RetentionPolicy(
        inactivity_days=r.inactivity_days,
        event_days=r.event_days,
        unsubscribed_relationship_days=r.unsubscribed_relationship_days,
        consent_proof_days=r.consent_proof_days,
        outbox_days=r.outbox_days,
    )


def purge(
    ctx: typer.Context,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Count what each rule would delete; change nothing."
    ),
    at: str | None = typer.Option(None, "--now", help="Purge as of this ISO date/time (UTC) instead of now."),
) -> None:
    """Delete what the retention policy says is due, per rule, in short batches; safe to rerun."""
    settings = state(ctx).settings()
    moment = now()
    if at is not None:
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            raise fail(f"--now {at!r} is not an ISO date or date-time (e.g. 2027-01-31)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    policy = retention_policy(settings)

    async def body() -> PurgeReport:
        async with open_ledger(settings) as store:
            return await run_purge(store, policy, moment, dry_run=dry_run)

    report = run(body)
    table = Table(title=f"purge as of {moment.isoformat()}" + (" (dry run)" if dry_run else ""))
    table.add_column("rule")
    table.add_column("would delete" if dry_run else "deleted", justify="right")
    table.add_column("policy")
    for rule, count, text in report.describe(policy):
        table.add_row(rule, str(count), text)
    out_console.print(table)
    out_console.print(f"{report.transactions} transaction(s)")
