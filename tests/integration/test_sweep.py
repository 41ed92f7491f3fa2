"""The sweep over a real Redis: the schedule's script, the arrivals the web records, and
the polls the sweep sends or holds back (``Runner.sweep``; fakeredis in the unit tests)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.unit.test_polling_runner import (
    Rig,
    make_rig,
    sweep_behind_a_long_backlog,
    sweep_behind_a_success_callback,
)


@pytest.fixture
def live_rig(tmp_path: Path, redis_url: str) -> Iterator[Rig]:
    client = redis.Redis.from_url(redis_url)
    prefix = f"test-sweep-{secrets.token_hex(4)}:"
    yield make_rig(tmp_path, client, prefix)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.parametrize("announced", [False, True])
def test_the_sweep_sends_no_poll_behind_the_refresh_of_a_success_callback(
    live_rig: Rig, announced: bool
) -> None:
    sweep_behind_a_success_callback(live_rig, announced=announced)


@pytest.mark.parametrize("announced", [False, True])
def test_under_a_backlog_longer_than_the_ceiling_the_sweep_waits_as_long_as_refreshes_do(
    live_rig: Rig, announced: bool
) -> None:
    sweep_behind_a_long_backlog(live_rig, announced=announced)
