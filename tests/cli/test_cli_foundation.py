"""The first CLI commands, run as the operator runs them: the real `consentgate` executable."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("consentgate"))


def cg(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run consentgate in ``cwd`` and capture its output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTGATE_")}
    full_env.update(env or {})
    return subprocess.run([EXE, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An initialised installation in a temporary folder."""
    result = cg(tmp_path, "init")
    assert result.returncode == 0, result.stderr
    return tmp_path


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    """Exit 2 with a single `error:` line naming the problem and no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert needle in lines[0]


def test_init_creates_config_secret_and_database_idempotently(tmp_path: Path) -> None:
    """init writes the config, a 0600 secret and a migrated database; a rerun keeps the secret."""
    first = cg(tmp_path, "init")
    assert first.returncode == 0, first.stderr
    secret = tmp_path / "data" / "secret.json"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "consentgate.toml").is_file()
    assert (tmp_path / "data" / "outbox").is_dir()
    before = secret.read_bytes()
    second = cg(tmp_path, "init")
    assert second.returncode == 0 and "exists, kept" in second.stdout
    assert secret.read_bytes() == before


def test_global_optout_refuses_every_spelling(home: Path) -> None:
    """The issue's walk-through: a global unsubscribe, then check refuses with global_optout."""
    assert cg(home, "unsubscribe", "add", "Bob@Example.ORG", "--global").returncode == 0
    for spelling in ("bob@example.org", "BOB@EXAMPLE.org"):
        result = cg(home, "check", spelling)
        assert result.returncode == 1 and "global_optout" in result.stdout
    assert cg(home, "check", "alice@example.org").returncode == 0


def test_idna_spellings_match(home: Path) -> None:
    """A Unicode domain and its punycode form are the same subject."""
    assert cg(home, "unsubscribe", "add", "ana@bücher.example", "--global").returncode == 0
    result = cg(home, "check", "ANA@xn--bcher-kva.example", "--json")
    assert result.returncode == 1 and '"reason": "global_optout"' in result.stdout


def test_client_add_prints_credentials_once_and_lists(home: Path) -> None:
    """client add prints a password; client list shows the client but never the password."""
    added = cg(home, "client", "add", "acme", "--domain", "acme.example", "--json")
    assert added.returncode == 0, added.stderr
    assert '"password"' in added.stdout
    password = added.stdout.split('"password": "')[1].split('"')[0]
    listed = cg(home, "client", "list")
    assert "acme" in listed.stdout and password not in listed.stdout


def test_opt_in_does_not_lift_a_suppression(home: Path) -> None:
    """consent add refuses a suppressed address unless --reconsent is given."""
    cg(home, "client", "add", "acme", "--domain", "acme.example")
    cg(home, "unsubscribe", "add", "cy@example.org", "--client", "acme")
    refused = cg(home, "consent", "add", "cy@example.org", "--client", "acme", "--source", "crm sync")
    assert_one_line_error(refused, "not re-subscribed")
    assert cg(home, "check", "cy@example.org", "--client", "acme").returncode == 1
    again = cg(
        home, "consent", "add", "cy@example.org", "--client", "acme", "--source", "web form", "--reconsent"
    )
    assert again.returncode == 0
    assert cg(home, "check", "cy@example.org", "--client", "acme").returncode == 0


def test_ledger_verify_names_an_edited_row(home: Path) -> None:
    """Editing one ledger row directly in SQLite makes verify fail and name that event."""
    cg(home, "unsubscribe", "add", "dan@example.org", "--global", "--source", "letter")
    assert cg(home, "ledger", "verify").returncode == 0
    with sqlite3.connect(home / "data" / "consentgate.db") as conn:
        row_id = conn.execute("SELECT id FROM ledger_events").fetchone()[0]
        conn.execute("UPDATE ledger_events SET source = 'forged' WHERE id = ?", (row_id,))
    result = cg(home, "ledger", "verify")
    assert result.returncode == 1
    assert f"event id {row_id}" in result.stdout and "altered" in result.stdout


