"""worker.broker: kombu's Redis transport with one client per channel, on a real Redis."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from tests.support import PersistentRedis
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


def test_unacked_records_are_kombus_own(redis_url: str) -> None:
    """What QoS writes for a taken message is what kombu's own restore reads back: a message
    taken and never acked goes back to its queue, whole; an acked one leaves nothing."""
    name = f"test-broker-{secrets.token_hex(4)}"
    queue = Queue(name, Exchange(name), routing_key=name)
    with Connection(redis_url, transport=broker.Transport) as conn:
        channel = conn.default_channel
        assert isinstance(channel.qos, broker.QoS)
        producer = conn.Producer(channel)
        for n in range(2):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=name, declare=[queue])
        acked, kept = queue(channel).get(no_ack=False), queue(channel).get(no_ack=False)
        assert acked is not None
        assert kept is not None
        client = channel.client
        tags = {acked.delivery_tag, kept.delivery_tag}
        assert {t.decode() for t in client.hkeys(channel.unacked_key)} >= tags
        assert {t.decode() for t, _ in client.zscan_iter(channel.unacked_index_key)} >= tags
        acked.ack()
        assert not client.hexists(channel.unacked_key, acked.delivery_tag)
        assert client.zscore(channel.unacked_index_key, acked.delivery_tag) is None
        # kombu's own restore (as after a worker died) puts the unacked one back, intact
        channel.qos.restore_by_tag(kept.delivery_tag)
        assert not client.hexists(channel.unacked_key, kept.delivery_tag)
        again = queue(channel).get(no_ack=True)
        assert again is not None
        assert again.payload == kept.payload
        assert queue(channel).get(no_ack=True) is None
        queue(channel).delete()


def test_a_rejected_message_is_requeued_or_forgotten(redis_url: str) -> None:
    name = f"test-broker-{secrets.token_hex(4)}"
    queue = Queue(name, Exchange(name), routing_key=name)
    with Connection(redis_url, transport=broker.Transport) as conn:
        channel = conn.default_channel
        conn.Producer(channel).publish(
            {"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue]
        )
        first = queue(channel).get(no_ack=False)
        assert first is not None
        first.reject(requeue=True)
        second = queue(channel).get(no_ack=False)
        assert second is not None
        assert second.payload == {"n": 1}
        second.reject(requeue=False)
        client = channel.client
        assert not client.hexists(channel.unacked_key, second.delivery_tag)
        assert client.zscore(channel.unacked_index_key, second.delivery_tag) is None
        assert queue(channel).get(no_ack=True) is None
        queue(channel).delete()


def test_a_publish_that_declares_its_queue_during_an_outage_lands_once(tmp_path: Path) -> None:
    # Given a producer that has published before, and a queue it has never declared (as
    # a task's retry goes to the queue of its task, which the process never published to)
    server = PersistentRedis(tmp_path)
    server.start()
    try:
        before = Queue("before", Exchange("before"), routing_key="before")
        fresh = Queue("fresh", Exchange("fresh"), routing_key="fresh")
        with Connection(server.url, transport=broker.Transport) as conn:
            producer = conn.Producer()

            def publish(queue: Queue, n: int, **retry_policy: float) -> None:
                producer.publish(
                    {"n": n},
                    exchange=queue.exchange,
                    routing_key=queue.routing_key,
                    declare=[queue],
                    retry=True,
                    retry_policy=retry_policy,
                )

            publish(before, 0)
            # When Redis is away as it publishes, and back 1.5 s later
            server.stop()
            back = threading.Timer(1.5, server.start)
            back.start()
            try:
                publish(
                    fresh,
                    1,
                    max_retries=20,
                    interval_start=0.2,
                    interval_step=0.5,
                    interval_max=1.0,
                )
            finally:
                back.join()
        # Then the message is in its queue, once (kombu's own transport: AttributeError)
        assert redis.Redis.from_url(server.url).llen("fresh") == 1
    finally:
        server.stop()
