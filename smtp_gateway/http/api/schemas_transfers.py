"""Query parameters and reports of the bulk import and export endpoints (they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from ledger.importing import HashAlgo, ImportFormat
from smtp_gateway.http.api.schemas import ApiModel, ProofText, Source

FORMAT_DESCRIPTION = (
    "Layout of the body: CSV with a header naming an e-mail column, one address per line, or JSON "
    "lines. auto: guessed from the first non-blank line, as the CLI does for stdin."
)


class SuppressionImportQuery(ApiModel):
    """Options of an unsubscribe import (those of `consentgate unsubscribe import`)."""

    source: Source = Field("import", min_length=1, description="Default source of each row.")
    format: ImportFormat = Field(ImportFormat.AUTO, description=FORMAT_DESCRIPTION)
    hashed: HashAlgo | None = Field(
        None, description="The body holds hex digests of lower-cased addresses (another provider's list)."
    )
    dry_run: bool = Field(False, description="Validate and count; write nothing.")


class ConsentImportQuery(ApiModel):
    """Options of an opt-in import (those of `consentgate consent import`); rows may carry their own."""

    source: Source = Field(min_length=1, description="Where the opt-ins happened (default per row).")
    method: ProofText = Field("", description="double-opt-in, checkbox… (default per row).")
    notice_version: ProofText = Field("", description="Privacy notice version (default per row).")
    legal_basis: ProofText = Field(
        "consent", max_length=50, description="GDPR Art. 6 basis (default per row)."
    )
    at: datetime | None = Field(
        None,
        description="When consent was given, for rows without a date (default now; no zone means UTC).",
    )
    reconsent: bool = Field(
        False,
        description="Rows with their own date and source or method lift this client's unsubscribe.",
    )
    format: ImportFormat = Field(ImportFormat.AUTO, description=FORMAT_DESCRIPTION)
    dry_run: bool = Field(False, description="Validate and count; write nothing.")


class RowError(BaseModel):
    """A row that was not imported: its line in the body (numbered from 1, as editors do) and why."""

    line: int
    error: str


class SuppressionImportReport(BaseModel):
    """What an unsubscribe import did (in a dry run: would do); the CLI prints the same counts."""

    dry_run: bool
    imported: int
    already_suppressed: int
    duplicates: int = Field(description="Rows repeating an earlier row of the body.")
    rejected: int
    rejects: list[RowError] = Field(description="The rejected rows, in line order (the first 1,000).")
    rejects_truncated: bool = Field(description="More rows were rejected than listed.")


class ConsentImportReport(BaseModel):
    """What an opt-in import did (in a dry run: would do); the CLI prints the same counts."""

    dry_run: bool
    imported: int
    suppressed_not_imported: int = Field(description="Rows refused because the address is suppressed.")
    suppressed: list[RowError] = Field(description="Those rows and why (the first 1,000).")
    suppressed_truncated: bool
    rejected: int
    rejects: list[RowError] = Field(description="Invalid rows, in line order (the first 1,000).")
    rejects_truncated: bool
