"""Configuration of the admin API (plain values, mapped from the ``[http.api]`` settings by ``cli/``)."""

from __future__ import annotations

from dataclasses import dataclass

# A check of 1,000 addresses is about 40 KB of JSON; 2 MiB leaves room and still refuses floods.
DEFAULT_MAX_JSON_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_IMPORT_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """What the API needs beyond the link service's config."""

    enabled: bool = True
    # Token bucket per key: ``burst`` requests at once, refilled at ``rate_per_minute``.
    rate_per_minute: int = 600
    burst: int = 60
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    max_import_bytes: int = DEFAULT_MAX_IMPORT_BYTES
    max_check_addresses: int = 1000
