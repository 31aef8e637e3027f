"""`consentgate unsubscribe import` and `consentgate consent import`: lists from files.

Files are read as bytes and handed to the import code the admin API shares
(ledger.store.import_files: the pure parser, then the bulk importers); bad rows are reported with
file and line number (and written to --rejects), good rows are imported. Exit status: 0 all rows fine, 1 some rows rejected (the others
imported), 2 nothing done (missing file, unknown client, unreadable header…).
"""

from __future__ import annotations

import csv
import sys
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.context import err_console, fail, is_tty, now, open_ledger, out_console, read_secrets, run, state
from cli.ledger_cmds import consent_app, unsubscribe_app
from ledger.import_batch import KeyingParams
from ledger.importing import ConsentRow, HashAlgo, ImportFormat, Rejected, detect_format, read_records
from ledger.models import GLOBAL_SCOPE, ConsentProof
from ledger.store.import_files import (
    PARALLEL_MIN_BYTES,
    SuppressionFileImport,
    parse_consents,
    start_pool,
    worker_count,
)
from ledger.store.imports import import_consents

SHOWN_REJECTS = 20
EXIT_REJECTED = 1


def _check_files(files: list[str]) -> None:
    """Fail before touching the database if a named file cannot be read."""
    if files.count("-") > 1:
        raise fail("stdin ('-') can be given only once")
    for name in files:
        if name == "-":
            continue
        path = Path(name)
        if not path.is_file():
            raise fail(f"{name}: no such file")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise fail(f"{name}: cannot read: {exc.strerror}") from None


def _header_check(files: list[str], fmt: ImportFormat) -> None:
    """Read each regular file's first rows, so a file without an e-mail column fails up front."""
    for name in files:
        if name == "-":
            continue
        with Path(name).open("rb") as handle:
            try:
                for _ in zip(range(2), read_records(handle, fmt, name), strict=False):
                    pass
            except ValueError as exc:
                raise fail(str(exc)) from None


class RejectLog:
    """Collects bad rows: shows the first few on stderr, writes all to the rejects file."""

    def __init__(self, path: Path | None, quiet: bool, stack: ExitStack) -> None:
        """Open the rejects file (truncating it) when one is asked for."""
        self.count = 0
        self.quiet = quiet
        self.path = path
        self._writer: Any = None
        if path is not None:
            handle = stack.enter_context(path.open("w", encoding="utf-8", newline=""))
            self._writer = csv.writer(handle)
            self._writer.writerow(["file", "line", "error", "row"])

    def add(self, rejected: Rejected) -> None:
        """Record one bad row."""
        self.count += 1
        if self._writer is not None:
            self._writer.writerow([rejected.file, rejected.line, rejected.error, rejected.raw])
        if not self.quiet and self.count <= SHOWN_REJECTS:
            err_console.print(f"rejected {rejected.describe()}", markup=False, soft_wrap=True)

    def summary(self) -> str:
        """`rejected N` with a pointer to the full list."""
        if not self.count:
            return "rejected 0"
        where = f" (all listed in {self.path})" if self.path else ""
        hint = "" if self.path or self.count <= SHOWN_REJECTS else " (use --rejects PATH for the full list)"
        return f"rejected {self.count}{where}{hint}"


def _size(name: str) -> int:
    """The size of a named file (0 for stdin)."""
    return 0 if name == "-" else Path(name).stat().st_size


def _open(name: str, stack: ExitStack) -> IO[bytes]:
    """The file, or stdin for '-' (binary: decoding is per line, in the parser)."""
    if name == "-":
        return sys.stdin.buffer
    return stack.enter_context(Path(name).open("rb"))


def _progress(quiet: bool) -> Progress | None:
    """A rich progress display on a terminal, nothing in scripts or with --quiet."""
    if quiet or not is_tty():
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out_console,
        transient=True,
    )


