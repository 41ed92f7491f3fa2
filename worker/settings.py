"""Configuration, read once from the environment.

The names are the service's contract (README, Procfile, docker-compose.yml): keep them.
"""

from __future__ import annotations

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
from worker.outbound.netguard import AllowList
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
    # Internal addresses downloads may reach anyway (worker.outbound.netguard); parsed at start-up.
    allow_private_hosts: Annotated[AllowList, NoDecode] = AllowList()
    download_attempt_seconds: float = Field(900.0, gt=0)
    download_min_bytes_per_second: int = Field(64 * 1024, ge=0)
    download_rate_window_seconds: float = Field(60.0, gt=0)

    poll_after_seconds: float = Field(120.0, gt=0)
    sweep_seconds: float = Field(10.0, gt=0)
    submit_lease_seconds: float = Field(120.0, gt=0)
    archive_lease_seconds: float = Field(3000.0, gt=0)
    retry_deadline_seconds: float = Field(1800.0, gt=0)
    recheck_after_seconds: float = Field(20.0, ge=0)
    # At most this many of the account's tasks in flight at once, across every worker
    # (worker.core.slots); None: no gate. A step waiting for a slot looks again this often.
    kling_concurrency: int | None = Field(None, ge=1)
    slot_poll_seconds: float = Field(2.0, gt=0)

    notify_url: AnyHttpUrl | None = None
    notify_secret: SecretStr | None = None

    port: int = Field(8000, gt=0, lt=65536)

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

    def notify_key(self) -> str:
        """NOTIFY_SECRET, checked; only asked for when NOTIFY_URL is set."""
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
