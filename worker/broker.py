"""The Redis transport Celery uses here: kombu's own, with one client per channel.

kombu's Redis channel builds a new ``redis.Redis`` for each thing it does outside its event
loop (``Channel._create_client``): every message a worker takes records it as unacked, every
acknowledgement removes it again, every publish pushes it. Building one means building
redis-py's table of reply callbacks, about 0.15 ms of CPU here, three or more times per
task: a tenth of the worker's CPU per step. A ``redis.Redis`` is only a thread-safe handle on
a connection pool, so the channel keeps one per pool and hands out that.

Selected by Celery's documented ``broker_transport`` setting (``worker.celery``). Should kombu
stop calling ``_create_client``, this override is just unused; ``tests/unit/test_broker.py``
says so.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as redis_transport


class Channel(redis_transport.Channel):
    _one_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's own clients: made once each already
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._one_client
        if client is None or client.connection_pool is not self.pool:  # a new pool: a new one
            client = self._one_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(redis_transport.Transport):
    Channel = Channel
