"""Redis commands of concurrent requests, sent in one pipeline per turn of the event loop.

A provider callback costs the web process a token check, a parse and a few Redis commands
(its count, its task's ``LPUSH``). Sending those as a pipeline of their own was most of
the callback's CPU: redis-py's asyncio pipeline costs about the same for one command as for
fifty. Under load, callbacks arrive together, so ``Coalescer.run`` queues each request's
commands and sends everything queued during one turn of the loop as one pipeline (without
MULTI: the requests are independent, as before). Each request still waits for the reply to
its own commands and gets its own error, so a callback is answered 200 only once its task
is in Redis, exactly as with a pipeline of its own. With one request at a time, a batch is
that request alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis
from redis import asyncio as aioredis

Queue = Callable[[Any], None]
"""Adds a request's commands to the pipeline it is given."""


class Coalescer:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._waiting: list[tuple[Queue, asyncio.Future[list[Any]]]] = []

    async def run(self, queue: Queue) -> list[Any]:
        """The replies to the commands ``queue`` adds, once Redis has answered them; raises
        the ``redis.RedisError`` that stopped them (one command's error: that one's)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((queue, done))
        if len(self._waiting) == 1:  # the first this turn: send the batch at the turn's end
            loop.call_soon(self._send_soon)
        return await done

    def _send_soon(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._send(batch))
        task.add_done_callback(_quiet)

    async def _send(self, batch: list[tuple[Queue, asyncio.Future[list[Any]]]]) -> None:
        counts: list[int] = []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue, _ in batch:
                    before = len(pipe)
                    queue(pipe)
                    counts.append(len(pipe) - before)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # Redis, or a bug in one queue: every request hears it
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception) else _cancelled())
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for (_, done), count in zip(batch, counts, strict=True):
            mine = replies[start : start + count]
            start += count
            if done.done():  # the request went away (its client hung up)
                continue
            failed = next((r for r in mine if isinstance(r, redis.RedisError)), None)
            if failed is not None:
                done.set_exception(failed)
            else:
                done.set_result(mine)


def _cancelled() -> Exception:
    return redis.ConnectionError("the web process is shutting down")


def _quiet(task: asyncio.Future[None]) -> None:
    """Every request was told the outcome; nothing is left for the loop to report."""
    if not task.cancelled():
        task.exception()
