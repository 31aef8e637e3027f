"""Operator commands run as the operator runs them: the real `consentgate` executable in a temp dir."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from ledger.models import EventKind
from ledger.store import open_store
from ledger.store.ledger_store import InteractionEvent

EXE = str(Path(sys.executable).with_name("consentgate"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


def cg(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run consentgate in ``cwd`` and capture its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    return subprocess.run(
        [EXE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, input=stdin, check=False
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised installation with client acme, copied for each test (init + scrypt take seconds)."""
    path = tmp_path_factory.mktemp("template")
    assert cg(path, "init").returncode == 0
    assert cg(path, "client", "add", "acme", "--domain", "acme.example").returncode == 0
    return path


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template installation."""
    target = tmp_path / "home"
    shutil.copytree(template, target)
    return target


def one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    """Exit 2 with a single `error:` line naming the problem."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr


def db_bytes(home: Path) -> bytes:
    """The raw bytes of the SQLite database file and its WAL (when present)."""
    data = b""
    for name in ("consentgate.db", "consentgate.db-wal", "consentgate.db-journal"):
        path = home / "data" / name
        if path.exists():
            data += path.read_bytes()
    return data


def test_import_20k_rows_with_bad_rows_twice(home: Path) -> None:
    """1% bad rows: the rejects file lists exactly those lines; a rerun imports nothing new."""
    bad: set[int] = set()
    with (home / "list.csv").open("w", encoding="utf-8") as out:
        out.write("email,reason,date\n")
        for i in range(20_000):
            if i % 100 == 7:
                bad.add(i + 2)
                out.write(
                    f"user{i}@@example.org,,\n" if i % 200 == 7 else f"user{i}@example.org,,2026-99-01\n"
                )
            else:
                out.write(f"User{i}@Example{i % 50}.org,,{'2026-01-05' if i % 3 else ''}\n")
    first = cg(home, "unsubscribe", "import", "list.csv", "--client", "acme", "--rejects", "rejects.csv")
    assert first.returncode == 1, first.stderr
    assert "imported 19800, already suppressed 0" in first.stdout
    with (home / "rejects.csv").open(encoding="utf-8") as handle:
        listed = {int(row["line"]) for row in csv.DictReader(handle)}
    assert listed == bad
    second = cg(home, "unsubscribe", "import", "list.csv", "--client", "acme", "--quiet")
    assert second.returncode == 1 and "imported 0, already suppressed 19800" in second.stdout
    assert second.stderr == ""
    verify = cg(home, "ledger", "verify")
    assert verify.returncode == 0 and "covering 19800 suppression(s)" in verify.stdout
    assert cg(home, "check", "user5@example5.org", "--client", "acme").returncode == 1


def test_bad_invocations_fail_cleanly_and_write_nothing(home: Path) -> None:
    """Missing file, unknown client, file without an e-mail column: one-line errors, nothing imported."""
    (home / "ok.txt").write_text("a@example.org\n", encoding="utf-8")
    (home / "nohead.csv").write_text("name,date\nx,2026-01-01\n", encoding="utf-8")
    one_line_error(
        cg(home, "unsubscribe", "import", "ok.txt", "missing.csv", "--global"), "missing.csv: no such file"
    )
    one_line_error(cg(home, "unsubscribe", "import", "ok.txt", "--client", "nobody"), "no client 'nobody'")
    one_line_error(cg(home, "unsubscribe", "import", "ok.txt", "nohead.csv", "--global"), "no e-mail column")
    one_line_error(cg(home, "unsubscribe", "import", "ok.txt"), "exactly one of --client ID or --global")
    one_line_error(
        cg(home, "consent", "import", "missing.csv", "--client", "acme", "--source", "x"), "no such file"
    )
    assert cg(home, "check", "a@example.org").returncode == 0


def test_stdin_dry_run_and_global_written_request(home: Path) -> None:
    """`-` reads stdin; --dry-run writes nothing; --global with a source refuses every client."""
    dry = cg(
        home, "unsubscribe", "import", "-", "--global", "--dry-run", stdin="x@example.org\ny@example.org\n"
    )
    assert dry.returncode == 0 and "would import 2" in dry.stdout
    assert cg(home, "check", "x@example.org").returncode == 0
    real = cg(
        home,
        "unsubscribe",
        "import",
        "-",
        "--global",
        "--source",
        "written request 7",
        stdin="X@example.org\n",
    )
    assert real.returncode == 0 and "imported 1" in real.stdout
    refused = cg(home, "check", "x@example.org", "--client", "acme")
    assert refused.returncode == 1 and "global_optout" in refused.stdout


