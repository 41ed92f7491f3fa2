"""Sending status-change callbacks, with the delivery faults the knobs ask for.

Callbacks of one task go out in the order of their changes (unless ``reorder`` holds the
processing one back until the terminal one has been sent). A callback that cannot be
delivered is logged and counted; it never disturbs the gateway.

With a webhook secret, each callback is signed per Standard Webhooks (``kling.signing``), as
the official API signs them: a ``webhook-id`` per status change, kept by its ``duplicate``
copies (redeliveries of one message), and a timestamp and signature made at each attempt.
The ``callback_signatures`` knob spoils them on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx

from kling.fake.engine import Engine, StatusChange
from kling.fake.tasks import PROCESSING, TERMINAL, envelope
from kling.signing import SIGNATURE_HEADER, sign_headers

STALE_SECONDS = 600.0
"""How old a ``stale`` signature is: twice what receivers accept."""

log = logging.getLogger("kling.fake.callbacks")


class CallbackSender:
    """POSTs each status change of a task with a ``callback_url`` to that URL."""

    def __init__(
        self,
        engine: Engine,
        *,
        timeout: float = 10.0,
        rng: random.Random | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self._engine = engine
        self._webhook_secret = webhook_secret
        self._timeout = timeout
        self._rng = rng or random.Random()
        self._client: httpx.AsyncClient | None = None
        self._held: dict[str, StatusChange] = {}
        self._chains: dict[str, asyncio.Task[None]] = {}

    def dispatch(self, changes: Iterable[StatusChange]) -> None:
        """Schedule the callbacks of ``changes`` (needs a running event loop)."""
        for change in changes:
            self._dispatch_one(change)

    def forget_held(self) -> None:
        self._held.clear()

    async def aclose(self) -> None:
        for chain in list(self._chains.values()):
            chain.cancel()
        await asyncio.gather(*self._chains.values(), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _dispatch_one(self, change: StatusChange) -> None:
        if change.callback_url is None:
            return
        knobs = self._engine.faults.callbacks
        if knobs.reorder and change.status == PROCESSING:
            self._held[change.task_id] = change
            return
        batch = [change]
        if change.status in TERMINAL and (held := self._held.pop(change.task_id, None)):
            batch.append(held)
        for item in batch:
            if knobs.drop > 0 and self._rng.random() < knobs.drop:
                self._engine.stats.callbacks_dropped += 1
                log.info("dropped the %s callback of task %s", item.status, item.task_id)
                continue
            body = envelope(item.body) if self._engine.faults.callback_envelope else item.body
            self._chain(item, body, copies=1 + knobs.duplicate, delay=knobs.delay_seconds)

    def signature_headers(self, msg_id: str, payload: bytes) -> dict[str, str]:
        """The webhook-* headers of one attempt, as the ``callback_signatures`` knob says."""
        secret = self._webhook_secret
        mode = self._engine.faults.callback_signatures
        if secret is None or mode == "none":
            return {}
        if mode == "wrong":
            return sign_headers(_other_secret(secret), msg_id, payload)
        if mode == "stale":
            return sign_headers(secret, msg_id, payload, now=time.time() - STALE_SECONDS)
        headers = sign_headers(secret, msg_id, payload)
        if mode == "rotated":
            old = sign_headers(_other_secret(secret), msg_id, payload)[SIGNATURE_HEADER]
            headers[SIGNATURE_HEADER] = f"{old} {headers[SIGNATURE_HEADER]}"
        return headers

    def _chain(
        self, change: StatusChange, body: dict[str, Any], *, copies: int, delay: float
    ) -> None:
        loop = asyncio.get_running_loop()
        send_at = loop.time() + delay
        previous = self._chains.get(change.task_id)

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            wait = send_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            assert change.callback_url is not None
            msg_id = f"msg_{uuid.uuid4().hex}"  # one message: its copies are redeliveries
            for _ in range(copies):
                await self._post(change, change.callback_url, body, msg_id)

        chain = loop.create_task(run())
        self._chains[change.task_id] = chain

        def done(finished: asyncio.Task[None]) -> None:
            if self._chains.get(change.task_id) is finished:
                del self._chains[change.task_id]

        chain.add_done_callback(done)

    async def _post(
        self, change: StatusChange, url: str, body: dict[str, Any], msg_id: str
    ) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        payload = json.dumps(body, separators=(",", ":")).encode()
        signature = self.signature_headers(msg_id, payload)
        headers = {"content-type": "application/json", **signature}
        try:
            reply = await self._client.post(url, content=payload, headers=headers)
        except Exception as exc:  # a callback must never break the gateway
            self._engine.stats.callbacks_failed += 1
            log.warning(
                "callback %s of task %s to %s failed: %r", change.status, change.task_id, url, exc
            )
            return
        self._engine.stats.callbacks_sent += 1
        self._engine.stats.callbacks_signed += bool(signature)
        if reply.status_code >= 400:
            self._engine.stats.callbacks_refused += 1
            log.warning(
                "callback %s of task %s to %s answered %d",
                change.status,
                change.task_id,
                url,
                reply.status_code,
            )


def _other_secret(secret: str) -> str:
    """A secret that is not ``secret`` (a rotated-out one, or a forger's), fixed by it."""
    digest = hashlib.sha256(b"not the webhook secret:" + secret.encode()).digest()
    return "whsec_" + base64.b64encode(digest).decode()
