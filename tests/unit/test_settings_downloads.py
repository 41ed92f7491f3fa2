"""The download settings: ALLOW_PRIVATE_HOSTS parsed once at start-up, and the attempt limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.outbound.netguard import AllowList
from worker.outbound.pace import AttemptLimits
from worker.settings import ConfigError, Settings, get_settings

NAMES = (
    "ALLOW_PRIVATE_HOSTS",
    "DOWNLOAD_ATTEMPT_SECONDS",
    "DOWNLOAD_MIN_BYTES_PER_SECOND",
    "DOWNLOAD_RATE_WINDOW_SECONDS",
)


@pytest.fixture(autouse=True)
def _no_stray_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_allow_no_internal_address_and_limit_each_attempt() -> None:
    settings = Settings()
    assert settings.allow_private_hosts == AllowList()
    assert settings.download_limits() == AttemptLimits(
        seconds=900.0, min_bytes_per_second=65536, window_seconds=60.0
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", AllowList()),
        ("127.0.0.1", AllowList.parse("127.0.0.1")),
        (
            "127.0.0.1, mirror.internal,10.20.0.0/16",
            AllowList.parse("127.0.0.1,mirror.internal,10.20.0.0/16"),
        ),
    ],
)
def test_allow_private_hosts_is_read_into_an_allow_list(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: AllowList
) -> None:
    monkeypatch.setenv("ALLOW_PRIVATE_HOSTS", value)
    assert Settings().allow_private_hosts == expected


@pytest.mark.parametrize(
    ("value", "entry"),
    [
        ("127.0.0.1,10.0.0.1/8", "'10.0.0.1/8'"),
        ("http://mirror.internal", "'http://mirror.internal'"),
        ("mirror.internal:8080", "'mirror.internal:8080'"),
        ("300.1.1.1", "'300.1.1.1'"),
    ],
)
def test_a_bad_entry_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str, entry: str
) -> None:
    monkeypatch.setenv("ALLOW_PRIVATE_HOSTS", value)
    with pytest.raises(ConfigError, match="ALLOW_PRIVATE_HOSTS") as caught:
        get_settings()
    assert entry in str(caught.value)


def test_the_attempt_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNLOAD_ATTEMPT_SECONDS", "600")
    monkeypatch.setenv("DOWNLOAD_MIN_BYTES_PER_SECOND", "0")
    monkeypatch.setenv("DOWNLOAD_RATE_WINDOW_SECONDS", "15")
    assert Settings().download_limits() == AttemptLimits(600.0, 0, 15.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DOWNLOAD_ATTEMPT_SECONDS", "0"),
        ("DOWNLOAD_MIN_BYTES_PER_SECOND", "-1"),
        ("DOWNLOAD_RATE_WINDOW_SECONDS", "0"),
    ],
)
def test_limits_that_could_never_work_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        get_settings()