def test_hashed_list_is_checked_by_consentgate_check(home: Path) -> None:
    """A sha256 list (another provider's export) refuses the matching address for that client."""
    digest = hashlib.sha256(b"hidden@example.org").hexdigest()
    (home / "hashed.txt").write_text(f"{digest}\nnot-hex\n", encoding="utf-8")
    result = cg(home, "unsubscribe", "import", "hashed.txt", "--client", "acme", "--hashed", "sha256")
    assert result.returncode == 1 and "imported 1" in result.stdout and "hashed.txt:2" in result.stderr
    assert cg(home, "check", "Hidden@Example.org", "--client", "acme").returncode == 1
    assert cg(home, "check", "other@example.org", "--client", "acme").returncode == 0
    export = cg(home, "suppressions", "export", "--client", "acme", "--hashed")
    assert digest in export.stdout


def test_consent_import_refuses_suppressed_addresses(home: Path) -> None:
    """Unsubscribed, complained and erased addresses are `suppressed, not imported`."""
    assert cg(home, "unsubscribe", "add", "u@example.org", "--client", "acme").returncode == 0
    (home / "fbl.csv").write_text("email,reason\nc@example.org,complaint\n", encoding="utf-8")
    assert cg(home, "unsubscribe", "import", "fbl.csv", "--client", "acme").returncode == 0
    assert cg(home, "subject", "erase", "e@example.org", "--yes").returncode == 0
    (home / "optin.csv").write_text(
        "email,date,source\nu@example.org,,\nc@example.org,,\ne@example.org,,\nnew@example.org,2026-01-01,form\n",
        encoding="utf-8",
    )
    result = cg(
        home, "consent", "import", "optin.csv", "--client", "acme", "--source", "crm", "--rejects", "r.csv"
    )
    assert result.returncode == 1
    assert "imported 1, suppressed, not imported 3, rejected 0" in result.stdout
    assert result.stderr.count("suppressed, not imported") == 3
    assert cg(home, "check", "u@example.org", "--client", "acme").returncode == 1
    assert cg(home, "ledger", "verify").returncode == 0


def test_erase_leaves_no_trace_in_the_database_file(home: Path) -> None:
    """After `subject erase` the address is in neither the SQLite file nor its WAL; mail and imports refused."""
    address = "Sally.Secret@Example.org"
    needle = b"sally.secret@example.org"
    assert cg(home, "consent", "add", address, "--client", "acme", "--source", "form").returncode == 0
    # A stored address the scan below must still find (imports store no address: keyed hash only).
    assert (
        cg(home, "consent", "add", "other@example.org", "--client", "acme", "--source", "form").returncode
        == 0
    )
    assert cg(home, "unsubscribe", "add", address, "--client", "acme").returncode == 0
    assert cg(home, "subject", "restrict", address).returncode == 0
    (home / "list.txt").write_text(f"{address}\nother@example.org\n", encoding="utf-8")
    assert cg(home, "unsubscribe", "import", "list.txt", "--global").returncode == 0
    assert needle in db_bytes(home).lower()
    erased = cg(home, "subject", "erase", address, "--yes")
    assert erased.returncode == 0 and "erased" in erased.stdout
    raw = db_bytes(home).lower()
    assert needle not in raw and b"sally.secret" not in raw and b"other@example.org" in raw
    refused = cg(home, "check", address, "--client", "acme")
    assert refused.returncode == 1 and "global_optout" in refused.stdout
    again = cg(home, "unsubscribe", "import", "list.txt", "--client", "acme")
    assert "imported 1, already suppressed 1" in again.stdout
    assert needle not in db_bytes(home).lower()
    assert cg(home, "ledger", "verify").returncode == 0
    export = json.loads(cg(home, "subject", "export", address).stdout)
    assert export["stored_address"] is None and export["consent_events"][-1]["kind"] == "erasure"


def test_subject_restrict_rectify_and_export(home: Path) -> None:
    """restrict refuses with `restricted`; rectify moves the suppression; export lists it (JSON and CSV)."""
    assert cg(home, "subject", "restrict", "r@example.org").returncode == 0
    assert "restricted" in cg(home, "check", "r@example.org", "--client", "acme").stdout
    assert cg(home, "subject", "unrestrict", "r@example.org").returncode == 0
    assert cg(home, "check", "r@example.org", "--client", "acme").returncode == 0
    assert cg(home, "unsubscribe", "add", "typo@exmaple.org", "--client", "acme").returncode == 0
    moved = cg(home, "subject", "rectify", "typo@exmaple.org", "typo@example.org")
    assert moved.returncode == 0 and "suppressions 1" in moved.stdout
    assert cg(home, "check", "typo@example.org", "--client", "acme").returncode == 1
    assert cg(home, "check", "typo@exmaple.org", "--client", "acme").returncode == 0
    as_csv = cg(home, "subject", "export", "typo@example.org", "--format", "csv").stdout
    assert as_csv.startswith("section,client,kind,at,details") and "rectification" in as_csv
    assert cg(home, "ledger", "verify").returncode == 0
    plain = cg(home, "suppressions", "export", "--all", "--format", "jsonl")
    assert json.loads(plain.stdout.splitlines()[0])["email"] == "typo@example.org"


