"""`consentgate init` and `consentgate db migrate`: creating and upgrading an installation."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.context import open_ledger, out_console, run, state
from cli.settings import CONFIG_TEMPLATE, config_path, load_settings
from ledger.secret_file import create_secrets, load_secrets
from ledger.store import open_store, sqlite_path
from ledger.store.migrate import migrate, pending

db_app = typer.Typer(help="Database schema: see what is pending and apply it.", no_args_is_help=True)


def init(ctx: typer.Context) -> None:
    """Create the config file, the secret file (0600) and the database; safe to run again.

    Never overwrites an existing config or secret: a new secret would orphan every token
    and every suppression already recorded.
    """
    path = config_path(state(ctx).config)
    if path.exists():
        out_console.print(f"config   {path} (exists, kept)")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
        out_console.print(f"config   {path} (written)")
    settings = load_settings(path)
    created = create_secrets(settings.secret_file)
    load_secrets(settings.secret_file)  # proves it is readable before we report success
    out_console.print(
        f"secret   {settings.secret_file} ({'created, mode 0600' if created else 'exists, kept'})"
    )
    if settings.database_url.startswith("sqlite:///"):
        db_file = sqlite_path(settings.database_url)
        if db_file != ":memory:":
            Path(db_file).parent.mkdir(parents=True, exist_ok=True)
    if settings.upstream.url.startswith("maildir:"):
        Path(settings.upstream.url.removeprefix("maildir:")).mkdir(parents=True, exist_ok=True)

    async def body() -> None:
        store = await open_store(settings.database_url)
        try:
            applied = await migrate(store.db)
        finally:
            await store.close()
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "already current"
        out_console.print(f"database {settings.database_url} ({names})")

    run(body)
    out_console.print("ready: add a client with `consentgate client add ID --domain example.com`")


@db_app.command("migrate")
def db_migrate(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be applied."),
) -> None:
    """Apply pending schema migrations (forward only), saying what each one is first."""
    settings = state(ctx).settings()

    async def body() -> None:
        store = await open_store(settings.database_url)
        try:
            todo = await pending(store.db)
            if not todo:
                out_console.print("schema is current: nothing to do")
                return
            for m in todo:
                out_console.print(f"{'would apply' if dry_run else 'applying'} {m.version:04d}_{m.name}")
            if not dry_run:
                await migrate(store.db)
                out_console.print(f"applied {len(todo)} migration(s)")
        finally:
            await store.close()

    run(body)


@db_app.command("status")
def db_status(ctx: typer.Context) -> None:
    """Say whether the schema is current (exit 1 when migrations are pending)."""
    settings = state(ctx).settings()

    async def body() -> int:
        async with open_ledger(settings, check_schema=False) as store:
            return len(await pending(store.db))

    count = run(body)
    out_console.print("schema is current" if not count else f"{count} migration(s) pending")
    raise typer.Exit(1 if count else 0)
