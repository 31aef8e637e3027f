"""Wiring shared by every command: settings, the store, secrets, the clock, and error reporting.

Errors become a one-line message on stderr and exit status 2 here, in one place.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from cli.settings import ConfigError, Settings, load_settings
from ledger.errors import LedgerError
from ledger.secret_file import Secrets, load_secrets
from ledger.store import SqlLedgerStore, open_store
from ledger.store.migrate import require_current

T = TypeVar("T")

EXIT_ERROR = 2

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


@dataclass
class CliState:
    """What the root callback learned (the --config option), and the settings loaded from it."""

    config: Path | None = None
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """Load the settings once per invocation."""
        if self._settings is None:
            self._settings = load_settings(self.config)
        return self._settings


def state(ctx: typer.Context) -> CliState:
    """The :class:`CliState` of this invocation (created by the root callback)."""
    found = ctx.find_root().obj
    if not isinstance(found, CliState):
        found = CliState()
        ctx.find_root().obj = found
    return found


def now() -> datetime:
    """The current UTC time: the CLI is where the clock is read, the core only receives it."""
    return datetime.now(UTC)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr and return the Exit to raise (status 2)."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(EXIT_ERROR)


def run(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async command body (failures are reported by :func:`report_errors`)."""
    return asyncio.run(coro_factory())


def report_errors(entry: Callable[[], object]) -> None:
    """Call the CLI, turning every expected failure into a one-line error and exit status 2.

    This is the one place where exceptions become operator messages: no traceback for a
    mistake the operator can fix.
    """
    from smtp_gateway.errors import GatewayError

    try:
        entry()
    except (LedgerError, ConfigError, GatewayError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


def read_secrets(settings: Settings) -> Secrets:
    """Load the secret file named in the settings."""
    return load_secrets(settings.secret_file)


@asynccontextmanager
async def open_ledger(settings: Settings, *, check_schema: bool = True) -> AsyncIterator[SqlLedgerStore]:
    """Open the store from the settings, refusing to work on a schema older than the code."""
    store = await open_store(
        settings.database_url,
        pool_size=settings.database_pool_size,
        pool_min_size=settings.database_pool_min_size,
        command_timeout=settings.database_command_timeout_seconds,
    )
    try:
        if check_schema:
            await require_current(store.db)
        yield store
    finally:
        await store.close()


def is_tty() -> bool:
    """Whether stdout is a terminal (progress bars only then)."""
    return sys.stdout.isatty()
