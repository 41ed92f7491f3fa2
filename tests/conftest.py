"""Shared fixtures: a real Redis (fails in CI when missing), the whole service as processes,
and a record of what local storage asks of the disk."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import Service, start_service, stop_service

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
STRAY = (
    "REDIS_URL",
    "KEY_PREFIX",
    "CELERY_QUEUE",
    "PUBLIC_URL",
    "CALLBACK_SECRET",
    "ARCHIVE_DIR",
    "POLL_AFTER_SECONDS",
    "POLLING",
    "POLL_MAX_GAP_SECONDS",
    "POLL_MIN_GAP_SECONDS",
    "CALLBACK_SILENCE_SECONDS",
    "SWEEP_SECONDS",
    "PORT",
    "API_TOKEN",
    "API_AUTH",
    "ALLOW_PRIVATE_HOSTS",
    "DOWNLOAD_ATTEMPT_SECONDS",
    "DOWNLOAD_MIN_BYTES_PER_SECOND",
    "DOWNLOAD_RATE_WINDOW_SECONDS",
    "ARCHIVE_LEASE_SECONDS",
    "WORKER_QUEUES",
    "NOTIFY_URL",
    "NOTIFY_SECRET",
    "KLING_WEBHOOK_SECRET",  # also caught by the KLING_ prefix; named for the record
    "LOG_FORMAT",
    "DAILY_UNIT_BUDGET",
    "BUDGET_POLL_SECONDS",
    "CHAIN_RETENTION_DAYS",
    "ARCHIVE_KEEP",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration a developer has exported must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("KLING_") or name in STRAY:
            monkeypatch.delenv(name)


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis. Skips on a laptop without one; fails in CI, where it must be there."""
    if not _redis_answers(TEST_REDIS_URL):
        message = f"no Redis answers at {TEST_REDIS_URL} (start redis-server or set TEST_REDIS_URL)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return TEST_REDIS_URL


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    """One running service per test module (tests seed their own videos)."""
    svc = start_service(tmp_path_factory.mktemp("service"), redis_url)
    yield svc
    stop_service(svc)


@pytest.fixture
def disk_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What ``worker.storage.local`` asks of the disk from now on, in order: "fsync-file",
    "fsync-dir" and "replace" (each still done)."""
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        fsync(fd)

    def spy_replace(src: Path, dst: Path) -> None:
        events.append("replace")
        replace(src, dst)

    monkeypatch.setattr("worker.storage.local.os.fsync", spy_fsync)
    monkeypatch.setattr("worker.storage.local.os.replace", spy_replace)
    return events
