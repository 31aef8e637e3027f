"""`consentgate suppressions export`: the do-not-mail list, for another system or an audit."""

from __future__ import annotations

import csv
import hashlib
import json
import sys

import typer

from cli.context import err_console, fail, open_ledger, run, state
from ledger.models import GLOBAL_SCOPE
from ledger.store.database import from_db_time

suppressions_app = typer.Typer(help="The suppression list.", no_args_is_help=True)


@suppressions_app.command("export")
def suppressions_export(
    ctx: typer.Context,
    client: str | None = typer.Option(None, "--client", help="This client's suppressions."),
    global_: bool = typer.Option(False, "--global", help="Global suppressions."),
    all_: bool = typer.Option(False, "--all", help="Every scope."),
    fmt: str = typer.Option("csv", "--format", help="csv or jsonl."),
    hashed: bool = typer.Option(False, "--hashed", help="SHA-256 of the lower-cased address instead of it."),
) -> None:
    """Write suppressions to stdout: email (or sha256), scope, reason, since, source.

    Erased people have no address any more: they are counted on stderr, not exported.
    """
    if sum((client is not None, global_, all_)) != 1:
        raise fail("give exactly one of --client ID, --global or --all")
    if fmt not in ("csv", "jsonl"):
        raise fail("--format must be csv or jsonl")
    settings = state(ctx).settings()
    scope = client or (GLOBAL_SCOPE if global_ else None)
    column = "sha256" if hashed else "email"

    async def body() -> tuple[int, int]:
        written = skipped = 0
        writer = csv.writer(sys.stdout) if fmt == "csv" else None
        if writer:
            writer.writerow([column, "scope", "reason", "since", "source"])
        async with open_ledger(settings) as store:
            if client is not None:
                await store.get_client(client)
            where = "" if scope is None else "WHERE s.scope = $1"
            args = () if scope is None else (scope,)
            async for row in store.db.iterate(
                "SELECT b.address, s.scope, s.reason, s.since, s.source FROM suppressions s "
                f"LEFT JOIN subjects b ON b.subject_key = s.subject_key {where} ORDER BY s.scope, s.since",
                *args,
            ):
                address, row_scope, reason, since, source = row
                if address is None:
                    skipped += 1
                    continue
                value = hashlib.sha256(address.lower().encode()).hexdigest() if hashed else address
                when = from_db_time(since)
                stamp = when.isoformat() if when else ""
                if writer:
                    writer.writerow([value, row_scope, reason, stamp, source])
                else:
                    record = {
                        column: value,
                        "scope": row_scope,
                        "reason": reason,
                        "since": stamp,
                        "source": source,
                    }
                    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
            if hashed:
                hashed_where = "WHERE algo = 'sha256'" + ("" if scope is None else " AND scope = $1")
                async for digest, row_scope, reason, since, source in store.db.iterate(
                    f"SELECT digest, scope, reason, since, source FROM hashed_suppressions {hashed_where}",
                    *args,
                ):
                    when = from_db_time(since)
                    values = [
                        bytes(digest).hex(),
                        row_scope,
                        reason,
                        when.isoformat() if when else "",
                        source,
                    ]
                    if writer:
                        writer.writerow(values)
                    else:
                        sys.stdout.write(
                            json.dumps(
                                dict(zip([column, "scope", "reason", "since", "source"], values, strict=True))
                            )
                            + "\n"
                        )
                    written += 1
        return written, skipped

    written, skipped = run(body)
    err_console.print(
        f"exported {written} suppression(s)"
        + (
            f"; {skipped} without a stored address (erased, or bulk-imported: imports keep only the keyed hash)"
            " not exported"
            if skipped
            else ""
        )
    )
