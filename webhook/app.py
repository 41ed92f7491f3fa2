"""The web process: the chain API and the provider's callback route.

Run it as ``uvicorn webhook.app:create_app --factory``. Callbacks are answered fast; the work
(confirming by query, recording, the next step) happens in the Celery worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from kling.errors import KlingError
from kling.models import parse_task
from webhook.api import ArchiveRequest, ChainRequest, problems
from worker import tokens
from worker.archiver import ARCHIVE_TASK_TASK
from worker.chain import new_chain
from worker.runner import REFRESH_TASK, SUBMIT_TASK
from worker.settings import Settings, get_settings, reveal
from worker.store import Store, Timing, UnknownChain
from worker.videos import Videos, VideoState, at_risk

KINDS = ("video-extend", "text2video", "image2video")

log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 64 * 1024
IDEMPOTENCY_TTL = 24 * 3600
MAX_REQUEST_BYTES = 256 * 1024


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
    return bytes(body)


class Web:
    def __init__(self, settings: Settings, store: Store, videos: Videos, send_task: Any) -> None:
        self.settings = settings
        self.store = store
        self.videos = videos
        self.send_task = send_task
        self.secret = settings.secret()

    async def enqueue(self, name: str, *args: Any) -> None:
        await run_in_threadpool(self.send_task, name, args=args)

    async def create_chain(self, request: Request) -> Response:
        body = await read_capped(request, MAX_REQUEST_BYTES)
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return error(400, "the body is not valid JSON")
        if not isinstance(data, dict):
            return error(422, "the body must be a JSON object", details=[])
        try:
            req = ChainRequest.model_validate(data)
        except ValidationError as exc:
            return error(422, "invalid chain request", details=problems(exc))
        chain = new_chain(secrets.token_hex(8), req.spec(), time.time())
        key = request.headers.get("idempotency-key")
        if key is not None:
            if not 1 <= len(key) <= 200:
                return error(422, "Idempotency-Key must be 1 to 200 characters")
            digest = hashlib.sha256(key.encode()).hexdigest()
            fingerprint = hashlib.sha256(body).hexdigest()[:32]
            owner, seen = await run_in_threadpool(
                self.store.claim_key, digest, chain.id, fingerprint, IDEMPOTENCY_TTL
            )
            if owner != chain.id:
                if seen != fingerprint:
                    return error(422, "this Idempotency-Key was used with a different request")
                return await self._existing(owner)
        await run_in_threadpool(self.store.create, chain)
        try:
            await self.enqueue(SUBMIT_TASK, chain.id, 0)
        except OperationalError as exc:
            # Stored is enough: the sweep submits a pending step after SUBMIT_LEASE_SECONDS.
            log.warning(
                "chain %s stored; enqueue failed (%s); the sweep will submit it", chain.id, exc
            )
        log.info("chain %s created: %s", chain.id, req.model_dump(exclude_none=True))
        return JSONResponse(chain.view(), status_code=202)

    async def _existing(self, chain_id: str) -> Response:
        """The chain an earlier request with the same Idempotency-Key created."""
        for _ in range(50):  # that request may still be storing it
            try:
                chain = await run_in_threadpool(self.store.get, chain_id)
            except UnknownChain:
                await asyncio.sleep(0.02)
                continue
            return JSONResponse(chain.view(), status_code=200)
        return error(409, "a request with this Idempotency-Key is still being processed")

    async def get_chain(self, request: Request) -> Response:
        try:
            chain = await run_in_threadpool(self.store.get, request.path_params["chain_id"])
        except UnknownChain:
            return error(404, "no chain with this id")
        return JSONResponse(chain.view())

    async def list_chains(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
            raw_before = request.query_params.get("before")
            before = float(raw_before) if raw_before is not None else None
        except ValueError:
            return error(422, "limit must be an integer and before a number (a created_at)")
        if not 1 <= limit <= 100:
            return error(422, "limit must be between 1 and 100")
        chains = await run_in_threadpool(lambda: self.store.recent(limit=limit, before=before))
        more = len(chains) == limit
        return JSONResponse(
            {
                "chains": [c.view() for c in chains],
                "next_before": chains[-1].created_at if chains and more else None,
            }
        )

    async def healthz(self, request: Request) -> Response:
        ok = await run_in_threadpool(self.store.ping)
        return JSONResponse({"redis": ok}, status_code=200 if ok else 503)

    async def callback(self, request: Request) -> Response:
        chain_id = request.path_params["chain_id"]
        index = request.path_params["index"]
        if not tokens.verify(self.secret, chain_id, index, request.path_params["token"]):
            return error(403, "invalid callback token")
        body = await read_capped(request, MAX_CALLBACK_BYTES)
        try:
            task = parse_task(json.loads(body))
        except (ValueError, KlingError) as exc:
            return error(400, f"not a Kling task object: {exc}")
        # A callback is only a hint: the worker confirms it with a query before acting.
        await self.enqueue(REFRESH_TASK, chain_id, index)
        log.debug("callback %s/%s: task %s %s", chain_id, index, task.task_id, task.status)
        return JSONResponse({"ok": True})

    # -- archiving any task of the account ---------------------------------------------------
    async def archive_callback(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in KINDS or not tokens.verify_archive(
            self.secret, kind, request.path_params["token"]
        ):
            return error(403, "invalid callback token")
        body = await read_capped(request, MAX_CALLBACK_BYTES)
        try:
            task = parse_task(json.loads(body))
        except (ValueError, KlingError) as exc:
            return error(400, f"not a Kling task object: {exc}")
        if task.status.terminal:  # earlier statuses carry no video; the final one will come
            await self.enqueue(ARCHIVE_TASK_TASK, kind, task.task_id, "callback")
        log.info("archive callback: %s task %s %s", kind, task.task_id, task.status)
        return JSONResponse({"ok": True})

    async def request_archive(self, request: Request) -> Response:
        body = await read_capped(request, MAX_REQUEST_BYTES)
        try:
            req = ArchiveRequest.model_validate_json(body or b"null")
        except ValidationError as exc:
            return error(422, "invalid archive request", details=problems(exc))
        for task in req.tasks:
            await self.enqueue(ARCHIVE_TASK_TASK, task.kind, task.task_id, "request")
        return JSONResponse({"queued": [t.model_dump() for t in req.tasks]}, status_code=202)

    def _paging(self, request: Request) -> tuple[VideoState | None, int, float | None]:
        q = request.query_params
        try:
            state = VideoState(q["state"]) if "state" in q else None
            limit = int(q.get("limit", "50"))
            before = float(q["before"]) if "before" in q else None
        except ValueError as exc:
            raise HTTPException(
                422, "state must be pending, archived or lost; limit an integer; before a number"
            ) from exc
        if not 1 <= limit <= 500:
            raise HTTPException(422, "limit must be between 1 and 500")
        return state, limit, before

    async def list_archive(self, request: Request) -> Response:
        state, limit, before = self._paging(request)
        found = await run_in_threadpool(
            lambda: self.videos.recent(state=state, limit=limit, before=before)
        )
        now, warn = time.time(), self.settings.archive_warn_seconds
        return JSONResponse(
            {
                "videos": [v.view(now, warn) for v in found],
                "next_before": found[-1].known_at if len(found) == limit else None,
                "counts": await run_in_threadpool(self.videos.counts),
            }
        )

    async def export_archive(self, request: Request) -> Response:
        state, _, _ = self._paging(request)
        videos, warn = self.videos, self.settings.archive_warn_seconds

        def lines() -> Iterator[str]:
            before = None
            while True:
                page = videos.recent(state=state, limit=500, before=before)
                now = time.time()
                for record in page:
                    yield json.dumps(record.view(now, warn)) + "\n"
                if len(page) < 500:
                    return
                before = page[-1].known_at

        return StreamingResponse(iterate_in_threadpool(lines()), media_type="application/x-ndjson")

    async def callback_urls(self, request: Request) -> Response:
        base = self.settings.public_base()
        return JSONResponse(
            {kind: tokens.archive_callback_url(base, self.secret, kind) for kind in KINDS}
        )

    async def metrics(self, request: Request) -> Response:
        counts = await run_in_threadpool(self.videos.counts)
        pending = await run_in_threadpool(lambda: self.videos.by_deadline(1000))
        now, warn = time.time(), self.settings.archive_warn_seconds
        risky = sum(1 for r in pending if at_risk(r, now, warn))
        lines = ["# TYPE kc_videos gauge"]
        lines += [f'kc_videos{{state="{state}"}} {n}' for state, n in counts.items()]
        lines += ["# TYPE kc_videos_at_risk gauge", f"kc_videos_at_risk {risky}"]
        return PlainTextResponse("\n".join(lines) + "\n")


class RequireToken:
    """Bearer-token check for the API (``API_TOKEN``); callbacks and health stay open.

    Callback routes carry their own per-URL tokens, and health checks come from load balancers.
    """

    OPEN = ("/callbacks/", "/healthz")

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"].startswith(self.OPEN):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        reply = error(401, "missing or wrong API token (Authorization: Bearer $API_TOKEN)")
        await reply(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail)


async def _redis_down(request: Request, exc: Exception) -> Response:
    log.error("Redis unavailable during %s %s: %s", request.method, request.url.path, exc)
    return error(503, "the state store (Redis) is unavailable; try again shortly")


def create_app(settings: Settings | None = None, send_task: Any = None) -> Starlette:
    settings = settings or get_settings()
    timing = Timing(
        poll_after=settings.poll_after_seconds,
        submit_lease=settings.submit_lease_seconds,
        archive_lease=settings.archive_lease_seconds,
    )
    store = Store(
        redis.Redis.from_url(settings.redis_url), prefix=settings.key_prefix, timing=timing
    )
    if send_task is None:
        from worker.celery import app as celery_app

        send_task = celery_app.send_task
    web = Web(settings, store, Videos(store.redis, prefix=settings.key_prefix), send_task)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        store.redis.close()

    return Starlette(
        routes=[
            Route("/chains", web.create_chain, methods=["POST"]),
            Route("/chains", web.list_chains, methods=["GET"]),
            Route("/chains/{chain_id}", web.get_chain, methods=["GET"]),
            Route("/healthz", web.healthz, methods=["GET"]),
            Route("/callbacks/{chain_id}/{index:int}/{token}", web.callback, methods=["POST"]),
            Route("/callbacks/archive/{kind}/{token}", web.archive_callback, methods=["POST"]),
            Route("/archive", web.request_archive, methods=["POST"]),
            Route("/archive", web.list_archive, methods=["GET"]),
            Route("/archive.jsonl", web.export_archive, methods=["GET"]),
            Route("/archive/callback-urls", web.callback_urls, methods=["GET"]),
            Route("/metrics", web.metrics, methods=["GET"]),
        ],
        middleware=[Middleware(RequireToken, token=reveal(settings.api_token))],
        exception_handlers={
            HTTPException: _http_error,
            redis.RedisError: _redis_down,
            OperationalError: _redis_down,  # Celery could not publish: the broker is down
        },
        lifespan=lifespan,
    )
