"""A typed client of the kling-chain HTTP API, sync (``Client``) and async (``AsyncClient``).

    from chainctl.client import Client

    with Client("http://127.0.0.1:8000", token="...") as kc:
        chain = kc.create(video_id="8f1c2b", task_id="CjhDaWgU7G", target_seconds=30)
        final = kc.wait(chain.id, on_progress=lambda c: print(c.status, c.duration))

It imports nothing of the service: a program that talks to kling-chain does not load its
worker or web code. Replies come back as frozen dataclasses whose fields are typed; every
field the server sends, those this client does not know yet included, stays available by
name (``chain["max_units"]``, ``chain.get("metadata")``) and as ``.raw``. Error replies
raise an ``ApiError`` subclass carrying the status, the message and each ``{field, message}``
of the reply; a service that cannot be reached raises ``TransportError``.

``create`` always sends an ``Idempotency-Key`` (a fresh one unless given), and when its reply
is lost (a timeout, a dropped connection, a proxy's 502/504, or the 409 of a first attempt
still being stored) it asks again with the same key: the service answers with the chain the
first attempt started, so a retry never starts, or pays for, a second chain.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypedDict, Unpack
from urllib.parse import quote

import httpx

from chainctl.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    NotFound,
    Problem,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
    UnexpectedReply,
    UnsupportedMediaType,
    ValidationFailed,
    WaitTimeout,
    read_reply,
    worth_asking_again,
)
from chainctl.replies import (
    TERMINAL,
    ArchivedVideo,
    ArchiveEntry,
    ArchivePage,
    ArchiveQueued,
    ArchiveTask,
    Budget,
    Chain,
    ChainPage,
    ChainUnits,
    Spend,
    SpendDay,
    Step,
    as_object,
)

__all__ = [
    "CREATE_ATTEMPTS",
    "RETRY_PAUSE",
    "TERMINAL",
    "ApiError",
    "ArchiveEntry",
    "ArchivePage",
    "ArchiveQueued",
    "ArchiveTask",
    "ArchivedVideo",
    "AsyncClient",
    "BadRequest",
    "Budget",
    "Chain",
    "ChainFields",
    "ChainPage",
    "ChainUnits",
    "Client",
    "ClientError",
    "Conflict",
    "Forbidden",
    "NotFound",
    "Problem",
    "Spend",
    "SpendDay",
    "Step",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedReply",
    "UnsupportedMediaType",
    "ValidationFailed",
    "WaitTimeout",
]

log = logging.getLogger(__name__)

CREATE_ATTEMPTS = 3
RETRY_PAUSE = 1.0  # seconds before the second attempt; twice that before the third


# -- requests ----------------------------------------------------------------------------------
class ChainFields(TypedDict, total=False):
    """The fields of ``POST /chains`` (see the README's table); None leaves one out."""

    video_id: str | None
    task_id: str | None
    text_prompt: str | None
    text_duration: int | None
    source_duration: float | None
    target_seconds: float | None
    steps: int | None
    prompt: str | None
    negative_prompt: str | None
    prompts: Sequence[str] | None
    cfg_scale: float | None
    max_units: str | float | None
    metadata: Mapping[str, Any] | None
    webhook_url: str | None
    webhook_events: Sequence[str] | None


def _plain(value: Any) -> Any:
    """A value as JSON can carry it: mappings as objects, other sequences as lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def chain_request(body: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON of ``POST /chains``: ``body`` as given, then the keyword ``fields`` over it;
    fields set to None are left out."""
    merged = {**(body or {}), **fields}
    return {k: _plain(v) for k, v in merged.items() if v is not None}


def chain_path(chain_id: str, action: str = "") -> str:
    if not chain_id:
        raise ValueError("chain_id must not be empty")
    return f"/chains/{quote(chain_id, safe='')}" + (f"/{action}" if action else "")


def _params(**values: str | float | None) -> dict[str, str | float]:
    return {k: v for k, v in values.items() if v is not None}


def archive_request(task_ids: Iterable[str] | str, kind: str) -> dict[str, Any]:
    ids = [task_ids] if isinstance(task_ids, str) else builtins.list(task_ids)
    return {"tasks": [{"task_id": t, "kind": kind} for t in ids]}


def default_base_url() -> str:
    """``KLING_CHAIN_API``, else the web process on this machine at ``$PORT`` (8000)."""
    return os.environ.get("KLING_CHAIN_API") or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"


RetryHook = Callable[[ClientError, str], object]
"""Told of each create sent again: the error of the attempt before, and the key."""


class _Base:
    def __init__(
        self,
        base_url: str | None,
        *,
        token: str | None,
        create_attempts: int,
        retry_pause: float,
        on_retry: RetryHook | None,
        key_prefix: str,
    ) -> None:
        if create_attempts < 1:
            raise ValueError("create_attempts must be at least 1")
        self.base_url = (base_url or default_base_url()).rstrip("/")
        token = token if token is not None else os.environ.get("API_TOKEN")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.create_attempts = create_attempts
        self.retry_pause = retry_pause
        self.on_retry = on_retry
        self.key_prefix = key_prefix

    def _new_key(self) -> str:
        return f"{self.key_prefix}{uuid.uuid4()}"

    def _pause_before(self, attempt: int, exc: ClientError, key: str) -> float | None:
        """Seconds to wait before sending create attempt ``attempt + 1`` after ``exc``
        ended attempt ``attempt``; None: give up."""
        if attempt >= self.create_attempts or not worth_asking_again(exc):
            return None
        log.info("no reply to a create (%s); asking again with Idempotency-Key %s", exc, key)
        if self.on_retry is not None:
            self.on_retry(exc, key)
        return self.retry_pause * attempt


class Client(_Base):
    """The kling-chain API over HTTP. ``base_url``: the web process (default
    ``KLING_CHAIN_API``, else ``http://127.0.0.1:$PORT``); ``token``: the API token
    (default ``API_TOKEN``). Use it as a context manager, or ``close()`` it."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        create_attempts: int = CREATE_ATTEMPTS,
        retry_pause: float = RETRY_PAUSE,
        on_retry: RetryHook | None = None,
        key_prefix: str = "client-",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            token=token,
            create_attempts=create_attempts,
            retry_pause=retry_pause,
            on_retry=on_retry,
            key_prefix=key_prefix,
        )
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | float] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            reply = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.RequestError as exc:
            raise TransportError(self.base_url, exc) from exc
        return read_reply(reply.status_code, reply.content)

    def create(
        self,
        body: Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Unpack[ChainFields],
    ) -> Chain:
        """Start a chain (``POST /chains``) from ``body`` and/or the keyword fields; fields
        this client does not name go in ``body``. Sent again with the same Idempotency-Key
        when a reply is lost; the key is a fresh one unless ``idempotency_key`` is given."""
        data = chain_request(body, fields)
        headers = {"Idempotency-Key": idempotency_key or self._new_key()}
        attempt = 1
        while True:
            try:
                return Chain.from_json(self._call("POST", "/chains", json=data, headers=headers))
            except ClientError as exc:
                pause = self._pause_before(attempt, exc, headers["Idempotency-Key"])
                if pause is None:
                    raise
            time.sleep(pause)
            attempt += 1

    def get(self, chain_id: str) -> Chain:
        return Chain.from_json(self._call("GET", chain_path(chain_id)))

    def list(
        self, *, limit: int = 20, before: float | None = None, status: str | None = None
    ) -> ChainPage:
        """Recent chains, newest first; pass a page's ``next_before`` as ``before``."""
        params = _params(limit=limit, before=before, status=status)
        return ChainPage.from_json(self._call("GET", "/chains", params=params))

    def wait(
        self,
        chain_id: str,
        *,
        on_progress: Callable[[Chain], object] | None = None,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
    ) -> Chain:
        """Poll the chain until it ends; ``on_progress`` gets its first view and each one
        that differs from the one before. ``WaitTimeout`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: Chain | None = None
        while True:
            chain = self.get(chain_id)
            if on_progress is not None and (shown is None or chain.raw != shown.raw):
                on_progress(chain)
            shown = chain
            if chain.terminal:
                return chain
            pause = poll_seconds
            if deadline is not None and timeout is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(chain, timeout)
                pause = min(pause, left)
            time.sleep(pause)

    def cancel(self, chain_id: str) -> Chain:
        """Stop the chain's spending; a step already paid for is followed to its end."""
        return Chain.from_json(self._call("POST", chain_path(chain_id, "cancel"), json={}))

    def resume(self, chain_id: str) -> Chain:
        """Take a failed or cancelled chain on with the work that remains."""
        return Chain.from_json(self._call("POST", chain_path(chain_id, "resume"), json={}))

    def archive(
        self, task_ids: Iterable[str] | str, *, kind: str = "video-extend"
    ) -> ArchiveQueued:
        """Archive the videos of tasks of the account (``kind``: ``video-extend`` or
        ``text2video``)."""
        body = archive_request(task_ids, kind)
        return ArchiveQueued.from_json(self._call("POST", "/archive", json=body))

    def archived(
        self, *, state: str | None = None, limit: int = 50, before: float | None = None
    ) -> ArchivePage:
        """The archive's manifest, newest first (``state``: pending, archived or lost)."""
        params = _params(state=state, limit=limit, before=before)
        return ArchivePage.from_json(self._call("GET", "/archive", params=params))

    def spend(self, days: int = 7) -> Spend:
        """Units the provider reported: today's per chain, and the last ``days`` days."""
        return Spend.from_json(self._call("GET", "/spend", params={"days": days}))

    def set_budget(self, daily_units: str | int | float | None) -> Budget | None:
        """Set the account's daily unit budget for every process (None: back to
        ``DAILY_UNIT_BUDGET``); the budget now in force, None when there is none."""
        body = {"daily_units": None if daily_units is None else str(daily_units)}
        reply = as_object(self._call("PUT", "/spend/budget", json=body), "a budget reply")
        return Budget.from_json(reply.get("budget"))

    def health(self) -> bool:
        """Whether the web process answers and reaches Redis."""
        try:
            return bool(as_object(self._call("GET", "/healthz"), "health").get("redis"))
        except Unavailable:
            return False


class AsyncClient(_Base):
    """``Client`` for asyncio: the same methods, awaited (``aclose`` for ``close``).
    ``wait``'s ``on_progress`` may be a plain function or a coroutine function."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        create_attempts: int = CREATE_ATTEMPTS,
        retry_pause: float = RETRY_PAUSE,
        on_retry: RetryHook | None = None,
        key_prefix: str = "client-",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            token=token,
            create_attempts=create_attempts,
            retry_pause=retry_pause,
            on_retry=on_retry,
            key_prefix=key_prefix,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | float] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            reply = await self._http.request(
                method, path, json=json, params=params, headers=headers
            )
        except httpx.RequestError as exc:
            raise TransportError(self.base_url, exc) from exc
        return read_reply(reply.status_code, reply.content)

    async def create(
        self,
        body: Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Unpack[ChainFields],
    ) -> Chain:
        """See ``Client.create``."""
        data = chain_request(body, fields)
        headers = {"Idempotency-Key": idempotency_key or self._new_key()}
        attempt = 1
        while True:
            try:
                reply = await self._call("POST", "/chains", json=data, headers=headers)
                return Chain.from_json(reply)
            except ClientError as exc:
                pause = self._pause_before(attempt, exc, headers["Idempotency-Key"])
                if pause is None:
                    raise
            await asyncio.sleep(pause)
            attempt += 1

    async def get(self, chain_id: str) -> Chain:
        return Chain.from_json(await self._call("GET", chain_path(chain_id)))

    async def list(
        self, *, limit: int = 20, before: float | None = None, status: str | None = None
    ) -> ChainPage:
        params = _params(limit=limit, before=before, status=status)
        return ChainPage.from_json(await self._call("GET", "/chains", params=params))

    async def wait(
        self,
        chain_id: str,
        *,
        on_progress: Callable[[Chain], object | Awaitable[object]] | None = None,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
    ) -> Chain:
        """See ``Client.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: Chain | None = None
        while True:
            chain = await self.get(chain_id)
            if on_progress is not None and (shown is None or chain.raw != shown.raw):
                told = on_progress(chain)
                if inspect.isawaitable(told):
                    await told
            shown = chain
            if chain.terminal:
                return chain
            pause = poll_seconds
            if deadline is not None and timeout is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(chain, timeout)
                pause = min(pause, left)
            await asyncio.sleep(pause)

    async def cancel(self, chain_id: str) -> Chain:
        return Chain.from_json(await self._call("POST", chain_path(chain_id, "cancel"), json={}))

    async def resume(self, chain_id: str) -> Chain:
        return Chain.from_json(await self._call("POST", chain_path(chain_id, "resume"), json={}))

    async def archive(
        self, task_ids: Iterable[str] | str, *, kind: str = "video-extend"
    ) -> ArchiveQueued:
        body = archive_request(task_ids, kind)
        return ArchiveQueued.from_json(await self._call("POST", "/archive", json=body))

    async def archived(
        self, *, state: str | None = None, limit: int = 50, before: float | None = None
    ) -> ArchivePage:
        params = _params(state=state, limit=limit, before=before)
        return ArchivePage.from_json(await self._call("GET", "/archive", params=params))

    async def spend(self, days: int = 7) -> Spend:
        return Spend.from_json(await self._call("GET", "/spend", params={"days": days}))

    async def set_budget(self, daily_units: str | int | float | None) -> Budget | None:
        body = {"daily_units": None if daily_units is None else str(daily_units)}
        reply = as_object(await self._call("PUT", "/spend/budget", json=body), "a budget reply")
        return Budget.from_json(reply.get("budget"))

    async def health(self) -> bool:
        try:
            return bool(as_object(await self._call("GET", "/healthz"), "health").get("redis"))
        except Unavailable:
            return False
