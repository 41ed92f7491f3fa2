"""The web's coalescing pipeline: concurrent requests share one round trip, and each hears
only its own replies and its own error."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
import redis

from webhook.coalesce import Coalescer


class CountingRedis(fakeredis.FakeAsyncRedis):
    """Counts the pipelines sent."""

    sent = 0

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        assert transaction is False  # the requests are independent: no MULTI
        CountingRedis.sent += 1
        return super().pipeline(transaction=transaction, shard_hint=shard_hint)


@pytest.fixture
def client() -> CountingRedis:
    CountingRedis.sent = 0
    return CountingRedis()


def test_concurrent_requests_share_one_pipeline_and_get_their_own_replies(
    client: CountingRedis,
) -> None:
    coalescer = Coalescer(client)

    def pushes(n: int) -> Any:
        def queue(pipe: Any) -> None:
            for _ in range(n):
                pipe.lpush("q", f"m{n}")

        return queue

    async def run() -> list[list[Any]]:
        return list(await asyncio.gather(*(coalescer.run(pushes(n)) for n in (1, 2, 3))))

    replies = asyncio.run(run())
    assert client.sent == 1
    assert [len(r) for r in replies] == [1, 2, 3]
    assert replies[2] == [4, 5, 6]  # list lengths after each LPUSH, in order


def test_one_requests_error_is_its_own(client: CountingRedis) -> None:
    coalescer = Coalescer(client)

    async def run() -> list[Any]:
        await client.set("a-string", "x")
        good = coalescer.run(lambda pipe: pipe.lpush("q", "m"))
        bad = coalescer.run(lambda pipe: pipe.lpush("a-string", "m"))  # WRONGTYPE
        return list(await asyncio.gather(good, bad, return_exceptions=True))

    good, bad = asyncio.run(run())
    assert good == [1]
    assert isinstance(bad, redis.ResponseError)


def test_a_lost_connection_reaches_every_waiting_request() -> None:
    class Down(fakeredis.FakeAsyncRedis):
        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            raise redis.ConnectionError("Connection refused")

    coalescer = Coalescer(Down())

    async def run() -> list[Any]:
        runs = [coalescer.run(lambda pipe: pipe.lpush("q", "m")) for _ in range(3)]
        return list(await asyncio.gather(*runs, return_exceptions=True))

    assert all(isinstance(r, redis.ConnectionError) for r in asyncio.run(run()))


def test_requests_one_at_a_time_each_send_at_once(client: CountingRedis) -> None:
    coalescer = Coalescer(client)

    async def run() -> None:
        for _ in range(3):
            assert await coalescer.run(lambda pipe: pipe.incr("n")) is not None

    asyncio.run(run())
    assert client.sent == 3
