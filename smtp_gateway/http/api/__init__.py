"""The admin HTTP API (``/api/v1``): what the CLI does, for a CRM or a mailer, scoped per client."""

from smtp_gateway.http.api.app import API_PREFIX, build_api
from smtp_gateway.http.api.config import ApiConfig

__all__ = ["API_PREFIX", "ApiConfig", "build_api"]
