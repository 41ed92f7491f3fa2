"""The Redis transport Celery uses here: kombu's own, with one client per channel and its
unacked bookkeeping in one script call each.

kombu's Redis channel builds a new ``redis.Redis`` for each thing it does outside its event
loop (``Channel._create_client``): every message a worker takes records it as unacked, every
acknowledgement removes it again, every publish pushes it. Building one means building
redis-py's table of reply callbacks, about 0.15 ms of CPU here, three or more times per
task: a tenth of the worker's CPU per step. A ``redis.Redis`` is only a thread-safe handle on
a connection pool, so the channel keeps one per pool and hands out that.

Every message a worker takes is recorded as unacked (a ZADD to the index and an HSET of the
message) and every ack removes it again (ZREM, HDEL). kombu sends each pair as a MULTI/EXEC
pipeline, the costliest way redis-py has to send two commands; ``QoS`` sends each pair as one
script (EVALSHA), as atomic, with the same keys and values, so kombu's own restore of unacked
messages (``restore_visible``, ``restore_by_tag``) reads them as before.

A publish that must declare its queue while Redis is away (the first one of a process to
that queue, e.g. a task's retry) reconnects inside the declare, and kombu then publishes on
the channel that reconnect closed: an ``AttributeError``, so Celery drops the retry.
``Channel.basic_publish`` turns that into a connection error, which the publish's retry
policy recovers from.

Selected by Celery's documented ``broker_transport`` setting (``worker.celery``). Should kombu
stop calling ``_create_client``, or change how it records an unacked message, the tests in
``tests/integration/test_broker.py`` fail.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from kombu.transport import redis as redis_transport
from kombu.transport import virtual
from kombu.utils.json import dumps

# KEYS: the unacked index (a sorted set), the unacked messages (a hash).
_APPEND = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
"""
_REMOVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""


class QoS(redis_transport.QoS):
    """kombu's ack emulation, each change of the unacked records in one script call."""

    _client: Any = None  # the client the scripts below are registered with
    _append: Any = None
    _remove: Any = None

    def _scripts(self, client: Any) -> tuple[Any, Any]:
        """(append, remove), registered with ``client``."""
        if client is not self._client:
            self._client = client
            self._append = client.register_script(_APPEND)
            self._remove = client.register_script(_REMOVE)
        return self._append, self._remove

    def append(self, message: Any, delivery_tag: Any) -> None:
        delivery = message.delivery_info
        raw = [message._raw, delivery["exchange"], delivery["routing_key"]]
        record = dumps(raw)  # type: ignore[no-untyped-call]
        with self.channel.conn_or_acquire() as client:
            append, _ = self._scripts(client)
            append(
                keys=[self.unacked_index_key, self.unacked_key],
                args=[time.time(), delivery_tag, record],
            )
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        self._forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)  # type: ignore[no-untyped-call]
        else:
            self._forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]

    def _forget(self, delivery_tag: Any) -> None:
        with self.channel.conn_or_acquire() as client:
            _, remove = self._scripts(client)
            remove(keys=[self.unacked_index_key, self.unacked_key], args=[delivery_tag])


class Channel(redis_transport.Channel):
    QoS = QoS
    _one_client: Any = None

    def basic_publish(self, message: Any, exchange: Any, routing_key: Any, **kwargs: Any) -> Any:
        if self.connection is None:
            # Closed under the publish: a declare inside it (Celery declares the task's
            # queue) met the outage and reconnected, and kombu goes on with the channel it
            # held before. Say so as a connection error: the publish's retry policy then
            # reconnects and publishes on a fresh channel.
            raise redis.ConnectionError("publish on a broker channel closed by a reconnect")
        return super().basic_publish(message, exchange, routing_key, **kwargs)  # type: ignore[no-untyped-call]

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's own clients: made once each already
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._one_client
        if client is None or client.connection_pool is not self.pool:  # a new pool: a new one
            client = self._one_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(redis_transport.Transport):
    Channel = Channel
