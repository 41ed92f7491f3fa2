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
import math
import re
import secrets
import sys
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
from kling.models import Task, TaskKind, parse_task
from webhook.api import ArchiveRequest, ChainRequest, problems
from worker import wiring
from worker.core import tokens
from worker.core.chain import Cancel, Chain, Resume, SubmitStep, new_chain
from worker.core.videos import SAFE_ID, VideoRecord, VideoState, at_risk
from worker.settings import ConfigError, Settings, get_settings
from worker.state.chains import Store, UnknownChain
from worker.state.spend import Spend
from worker.state.videos import Videos
from worker.tasknames import ANNOUNCE_END, IMPORT_TASK, REFRESH_STEP, SUBMIT_STEP

KINDS = frozenset(TaskKind)

log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 64 * 1024
IDEMPOTENCY_TTL = 24 * 3600
MAX_REQUEST_BYTES = 256 * 1024
ARCHIVE_DEDUPE_SECONDS = 24 * 3600
MAX_SPEND_DAYS = 400  # as long as a day's figures are kept


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def read_task(request: Request) -> Task:
    """A provider callback's task object (enveloped or bare); 400 or 413 when it is not one."""
    body = await read_capped(request, MAX_CALLBACK_BYTES)
    try:
        return parse_task(parse_json(body))
    except (ValueError, KlingError) as exc:
        raise HTTPException(400, f"not a Kling task object: {exc}") from None


