"""Configuration, read once from the environment.

The names are the service's contract (README, Procfile, docker-compose.yml): keep them.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kling.auth import Auth, auth_from
from kling.client import KlingClient
from worker.core.polling import Curve
from worker.outbound.netguard import AllowList, url_refusal
from worker.outbound.notify import parse_secret
from worker.outbound.pace import AttemptLimits
from worker.storage import Storage, open_storage

MIN_API_TOKEN_CHARS = 32
DOWNLOAD_ATTEMPTS = 3  # per archive task; the task itself is retried with backoff after


class ConfigError(Exception):
    """The service's configuration is incomplete or invalid."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    redis_url: str = "redis://localhost:6379/0"
    key_prefix: str = Field("kc:", description="prefix of every Redis key this service writes")
    celery_queue: str = "kling-chain"

    kling_base_url: AnyHttpUrl = AnyHttpUrl("https://api-singapore.klingai.com")
    kling_api_key: SecretStr | None = None
    kling_access_key: str | None = None
    kling_secret_key: SecretStr | None = None
    kling_send_parent_task_id: bool = True
    kling_external_task_id: bool = True
    kling_timeout_seconds: float = Field(30.0, gt=0)
    # The whsec_ secret the official API signs callbacks with (kling.signing); None: unsigned.
    kling_webhook_secret: SecretStr | None = None

    public_url: AnyHttpUrl = AnyHttpUrl("http://localhost:8000")
    callback_secret: SecretStr | None = None
    api_token: SecretStr | None = None
    api_auth: Literal["on", "off"] = "on"

    archive_dir: Path = Path("./archive")
    archive_url: str | None = Field(None, description="s3://bucket/prefix to archive to S3")
    s3_endpoint_url: AnyHttpUrl | None = None
    s3_part_size: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)
    archive_warn_seconds: float = Field(3 * 24 * 3600.0, ge=0)
    archive_max_bytes: int = Field(4 * 1024**3, gt=0)
    archive_margin_seconds: float = Field(24 * 3600.0, ge=0)
    # Retention (worker.core.retention): a finished chain's document expires this many days
    # after it ended (a fraction is allowed: 0.0001 is under 9 s); its video records stay.
    # ARCHIVE_KEEP=final deletes the files of the videos a succeeded chain's final one contains.
    chain_retention_days: float = Field(30.0, gt=0, le=36500, allow_inf_nan=False)
    archive_keep: Literal["all", "final"] = "all"
    # Internal addresses downloads may reach anyway (worker.outbound.netguard); parsed at start-up.
    allow_private_hosts: Annotated[AllowList, NoDecode] = AllowList()
    download_attempt_seconds: float = Field(900.0, gt=0)
    download_min_bytes_per_second: int = Field(64 * 1024, ge=0)
    download_rate_window_seconds: float = Field(60.0, gt=0)

    poll_after_seconds: float = Field(120.0, gt=0)
    # How running tasks are queried between callbacks (worker.core.polling): "adaptive"
    # learns task durations and queries around their expected end; "fixed" queries every
    # POLL_AFTER_SECONDS. Gaps around the expected end: a quarter of the median duration,
    # within these bounds. No callback for CALLBACK_SILENCE_SECONDS: polling is relied on.
    polling: Literal["adaptive", "fixed"] = "adaptive"
    poll_max_gap_seconds: float = Field(4.0, gt=0)
    poll_min_gap_seconds: float = Field(1.0, gt=0)
    callback_silence_seconds: float = Field(900.0, gt=0)
    sweep_seconds: float = Field(10.0, gt=0)
    submit_lease_seconds: float = Field(120.0, gt=0)
    archive_lease_seconds: float = Field(3000.0, gt=0)
    retry_deadline_seconds: float = Field(1800.0, gt=0)
    recheck_after_seconds: float = Field(20.0, ge=0)
    # At most this many of the account's tasks in flight at once, across every worker
    # (worker.core.slots); None: no gate. A step waiting for a slot looks again this often.
    kling_concurrency: int | None = Field(None, ge=1)
    slot_poll_seconds: float = Field(2.0, gt=0)
    # The account's units per UTC day (worker.core.budget); None: no daily budget. One set
    # through the API (PUT /spend/budget) wins. A step it holds back looks again this often.
    daily_unit_budget: Decimal | None = Field(None, gt=0, max_digits=18, decimal_places=6)
    budget_poll_seconds: float = Field(30.0, gt=0)

    notify_url: AnyHttpUrl | None = None
    notify_secret: SecretStr | None = None

    port: int = Field(8000, gt=0, lt=65536)
    # "json": one JSON object a line from web, worker and beat, secrets redacted (worker.logs).
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _lease_outlasts_a_download(self) -> Settings:
        # One archive task makes up to DOWNLOAD_ATTEMPTS attempts; a lease that ran out
        # meanwhile would let a second worker download the same video.
        needed = DOWNLOAD_ATTEMPTS * self.download_attempt_seconds + 60
        if self.archive_lease_seconds < needed:
            raise ValueError(
                f"ARCHIVE_LEASE_SECONDS ({self.archive_lease_seconds:g}) must be at least "
                f"{DOWNLOAD_ATTEMPTS} x DOWNLOAD_ATTEMPT_SECONDS + 60 = {needed:g}"
            )
        return self

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("must be non-empty and contain no spaces")
        return value

    @field_validator("allow_private_hosts", mode="before")
    @classmethod
    def _allow_list(cls, value: object) -> object:
        return AllowList.parse(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _gaps_in_order(self) -> Settings:
        if self.poll_min_gap_seconds > self.poll_max_gap_seconds:
            raise ValueError(
                f"POLL_MIN_GAP_SECONDS ({self.poll_min_gap_seconds:g}) must not be more than "
                f"POLL_MAX_GAP_SECONDS ({self.poll_max_gap_seconds:g})"
            )
        return self

    def poll_curve(self) -> Curve:
        """The adaptive polling curve's numbers (``worker.core.polling``)."""
        return Curve(
            poll_after=self.poll_after_seconds,
            max_gap=self.poll_max_gap_seconds,
            min_gap=self.poll_min_gap_seconds,
        )

    def download_limits(self) -> AttemptLimits:
        return AttemptLimits(
            seconds=self.download_attempt_seconds,
            min_bytes_per_second=self.download_min_bytes_per_second,
            window_seconds=self.download_rate_window_seconds,
        )

    def secret(self) -> bytes:
        if self.callback_secret is None or len(self.callback_secret.get_secret_value()) < 16:
            raise ConfigError(
                "CALLBACK_SECRET must be set to a random string of at least 16 characters "
                "(it signs the token in every callback URL); e.g. `openssl rand -hex 32`"
            )
        return self.callback_secret.get_secret_value().encode()

    def api_bearer(self) -> str | None:
        """The token the API requires, or None when ``API_AUTH=off`` switched the check off."""
        if self.api_auth == "off":
            return None
        token = reveal(self.api_token)
        if not token or len(token) < MIN_API_TOKEN_CHARS:
            problem = "is not set" if not token else f"has only {len(token)} characters"
            raise ConfigError(
                f"API_TOKEN {problem}. The API starts paid work, so it needs a token of at "
                f"least {MIN_API_TOKEN_CHARS} characters: make one with `openssl rand -hex 32` "
                "and set API_TOKEN for the web process and for the CLI. Only on a private "
                "network that nobody else can reach, API_AUTH=off turns the check off"
            )
        return token

    def provider_auth(self) -> Auth:
        try:
            return auth_from(
                api_key=reveal(self.kling_api_key),
                access_key=self.kling_access_key,
                secret_key=reveal(self.kling_secret_key),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def provider(self) -> KlingClient:
        return KlingClient(
            str(self.kling_base_url),
            self.provider_auth(),
            timeout=(5.0, self.kling_timeout_seconds),
            send_parent_task_id=self.kling_send_parent_task_id,
        )

    def public_base(self) -> str:
        return str(self.public_url).rstrip("/")

    def storage(self) -> Storage:
        try:
            return open_storage(
                archive_url=self.archive_url or None,
                archive_dir=self.archive_dir,
                s3_endpoint_url=str(self.s3_endpoint_url) if self.s3_endpoint_url else None,
                part_size=self.s3_part_size,
            )
        except ValueError as exc:
            raise ConfigError(f"ARCHIVE_URL: {exc}") from exc

    def kling_webhook_key(self) -> str | None:
        """KLING_WEBHOOK_SECRET, checked; None when unset or blank (callbacks unsigned)."""
        secret = (reveal(self.kling_webhook_secret) or "").strip()
        if not secret:
            return None
        try:
            parse_secret(secret)
        except ValueError as exc:
            raise ConfigError(
                f"KLING_WEBHOOK_SECRET: {exc}. Copy the callback signing secret from the "
                "Kling console as it is shown (whsec_...), or unset the variable to take "
                "callbacks on their URL token alone"
            ) from None
        return secret

    def notify_key(self) -> str:
        """NOTIFY_SECRET, checked; only asked for when NOTIFY_URL or a webhook_url is set."""
        secret = reveal(self.notify_secret)
        if secret is None:
            raise ConfigError(
                "NOTIFY_URL is set, so NOTIFY_SECRET must be set too: "
                "whsec_ followed by base64, e.g. whsec_$(openssl rand -base64 32)"
            )
        try:
            parse_secret(secret)
        except ValueError as exc:
            raise ConfigError(f"NOTIFY_SECRET: {exc}") from None
        return secret

    def webhook_url_problem(self, url: str) -> str | None:
        """Why this deployment cannot send a chain's events to a caller's ``webhook_url``, or
        None: no valid NOTIFY_SECRET to sign them with, or a host on an internal address that
        ALLOW_PRIVATE_HOSTS does not name (``worker.outbound.netguard.url_refusal``, which
        resolves the host: blocking). Delivery checks the address again."""
        if reveal(self.notify_secret) is None:
            return (
                "this service has no NOTIFY_SECRET configured, so it cannot sign webhooks: "
                "leave webhook_url out, or ask its operator to set NOTIFY_SECRET"
            )
        try:
            self.notify_key()
        except ConfigError as exc:
            return f"this service cannot sign webhooks: its {exc}; ask its operator to fix it"
        return url_refusal(url, self.allow_private_hosts)


def reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


@cache
def get_settings() -> Settings:
    """The process's settings; a readable ConfigError instead of a stack of validation errors."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
