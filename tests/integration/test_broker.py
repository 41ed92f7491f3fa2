"""worker.broker: kombu's Redis transport with one client per channel, on a real Redis."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from worker import broker
from worker.celery import app


def test_celery_uses_the_transport() -> None:
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, broker.Transport)


def test_publish_take_and_ack_share_one_client(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    asked: list[bool] = []
    real_init = redis.Redis.__init__
    real_create = broker.Channel._create_client

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        real_init(self, *args, **kwargs)

    def counting_create(self: Any, asynchronous: bool = False) -> Any:
        asked.append(asynchronous)
        return real_create(self, asynchronous)

    monkeypatch.setattr(redis.Redis, "__init__", counting_init)
    monkeypatch.setattr(broker.Channel, "_create_client", counting_create)
    name = f"test-broker-{secrets.token_hex(4)}"
    queue = Queue(name, Exchange(name), routing_key=name)
    with Connection(redis_url, transport=broker.Transport) as conn:
        channel = conn.default_channel
        producer = conn.Producer(channel)
        for n in range(5):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=name, declare=[queue])
        taken = []
        for _ in range(5):
            message = queue(channel).get(no_ack=False)
            assert message is not None
            taken.append(message.payload["n"])
            message.ack()
        assert sorted(taken) == list(range(5))
        sync_asks = asked.count(False)
        # kombu still builds its clients through _create_client (else this override is dead)...
        assert sync_asks >= 10
        # ...and the channel made one of them, not one per publish, take and ack.
        made_sync = [c for c in made if not isinstance(c, redis.asyncio.Redis)]
        assert len(made_sync) <= 3, f"{len(made_sync)} clients for {sync_asks} asks"
        queue(channel).delete()
