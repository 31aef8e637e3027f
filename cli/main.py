"""The `consentgate` command: wires settings to objects; every sub-command lives in its own module."""

from __future__ import annotations

from pathlib import Path

import typer

from cli import imports as _imports  # noqa: F401  (registers `unsubscribe import`, `consent import`)
from cli.api_keys import api_key_app, client_key_app
from cli.clients import client_app
from cli.context import CliState, report_errors
from cli.exports import suppressions_app
from cli.ledger_cmds import check, consent_app, ledger_app, unsubscribe_app
from cli.purge import purge
from cli.report import report
from cli.serve import serve
from cli.setup import db_app, init
from cli.subjects import subject_app

app = typer.Typer(
    name="consentgate",
    help=(
        "E-mail suppression and consent ledger with an SMTP gateway.\n\n"
        "Start here: `consentgate init`, then `consentgate client add acme --domain acme.example`, "
        "then `consentgate serve`. Every option can also come from consentgate.toml or a "
        "CONSENTGATE_* environment variable."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config file (default: $CONSENTGATE_CONFIG or ./consentgate.toml)."
    ),
) -> None:
    """Load nothing yet: commands read the settings when they need them."""
    ctx.obj = CliState(config=config)


app.command("init")(init)
app.command("check")(check)
app.command("serve")(serve)
client_app.add_typer(client_key_app, name="api-key")
app.add_typer(client_app, name="client")
app.add_typer(api_key_app, name="api-key")
app.add_typer(unsubscribe_app, name="unsubscribe")
app.add_typer(consent_app, name="consent")
app.add_typer(ledger_app, name="ledger")
app.add_typer(db_app, name="db")
app.add_typer(suppressions_app, name="suppressions")
app.add_typer(subject_app, name="subject")
app.command("purge")(purge)
app.command("report")(report)


def main() -> None:
    """Console-script entry point."""
    report_errors(app)
