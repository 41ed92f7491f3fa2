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
    # One LPUSH carried all six: each push's reply is that command's, the list's length.
    assert replies == [[6], [6, 6], [6, 6, 6]]


def test_pushes_to_one_list_and_adds_to_one_field_are_one_command_each(
    client: CountingRedis,
) -> None:
    coalescer = Coalescer(client)
    sent: list[tuple[Any, ...]] = []

    def callback(n: int) -> Any:
        def queue(pipe: Any) -> None:
            pipe.lpush("q", f"m{n}")
            pipe.hincrby("counts", "accepted", 1)
            pipe.set(f"arrived:{n}", "1.0", nx=True, ex=60)

        return queue

    async def run() -> list[list[Any]]:
        real = client.pipeline

        def recording(transaction: bool = True, shard_hint: Any = None) -> Any:
            pipe = real(transaction=transaction, shard_hint=shard_hint)
            execute = pipe.execute

            async def execute_and_note(raise_on_error: bool = True) -> Any:
                sent.extend(tuple(c[0]) for c in pipe.command_stack)
                return await execute(raise_on_error=raise_on_error)

            pipe.execute = execute_and_note
            return pipe

        client.pipeline = recording  # type: ignore[method-assign]
        await client.hset("counts", "accepted", 10)
        return list(await asyncio.gather(*(coalescer.run(callback(n)) for n in range(4))))

    replies = asyncio.run(run())
    names = [command[0] for command in sent]
    assert names == ["LPUSH", "HINCRBY", "SET", "SET", "SET", "SET"]
    assert sent[0] == ("LPUSH", "q", "m0", "m1", "m2", "m3")
    assert sent[1] == ("HINCRBY", "counts", "accepted", 4)
    assert replies[0] == [4, 14, True]
    assert replies[3] == [4, 14, True]

    async def after() -> tuple[list[Any], Any]:
        taken = [await client.rpop("q") for _ in range(4)]  # as a worker takes them
        return taken, await client.hget("counts", "accepted")

    taken, count = asyncio.run(after())
    assert taken == [b"m0", b"m1", b"m2", b"m3"]  # the order of separate pushes
    assert count == b"14"


def test_a_merged_commands_error_reaches_each_request_that_shares_it(
    client: CountingRedis,
) -> None:
    coalescer = Coalescer(client)

    async def run() -> list[Any]:
        await client.set("a-string", "x")
        both = [coalescer.run(lambda pipe: pipe.lpush("a-string", "m")) for _ in range(2)]
        other = coalescer.run(lambda pipe: pipe.lpush("q", "m"))
        return list(await asyncio.gather(*both, other, return_exceptions=True))

    first, second, other = asyncio.run(run())
    assert isinstance(first, redis.ResponseError)
    assert isinstance(second, redis.ResponseError)
    assert other == [1]


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