def test_purge_cli_at_several_dates(home: Path) -> None:
    """purge --now prints per-rule counts, keeps `ledger verify` green, and is idempotent."""
    assert (
        cg(
            home,
            "consent",
            "add",
            "old@example.org",
            "--client",
            "acme",
            "--source",
            "f",
            "--at",
            "2020-01-01",
        ).returncode
        == 0
    )
    assert cg(home, "unsubscribe", "add", "gone@example.org", "--client", "acme").returncode == 0
    dry = cg(home, "purge", "--now", "2040-01-01", "--dry-run")
    assert dry.returncode == 0 and "would delete" in dry.stdout
    first = cg(home, "purge", "--now", "2030-01-01")
    assert first.returncode == 0
    line = next(ln for ln in first.stdout.splitlines() if "inactivity_expiry" in ln)
    assert "1" in line
    assert cg(home, "ledger", "verify").returncode == 0
    later = cg(home, "purge", "--now", "2040-01-01")
    proof = next(ln for ln in later.stdout.splitlines() if "consent_proof" in ln)
    assert "3" in proof  # old@: opt-in + expiry; gone@: opt-out
    assert cg(home, "ledger", "verify").returncode == 0
    rerun = cg(home, "purge", "--now", "2040-01-01")
    assert all(" 0 " in ln for ln in rerun.stdout.splitlines() if ln.startswith("│ ") and "_" in ln)
    one_line_error(cg(home, "purge", "--now", "yesterday"), "not an ISO date")


async def _seed_campaign(home: Path) -> None:
    """Events of campaign 'spring' straight into the installation's database."""
    store = await open_store(f"sqlite:///{home / 'data' / 'consentgate.db'}")
    try:
        from conftest import NOW

        num = await store.campaign_num("acme", "spring", NOW)
        events = []
        for i in range(40):
            key = hashlib.sha256(f"s{i}".encode()).digest()
            day = NOW + timedelta(days=i % 5)
            events.append(InteractionEvent("acme", EventKind.DELIVERED, day, num, key))
            if i % 2:
                events.append(
                    InteractionEvent(
                        "acme", EventKind.OPENED, day + timedelta(hours=2), num, key, country="DE"
                    )
                )
            if i % 5 == 1:
                events.append(
                    InteractionEvent(
                        "acme", EventKind.CLICKED, day + timedelta(hours=3), num, key, link_id="offer"
                    )
                )
        events.append(InteractionEvent("acme", EventKind.SUPPRESSED, NOW, num, None, reason="unsubscribed"))
        events.append(InteractionEvent("acme", EventKind.UNSUBSCRIBED, NOW, num, key))
        await store.record_events(events)
    finally:
        await store.close()


@pytest.mark.browser
def test_report_formats_and_html_in_chromium(home: Path) -> None:
    """table/json/csv show aggregates only; the HTML file is self-contained and renders in Chromium."""
    asyncio.run(_seed_campaign(home))
    as_json = json.loads(cg(home, "report", "spring", "--format", "json").stdout)
    assert (as_json["delivered"], as_json["unique_opens"], as_json["unique_clicks"]) == (40, 20, 8)
    assert as_json["refused"] == {"unsubscribed": 1}
    assert "funnel,delivered,40" in cg(home, "report", "spring", "--format", "csv").stdout
    assert "unique_opens" in cg(home, "report", "spring").stdout
    one_line_error(cg(home, "report", "autumn"), "no campaign 'autumn'")
    out = home / "report.html"
    assert cg(home, "report", "spring", "--format", "html", "-o", str(out)).returncode == 0
    page = out.read_text(encoding="utf-8")
    assert "<svg" in page and "@" not in page
    assert "src=" not in page and "href=" not in page and "url(" not in page
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "campaign_report.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--screenshot={shot}",
            "--window-size=800,1100",
            out.as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert shot.exists() and shot.stat().st_size > 10_000


def test_daily_purge_schedule_and_component(home: Path) -> None:
    """The serve component waits for retention.purge_hour (UTC) and stops cleanly."""
    from datetime import UTC, datetime

    from cli.purge import DailyPurge, seconds_until
    from cli.settings import load_settings

    assert seconds_until(3, datetime(2026, 1, 1, 2, 30, tzinfo=UTC)) == 1800
    assert seconds_until(3, datetime(2026, 1, 1, 3, 0, tzinfo=UTC)) == 86400
    assert seconds_until(3, datetime(2026, 1, 1, 4, 0, tzinfo=UTC)) == 23 * 3600

    async def start_stop() -> bool:
        store = await open_store(f"sqlite:///{home / 'data' / 'consentgate.db'}")
        try:
            component = DailyPurge(load_settings(home / "consentgate.toml"), store)
            await component.start()
            await asyncio.sleep(0)
            running = component._task is not None and not component._task.done()
            await component.stop()
            return running and component._task is not None and component._task.cancelled()
        finally:
            await store.close()

    assert asyncio.run(start_stop())
