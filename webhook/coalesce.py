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

Within a batch, the ``LPUSH``es to one list are sent as one ``LPUSH`` of all their values,
in the order they were queued, and the ``HINCRBY``s of one hash field as one ``HINCRBY`` of
their sum (``Batch``): under load most callbacks of a turn push onto the same queue and add
to the same counter, and each command a pipeline carries costs the web CPU of its own. A
worker takes the pushed messages in the same order as from separate pushes (LPUSH adds
each value at the head in turn), and the counter ends at the same value. Each request
sharing a merged command hears that command's reply or error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis
from redis import asyncio as aioredis

Queue = Callable[[Any], None]
"""Adds a request's commands to the batch it is given (any pipeline command, ``Batch``)."""

_Command = tuple[str, tuple[Any, ...], dict[str, Any]]


class Batch:
    """A pipeline's commands as the requests of one turn queue them, each LPUSH to a list and
    each HINCRBY of a field merged into the first such command queued. ``take`` gives the
    places in the pipeline of the commands queued since the last ``take``, one per command
    (a merged command's place for each command merged into it).

    A merged command runs where the first of its kind was queued, so a request's commands
    may run in another order than it queued them: none may depend on another's effect (a
    read after its own write, say). Every caller's commands are independent writes, or a
    read beside them."""

    def __init__(self) -> None:
        self.commands: list[_Command] = []
        self._merged: dict[tuple[str, Any, Any], int] = {}
        self._mine: list[int] = []

    def lpush(self, name: Any, *values: Any) -> None:
        place = self._merged.get(("lpush", name, None))
        if place is None:
            self._merged["lpush", name, None] = self._add("lpush", (name, *values))
        else:
            self._share(place, values=values)

    def hincrby(self, name: Any, key: Any, amount: int = 1) -> None:
        place = self._merged.get(("hincrby", name, key))
        if place is None:
            self._merged["hincrby", name, key] = self._add("hincrby", (name, key, amount))
        else:
            self._share(place, amount=amount)

    def __getattr__(self, command: str) -> Callable[..., None]:
        """Any other command, queued as it is."""

        def queue(*args: Any, **kwargs: Any) -> None:
            self._add(command, args, kwargs)

        return queue

    def take(self) -> list[int]:
        mine, self._mine = self._mine, []
        return mine

    def send(self, pipe: Any) -> None:
        for command, args, kwargs in self.commands:
            getattr(pipe, command)(*args, **kwargs)

    def _add(
        self, command: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
    ) -> int:
        self.commands.append((command, args, kwargs or {}))
        place = len(self.commands) - 1
        self._mine.append(place)
        return place

    def _share(self, place: int, *, values: tuple[Any, ...] = (), amount: int = 0) -> None:
        command, args, kwargs = self.commands[place]
        if amount:
            args = (*args[:2], args[2] + amount)
        self.commands[place] = (command, (*args, *values), kwargs)
        self._mine.append(place)  # a reply for every command queued, shared or not


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
        places: list[list[int]] = []
        try:
            commands = Batch()
            for queue, _ in batch:
                queue(commands)
                places.append(commands.take())
            async with self.redis.pipeline(transaction=False) as pipe:
                commands.send(pipe)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # Redis, or a bug in one queue: every request hears it
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception) else _cancelled())
            if not isinstance(exc, Exception):
                raise
            return
        for (_, done), mine_at in zip(batch, places, strict=True):
            mine = [replies[place] for place in mine_at]
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