@unsubscribe_app.command("import")
def unsubscribe_import(
    ctx: typer.Context,
    files: list[str] = typer.Argument(
        ..., help="CSV (header with an email column), .txt or .jsonl; '-' = stdin."
    ),
    client: str | None = typer.Option(None, "--client", help="Suppress for this client only."),
    global_: bool = typer.Option(
        False, "--global", help="Suppress for every client (signed written requests)."
    ),
    source: str = typer.Option("import", help="Default source of each row, e.g. 'written request REF'."),
    fmt: ImportFormat = typer.Option(ImportFormat.AUTO, "--format", help="File layout (auto-detected)."),
    hashed: HashAlgo | None = typer.Option(
        None, "--hashed", help="The file holds digests of lower-cased addresses (another provider's list)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and count; write nothing."),
    rejects: Path | None = typer.Option(None, "--rejects", help="Write every bad row here (CSV)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display and no per-row messages."),
) -> None:
    """Import unsubscribe requests; bad rows are reported by file and line, good rows imported.

    Safe to run again: rows already suppressed are counted, not duplicated. Exit 1 if any row
    was rejected.
    """
    if bool(client) == global_:
        raise fail("give exactly one of --client ID or --global")
    scope = client or GLOBAL_SCOPE
    _check_files(files)
    _header_check(files, fmt)
    settings = state(ctx).settings()
    secrets = read_secrets(settings)
    moment = now()
    params = KeyingParams(secrets.pepper, scope, source, moment)
    pool = None
    workers = worker_count()
    if hashed is None and workers and sum(_size(name) for name in files) >= PARALLEL_MIN_BYTES:
        # Forked here, before the event loop and the database thread exist.
        pool = start_pool(params, workers)

    async def body() -> tuple[str, int]:
        with ExitStack() as stack:
            log = RejectLog(rejects, quiet, stack)
            async with open_ledger(settings) as store:
                progress = None if hashed is not None else _progress(quiet)
                task = progress.add_task("importing", total=None) if progress else None
                importer = SuppressionFileImport(
                    store,
                    secrets.pepper,
                    scope,
                    source,
                    moment,
                    on_reject=log.add,
                    hashed=hashed,
                    dry_run=dry_run,
                    pool=pool,
                    progress=(lambda n: progress.advance(task, n)) if progress and task is not None else None,
                )
                await importer.check_scope()
                if progress:
                    stack.enter_context(progress)
                for name in files:
                    shown = "<stdin>" if name == "-" else name
                    try:
                        await importer.add_file(_open(name, stack), fmt, shown, parallel=name != "-")
                    except ValueError as exc:
                        raise fail(str(exc)) from None
                counts = await importer.finish()
            verb = "would import" if dry_run else "imported"
            dup = f", {counts.duplicates} duplicate(s) in the input" if counts.duplicates else ""
            line = f"{verb} {counts.imported}, already suppressed {counts.already_suppressed}{dup}, {log.summary()}"
            return line, log.count

    try:
        summary, rejected = run(body)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    out_console.print(summary)
    if rejected:
        raise typer.Exit(EXIT_REJECTED)


@consent_app.command("import")
def consent_import(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="CSV/.txt/.jsonl of opt-ins; '-' = stdin."),
    client: str = typer.Option(..., "--client", help="The client the consent was given to."),
    source: str = typer.Option(..., help="Where the opt-ins happened (default for rows without a source)."),
    notice_version: str = typer.Option("", help="Privacy notice / form version shown (default per row)."),
    method: str = typer.Option("", help="double-opt-in, checkbox, paper form… (default per row)."),
    legal_basis: str = typer.Option("consent", help="GDPR Art. 6 basis (default per row)."),
    at: datetime | None = typer.Option(
        None, help="When consent was given, for rows without a date (default now)."
    ),
    reconsent: bool = typer.Option(
        False,
        help="Rows with their own date and source/method lift this client's suppression (fresh opt-in).",
    ),
    fmt: ImportFormat = typer.Option(ImportFormat.AUTO, "--format", help="File layout (auto-detected)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and count; write nothing."),
    rejects: Path | None = typer.Option(None, "--rejects", help="Write bad and refused rows here (CSV)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display and no per-row messages."),
) -> None:
    """Import opt-ins with their proof. A suppressed address is never re-subscribed.

    Such rows are reported `suppressed, not imported`, unless --reconsent is given and the row
    carries its own proof of a fresh opt-in. Exit 1 if any row was rejected or refused.
    """
    _check_files([file])
    _header_check([file], fmt)
    settings = state(ctx).settings()
    secrets = read_secrets(settings)
    moment = now()
    given = at.replace(tzinfo=at.tzinfo or moment.tzinfo) if at else moment
    defaults = ConsentProof(source, given, method, notice_version, legal_basis)
    shown = "<stdin>" if file == "-" else file

    async def body() -> tuple[str, int]:
        with ExitStack() as stack:
            log = RejectLog(rejects, quiet, stack)
            raw_by_line: dict[int, str] = {}
            good: list[ConsentRow] = []
            try:
                for checked, raw in parse_consents(_open(file, stack), fmt, shown, moment):
                    if isinstance(checked, Rejected):
                        log.add(checked)
                    else:
                        raw_by_line[checked.line] = raw
                        good.append(checked)
            except ValueError as exc:
                raise fail(str(exc)) from None
            progress = _progress(quiet)
            async with open_ledger(settings) as store:
                if progress:
                    stack.enter_context(progress)
                    task = progress.add_task("importing", total=len(good))
                counts = await import_consents(
                    store,
                    secrets.pepper,
                    client,
                    good,
                    defaults,
                    moment,
                    reconsent=reconsent,
                    dry_run=dry_run,
                    progress=(lambda n: progress.advance(task, n)) if progress else None,
                )
            bad = log.count
            for number, why in counts.suppressed:
                log.add(Rejected(shown, number, why, raw_by_line.get(number, "")))
            verb = "would import" if dry_run else "imported"
            refused = len(counts.suppressed)
            listed = f" (all listed in {rejects})" if rejects and log.count else ""
            line = f"{verb} {counts.imported}, suppressed, not imported {refused}, rejected {bad}{listed}"
            return line, log.count

    summary, rejected = run(body)
    out_console.print(summary)
    if rejected:
        raise typer.Exit(EXIT_REJECTED)


__all__ = ["consent_import", "detect_format", "unsubscribe_import"]