def parse_json(body: bytes) -> Any:
    """The body as JSON; ValueError for what is not JSON, nested past Python's stack included."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def finite(raw: str | None) -> float | None:
    """A query parameter that must be a finite number (a created_at), or None when absent."""
    if raw is None:
        return None
    value = float(raw)  # ValueError for words
    if not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite number")
    return value


_CALLBACK_TOKEN = re.compile(r"^(/callbacks/(?:archive/[^/]+|[^/]+/[^/]+)/)[^/?]+")


def redact_path(path: str) -> str:
    """A request path safe to log: the secret token of a callback URL replaced."""
    return _CALLBACK_TOKEN.sub(r"\1<token>", path)


class RedactCallbackTokens(logging.Filter):
    """Keep callback tokens out of uvicorn's access log, which prints whole paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_path(args[2]), *args[3:])
        return True


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
        self.spend = Spend(store.redis, store.keys)

    async def enqueue(self, name: str, *args: Any) -> None:
        await run_in_threadpool(self.send_task, name, args=args)

    async def create_chain(self, request: Request) -> Response:
        body = await read_capped(request, MAX_REQUEST_BYTES)
        try:
            data = parse_json(body or b"null")
        except ValueError as exc:
            return error(400, f"the body is not valid JSON: {exc}")
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
            await self.enqueue(SUBMIT_STEP, chain.id, 0)
        except OperationalError as exc:
            # Stored is enough: the sweep submits a pending step after SUBMIT_LEASE_SECONDS.
            log.warning(
                "chain %s stored; enqueue failed (%s); the sweep will submit it", chain.id, exc
            )
        log.info("chain %s created: %s", chain.id, req.model_dump(exclude_none=True))
        return JSONResponse(chain.view({}), status_code=202)  # no videos yet

    async def _existing(self, chain_id: str) -> Response:
        """The chain an earlier request with the same Idempotency-Key created."""
        for _ in range(50):  # that request may still be storing it
            try:
                view = await run_in_threadpool(self._view, chain_id)
            except UnknownChain:
                await asyncio.sleep(0.02)
                continue
            return JSONResponse(view, status_code=200)
        return error(409, "a request with this Idempotency-Key is still being processed")

    def _view(self, chain_id: str) -> dict[str, Any]:
        """The chain with its archive entries, read from its videos' records."""
        chain = self.store.get(chain_id)
        return chain.view(self.videos.of([chain]))

    async def get_chain(self, request: Request) -> Response:
        try:
            view = await run_in_threadpool(self._view, request.path_params["chain_id"])
        except UnknownChain:
            return error(404, "no chain with this id")
        return JSONResponse(view)

    async def cancel_chain(self, request: Request) -> Response:
        """Stop a chain's spending; a step already paid for is followed to its end."""
        return await self._command(request, Cancel())

    async def resume_chain(self, request: Request) -> Response:
        """Take a failed or cancelled chain on with the work that remains."""
        return await self._command(request, Resume())

    async def _command(self, request: Request, event: Cancel | Resume) -> Response:
        chain_id = request.path_params["chain_id"]
        try:
            out = await run_in_threadpool(self.store.transition, chain_id, event)
        except UnknownChain:
            return error(404, "no chain with this id")
        if out.refused is not None:
            return error(409, out.refused, chain_status=out.chain.status.value)
        for action in out.actions:
            if isinstance(action, SubmitStep):
                try:
                    await self.enqueue(SUBMIT_STEP, chain_id, action.index)
                except OperationalError as exc:  # stored is enough: the sweep submits it
                    log.warning("chain %s: enqueue failed (%s); the sweep will", chain_id, exc)
        if out.ended:  # cancelled with nothing in flight: the worker announces it
            await self.enqueue(ANNOUNCE_END, chain_id)
        log.info("chain %s: %s accepted", chain_id, type(event).__name__.lower())
        view = await run_in_threadpool(lambda: out.chain.view(self.videos.of([out.chain])))
        return JSONResponse(view, status_code=202)

    async def list_chains(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
            before = finite(request.query_params.get("before"))
        except ValueError:
            return error(422, "limit must be an integer and before a number (a created_at)")
        if not 1 <= limit <= 100:
            return error(422, "limit must be between 1 and 100")

        def page() -> tuple[list[Chain], dict[str, VideoRecord]]:
            chains = self.store.recent(limit=limit, before=before)
            return chains, self.videos.of(chains)  # one MGET for the page's videos

        chains, records = await run_in_threadpool(page)
        more = len(chains) == limit
        return JSONResponse(
            {
                "chains": [c.view(records) for c in chains],
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
        task = await read_task(request)
        # A callback is only a hint: the worker confirms it with a query before acting. The
        # task it names is a candidate for a step whose create reply has not come home yet.
        candidate = task.task_id if SAFE_ID.match(task.task_id) else None
        await self.enqueue(REFRESH_STEP, chain_id, index, candidate)
        log.debug("callback %s/%s: task %s %s", chain_id, index, task.task_id, task.status)
        return JSONResponse({"ok": True})

    # -- archiving any task of the account ---------------------------------------------------
    async def archive_callback(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in KINDS or not tokens.verify_archive(
            self.secret, kind, request.path_params["token"]
        ):
            return error(403, "invalid callback token")
        task = await read_task(request)
        if not SAFE_ID.match(task.task_id):
            return error(400, "task_id must be 1-128 characters of letters, digits, _ . -")
        queued = False
        if task.status.terminal:  # earlier statuses carry no video; the final one will come
            queued = await self._queue_archive(kind, task.task_id, "callback")
        log.info("archive callback: %s task %s %s", kind, task.task_id, task.status)
        return JSONResponse({"ok": True, "queued": queued})

    async def _queue_archive(self, kind: str, task_id: str, origin: str) -> bool:
        """Queue one query of a task for archiving, unless it is queued or done already.

        The account-wide callback URL is a credential that may leak: however often a task
        is named, it costs one provider query a day at most.
        """
        fresh = await run_in_threadpool(
            lambda: self.videos.ask(kind, task_id, origin, ttl=ARCHIVE_DEDUPE_SECONDS)
        )
        if fresh:
            await self.enqueue(IMPORT_TASK, kind, task_id, origin)
        return fresh

    async def request_archive(self, request: Request) -> Response:
        body = await read_capped(request, MAX_REQUEST_BYTES)
        try:
            req = ArchiveRequest.model_validate_json(body or b"null")
        except ValidationError as exc:
            return error(422, "invalid archive request", details=problems(exc))
        queued: list[dict[str, str]] = []
        known: list[dict[str, str]] = []
        for task in req.tasks:
            fresh = await self._queue_archive(task.kind, task.task_id, "request")
            (queued if fresh else known).append(task.model_dump(mode="json"))
        return JSONResponse({"queued": queued, "already_queued": known}, status_code=202)

    def _paging(self, request: Request) -> tuple[VideoState | None, int, float | None]:
        q = request.query_params
        try:
            state = VideoState(q["state"]) if "state" in q else None
            limit = int(q.get("limit", "50"))
            before = finite(q.get("before"))
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
            {kind: tokens.archive_callback_url(base, self.secret, kind) for kind in TaskKind}
        )

    async def get_spend(self, request: Request) -> Response:
        """Units the provider reported: today's (per chain, most first), the last ``days``
        UTC days, and in all. There is no daily budget yet: ``budget`` is null."""
        raw = request.query_params.get("days", "7")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_SPEND_DAYS:
            return error(422, f"days must be a whole number from 1 to {MAX_SPEND_DAYS}")
        days, total = await run_in_threadpool(
            lambda: (self.spend.days(int(raw)), self.spend.total())
        )
        return JSONResponse(
            {
                "today": days[0].as_dict(chains=100),
                "days": [{k: v for k, v in d.as_dict().items() if k != "chains"} for d in days],
                "total": total,
                "budget": None,
            }
        )

    async def metrics(self, request: Request) -> Response:
        counts = await run_in_threadpool(self.videos.counts)
        pending = await run_in_threadpool(lambda: self.videos.by_deadline(1000))
        now, warn = time.time(), self.settings.archive_warn_seconds
        risky = sum(1 for r in pending if at_risk(r, now, warn))
        lines = ["# TYPE kc_videos gauge"]
        lines += [f'kc_videos{{state="{state}"}} {n}' for state, n in counts.items()]
        lines += ["# TYPE kc_videos_at_risk gauge", f"kc_videos_at_risk {risky}"]
        total, today = await run_in_threadpool(lambda: (self.spend.total(), self.spend.days(1)))
        lines += ["# TYPE kc_units_spent_total counter", f"kc_units_spent_total {total}"]
        lines += ["# TYPE kc_units_spent_today gauge", f"kc_units_spent_today {today[0].units}"]
        return PlainTextResponse("\n".join(lines) + "\n")


class RequireToken:
    """Bearer-token check for the API (``API_TOKEN``); only callbacks and health stay open.

    Callback routes carry their own per-URL tokens, and health checks come from load
    balancers. A body sent to the API must be JSON (415 otherwise): no web page can then
    start work with a plain form or ``text/plain`` post, even with ``API_AUTH=off``.
    """

    OPEN = ("/callbacks/", "/healthz")
    WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.OPEN):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), self.expected
        ):
            reply = error(401, "missing or wrong API token (Authorization: Bearer $API_TOKEN)")
            await reply(scope, receive, send)
            return
        if scope["method"] in self.WITH_BODY and not _is_json(headers.get(b"content-type")):
            reply = error(415, "send the request body as JSON (Content-Type: application/json)")
            await reply(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_json(content_type: bytes | None) -> bool:
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    return media == b"application/json"


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail)


