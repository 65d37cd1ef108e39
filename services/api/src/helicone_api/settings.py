from __future__ import annotations

from helicone_core.settings import ServiceSettings
from helicone_core.vault import VaultSettings
from pydantic import Field, SecretStr, field_validator


class ApiSettings(ServiceSettings, VaultSettings):  # VaultSettings: /v1/provider-keys (provider_keys.py)
    port: int = 8585
    # Largest request body (bytes) the api reads; larger ones are answered 413 (guard.py).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # The prompts service's gRPC address (host:port) behind /v1/prompts; empty: those answer 503.
    prompts_target: str = ""
    prompts_timeout: float = Field(default=5.0, gt=0)  # deadline of one call to it
    # Alerts (alerts.py): seconds between two evaluations of each rule; 0: this replica evaluates none
    # (others may: each rule is claimed by one replica per interval).
    alert_interval: float = Field(default=60.0, ge=0)
    alert_webhook_timeout: float = Field(default=5.0, gt=0)  # seconds for one delivery attempt
    alert_webhook_attempts: int = Field(default=3, ge=1, le=10)  # tries per notification (backoff between them)
    # Webhooks go to public addresses only; this also allows loopback (tests, a single-box install).
    alert_webhook_allow_loopback: bool = False
    # Async logs (/custom/v1/log, /v1/traces) go to Kafka; the caller is answered once Kafka acked
    # them, within this many seconds, else 503 (log_publisher.py).
    publish_timeout: float = Field(default=5.0, gt=0)
    # Bodies above this many bytes are truncated in the log event, as the gateway does.
    max_logged_body_bytes: int = Field(default=450 * 1024, ge=1024)
    # Bearer token of the /v1/admin routes (creating orgs); unset: those routes answer 404.
    admin_token: SecretStr | None = None

    @field_validator("admin_token", mode="before")
    @classmethod
    def _admin_token(cls, v):
        if v in ("", None):
            return None  # an empty variable (e.g. rendered by a chart) means "not set"
        text = v.get_secret_value() if isinstance(v, SecretStr) else str(v)
        if len(text) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`), or empty to turn the admin routes off")
        return v