def test_invalid_address_is_a_one_line_error(home: Path) -> None:
    """A malformed address: exit 2, one line, nothing written."""
    assert_one_line_error(cg(home, "unsubscribe", "add", "not-an-address", "--global"), "not a valid address")
    with sqlite3.connect(home / "data" / "consentgate.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM suppressions").fetchone()[0] == 0


def test_unknown_client_is_a_one_line_error(home: Path) -> None:
    """An unknown client: exit 2, one line."""
    assert_one_line_error(
        cg(home, "unsubscribe", "add", "a@example.org", "--client", "ghost"), "no client 'ghost'"
    )
    assert_one_line_error(cg(home, "check", "a@example.org", "--client", "ghost"), "no client 'ghost'")


def test_missing_or_broken_secret_is_a_one_line_error(home: Path) -> None:
    """A missing, malformed or unreadable secret: exit 2, one line, nothing written."""
    secret = home / "data" / "secret.json"
    secret.rename(home / "data" / "moved.json")
    assert_one_line_error(cg(home, "check", "a@example.org"), "does not exist")
    secret.write_text("{not json")
    assert_one_line_error(cg(home, "unsubscribe", "add", "a@example.org", "--global"), "malformed")
    secret.unlink()
    secret.mkdir()  # root reads every file, so a folder stands in for an unreadable secret
    assert_one_line_error(cg(home, "check", "a@example.org"), "secret file")
    with sqlite3.connect(home / "data" / "consentgate.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM suppressions").fetchone()[0] == 0


def test_unknown_database_scheme_is_a_one_line_error(home: Path) -> None:
    """A database URL with an unknown scheme: exit 2, one line naming the scheme."""
    env = {"CONSENTGATE_DATABASE_URL": "mysql://localhost/x"}
    assert_one_line_error(cg(home, "check", "a@example.org", env=env), "unknown database URL scheme 'mysql'")


def test_database_down_is_a_one_line_error(home: Path) -> None:
    """A PostgreSQL server that does not answer: exit 2, one line."""
    env = {"CONSENTGATE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}
    assert_one_line_error(cg(home, "unsubscribe", "add", "a@example.org", "--global", env=env), "PostgreSQL")


def test_sqlite_in_missing_folder_is_a_one_line_error(home: Path) -> None:
    """A SQLite path whose folder does not exist is reported, not created."""
    env = {"CONSENTGATE_DATABASE_URL": "sqlite:///nowhere/at/all.db"}
    assert_one_line_error(cg(home, "check", "a@example.org", env=env), "no folder")
    assert not (home / "nowhere").exists()


def test_outdated_schema_is_refused_until_migrate(home: Path) -> None:
    """A database older than the code is refused with a pointer to `db migrate`, which fixes it."""
    with sqlite3.connect(home / "data" / "consentgate.db") as conn:
        top = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        conn.execute("DELETE FROM schema_version WHERE version = ?", (top,))
    assert_one_line_error(cg(home, "check", "a@example.org"), "consentgate db migrate")
    dry = cg(home, "db", "migrate", "--dry-run")
    assert dry.returncode == 0 and "would apply" in dry.stdout


def test_bad_config_is_a_one_line_error(home: Path) -> None:
    """A config value of the wrong shape is named in a one-line error."""
    (home / "bad.toml").write_text('[smtp]\nlisten = "nonsense"\n')
    assert_one_line_error(cg(home, "--config", "bad.toml", "check", "a@example.org"), "smtp.listen")
    assert_one_line_error(cg(home, "--config", "missing.toml", "check", "a@example.org"), "does not exist")


def test_help_teaches(home: Path) -> None:
    """--help lists the commands and how to start."""
    result = cg(home, "--help")
    assert result.returncode == 0
    for word in ("init", "client", "unsubscribe", "check", "ledger"):
        assert word in result.stdout
