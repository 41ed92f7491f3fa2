"""The provider routes' signature check (``KLING_WEBHOOK_SECRET``) and ``webhook-id`` dedupe.

With a secret set, a provider callback must carry a valid Standard Webhooks signature made
within 5 minutes (`kling.signing`), on top of its URL token; one that does not gets 401 and
is not enqueued. The check is pure computing: a storm of forged callbacks never reaches Redis.
A callback that passes is taken once per ``webhook-id`` (one ``SET NX``); a repeat delivery
gets 200 and enqueues nothing. Without a secret nothing changes: the URL token alone, and
no dedupe (an unsigned ``webhook-id`` would be anyone's to burn).

Refusals are counted per reason in this process (``kc_callbacks_refused_total`` in
``/metrics``) and logged at warning level, at most once per reason every
`LOG_EVERY_SECONDS` with the number refused since, so a storm cannot flood the logs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress

import redis
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from kling.signing import Refusal, SignatureError, verify
from worker.state.deliveries import Deliveries

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0


class SignedCallbacks:
    """Verifies provider callbacks under ``secret`` (None: signing off) and takes each
    signed message once."""

    def __init__(
        self,
        secret: str | None,
        deliveries: Deliveries,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret = secret
        self._deliveries = deliveries
        self._clock = clock
        self.refused: Counter[Refusal] = Counter()
        self._unlogged: Counter[Refusal] = Counter()
        self._logged_at: dict[Refusal, float] = {}

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    def verify(self, body: bytes, headers: Mapping[str, str], *, where: str) -> str | None:
        """The ``webhook-id`` of a callback whose signature holds, None with signing off.

        Raises ``HTTPException(401)`` for one that does not; ``where`` (a redacted path)
        is only for the log.
        """
        if self._secret is None:
            return None
        try:
            return verify(self._secret, body, headers)
        except SignatureError as exc:
            self._count(exc, where)
            raise HTTPException(401, f"invalid callback signature: {exc}") from None

    async def first(self, webhook_id: str | None) -> bool:
        """False only for a repeat delivery of a signed message already taken."""
        if webhook_id is None:
            return True
        return await run_in_threadpool(self._deliveries.first, webhook_id)

    @asynccontextmanager
    async def taken(self, webhook_id: str | None) -> AsyncIterator[None]:
        """Around acting on a message: when that fails, its ``webhook-id`` is given back, so
        the provider's next delivery of it is acted on instead of answered as a repeat."""
        try:
            yield
        except BaseException:
            if webhook_id is not None:
                with suppress(redis.RedisError):
                    await run_in_threadpool(self._deliveries.forget, webhook_id)
            raise

    def metric_lines(self) -> list[str]:
        """``kc_callbacks_refused_total{reason}``, Prometheus text, every reason listed."""
        lines = ["# TYPE kc_callbacks_refused_total counter"]
        lines += [
            f'kc_callbacks_refused_total{{reason="{reason}"}} {self.refused[reason]}'
            for reason in Refusal
        ]
        return lines

    def _count(self, exc: SignatureError, where: str) -> None:
        reason = exc.reason
        self.refused[reason] += 1
        self._unlogged[reason] += 1
        now = self._clock()
        last = self._logged_at.get(reason)
        if last is not None and now - last < LOG_EVERY_SECONDS:
            return
        self._logged_at[reason] = now
        count, self._unlogged[reason] = self._unlogged[reason], 0
        log.warning(
            "refused %d provider callback(s) (%s) since the last report, latest on %s: %s",
            count,
            reason,
            where,
            exc,
        )
