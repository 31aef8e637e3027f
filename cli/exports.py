"""`consentgate suppressions export`: the do-not-mail list, for another system or an audit."""

from __future__ import annotations

import sys

import typer

from cli.context import err_console, fail, open_ledger, run, state
from ledger.models import GLOBAL_SCOPE
from ledger.store.exports import ExportFormat, SuppressionExport

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
    if fmt not in tuple(ExportFormat):
        raise fail("--format must be csv or jsonl")
    settings = state(ctx).settings()
    scope = client or (GLOBAL_SCOPE if global_ else None)

    async def body() -> tuple[int, int]:
        async with open_ledger(settings) as store:
            if client is not None:
                await store.get_client(client)
            export = SuppressionExport(store.db, scope, hashed=hashed)
            async for piece in export.text(ExportFormat(fmt)):
                sys.stdout.write(piece)
        return export.written, export.skipped

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
