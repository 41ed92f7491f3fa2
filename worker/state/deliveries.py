"""Signed provider callbacks already taken, by ``webhook-id``: one Redis key each.

The provider sends a message again, under the same ``webhook-id``, when it thinks a delivery
failed; a storm of repeats then costs one ``SET NX`` each and enqueues nothing.
"""

from __future__ import annotations

import hashlib

import redis

from worker.state.keys import Keys

DELIVERY_TTL = 24 * 3600
"""How long a ``webhook-id`` is remembered. Past it, the signature's 5-minute window has long
closed: a delivery that old is refused before its id is looked at."""


class Deliveries:
    def __init__(self, client: redis.Redis, keys: Keys, *, ttl: int = DELIVERY_TTL) -> None:
        self.redis = client
        self.keys = keys
        self.ttl = ttl

    def _key(self, webhook_id: str) -> str:
        return self.keys.webhook_delivery(hashlib.sha256(webhook_id.encode()).hexdigest()[:32])

    def first(self, webhook_id: str) -> bool:
        """True for the first delivery of ``webhook_id`` (now taken), False for a repeat."""
        return bool(self.redis.set(self._key(webhook_id), b"1", nx=True, ex=self.ttl))

    def forget(self, webhook_id: str) -> None:
        """Give ``webhook_id`` back: its delivery was not acted on, so a repeat must be."""
        self.redis.delete(self._key(webhook_id))