async def _redis_down(request: Request, exc: Exception) -> Response:
    path = redact_path(request.url.path)
    log.error("Redis unavailable during %s %s: %s", request.method, path, exc)
    return error(503, "the state store (Redis) is unavailable; try again shortly")


def create_app(settings: Settings | None = None, send_task: Any = None) -> Starlette:
    """The web app; a configuration that is not safe to serve ends the process (exit 2)."""
    try:
        settings = settings or get_settings()
        token = settings.api_bearer()
        settings.secret()
    except ConfigError as exc:
        print(f"kling-chain web: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if token is None:
        log.warning(
            "API_AUTH=off: the API (which starts paid work) answers anyone who can reach "
            "this port; keep it on a private network"
        )
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactCallbackTokens) for f in access.filters):
        access.addFilter(RedactCallbackTokens())
    built = wiring.state(settings)
    if send_task is None:
        from worker.celery import app as celery_app

        send_task = celery_app.send_task
    web = Web(settings, built.chains, built.videos, send_task)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        built.close()

    return Starlette(
        routes=[
            Route("/chains", web.create_chain, methods=["POST"]),
            Route("/chains", web.list_chains, methods=["GET"]),
            Route("/chains/{chain_id}", web.get_chain, methods=["GET"]),
            Route("/chains/{chain_id}/cancel", web.cancel_chain, methods=["POST"]),
            Route("/chains/{chain_id}/resume", web.resume_chain, methods=["POST"]),
            Route("/healthz", web.healthz, methods=["GET"]),
            Route("/callbacks/{chain_id}/{index:int}/{token}", web.callback, methods=["POST"]),
            Route("/callbacks/archive/{kind}/{token}", web.archive_callback, methods=["POST"]),
            Route("/archive", web.request_archive, methods=["POST"]),
            Route("/archive", web.list_archive, methods=["GET"]),
            Route("/archive.jsonl", web.export_archive, methods=["GET"]),
            Route("/archive/callback-urls", web.callback_urls, methods=["GET"]),
            Route("/metrics", web.metrics, methods=["GET"]),
            Route("/spend", web.get_spend, methods=["GET"]),
        ],
        middleware=[Middleware(RequireToken, token=token)],
        exception_handlers={
            HTTPException: _http_error,
            redis.RedisError: _redis_down,
            OperationalError: _redis_down,  # Celery could not publish: the broker is down
        },
        lifespan=lifespan,
    )
