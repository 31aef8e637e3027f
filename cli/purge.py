"""`consentgate purge`: apply the retention policy now (``serve`` runs the same daily)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import typer
from rich.table import Table

from cli.context import fail, now, open_ledger, out_console, run, state
from cli.settings import Settings
from ledger.errors import LedgerError
from ledger.retention import RetentionPolicy
from ledger.store import SqlLedgerStore
from ledger.store.exclusive import exclusive
from ledger.store.purge import PurgeReport, run_purge

log = logging.getLogger("consentgate.purge")


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


def seconds_until(hour: int, moment: datetime) -> float:
    """Seconds from ``moment`` to the next ``hour``:00 UTC (a full day when it is exactly that time)."""
    target = moment.astimezone(UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    if target <= moment:
        target += timedelta(days=1)
    return (target - moment).total_seconds()


@dataclass
class DailyPurge:
    """A `serve` component: runs the retention purge every day at ``retention.purge_hour`` (UTC)."""

    settings: Settings
    store: SqlLedgerStore
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Schedule the loop."""
        self._task = asyncio.create_task(self._loop(), name="daily-purge")

    async def stop(self) -> None:
        """Cancel the loop (a purge in progress stops between batches; each batch is atomic)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        """Sleep until the purge hour, purge, repeat; a failure is logged and retried next day."""
        policy = retention_policy(self.settings)
        while True:
            await asyncio.sleep(seconds_until(self.settings.retention.purge_hour, now()))
            try:
                # Every node's worker 0 wakes at this hour: one of them purges, the others skip.
                async with exclusive(self.store.db, "daily-purge") as mine:
                    if not mine:
                        log.info("daily purge: another node is running it")
                        continue
                    report = await run_purge(self.store, policy, now())
            except LedgerError:
                log.exception("daily purge failed; retrying tomorrow")
                continue
            log.info("daily purge: %s", ", ".join(f"{rule} {n}" for rule, n in report.deleted.items()))
