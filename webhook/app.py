"""The web process: the chain API and the provider's callback route.

Run it as ``uvicorn webhook.app:create_app --factory``. Callbacks are answered fast; the work
(confirming by query, recording, the next step) happens in the Celery worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from redis import asyncio as aioredis
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from kling.errors import KlingError
from kling.models import Task, TaskKind, TaskStatus, parse_task
from webhook import metrics, openapi
from webhook.api import ArchiveRequest, BudgetRequest, ChainRequest, problems
from webhook.coalesce import Coalescer
from webhook.dashboard import Dashboard
from webhook.signed import SignedCallbacks
from worker import logs, wiring
from worker.core import polling, tokens
from worker.core.chain import (
    EARLY_STATUSES,
    Cancel,
    ChainStatus,
    Resume,
    SubmitStep,
    new_chain,
    step_name,
)
from worker.core.metrics import CallbackOutcome
from worker.core.videos import SAFE_ID, VideoRecord, VideoState
from worker.publish import Publisher
from worker.queues import Queues
from worker.settings import ConfigError, Settings, get_settings
from worker.state import text
from worker.state.budget import Budget
from worker.state.chains import Page, Store, UnknownChain
from worker.state.deliveries import Deliveries
from worker.state.metrics import Metrics, Snapshot
from worker.state.polling import CallbackSeen
from worker.state.spend import Spend
from worker.state.videos import Videos
from worker.tasknames import ANNOUNCE_END, IMPORT_TASK, REFRESH_STEP, SUBMIT_STEP

KINDS = frozenset(TaskKind)

log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 64 * 1024
# How a refused callback counts in ``kc_callbacks_total``; any other refusal is malformed.
CALLBACK_REFUSALS = {
    401: CallbackOutcome.FORBIDDEN,  # a bad signature (KLING_WEBHOOK_SECRET)
    403: CallbackOutcome.FORBIDDEN,
    413: CallbackOutcome.TOO_LARGE,
}
IDEMPOTENCY_TTL = 24 * 3600
MAX_REQUEST_BYTES = 256 * 1024
ARCHIVE_DEDUPE_SECONDS = 24 * 3600
# An early callback naming a task its step has not recorded yet is looked at again this much
# later (a create reply is usually home by then) before a query of it is queued.
EARLY_LOOK_AGAIN_SECONDS = 0.3
MAX_SPEND_DAYS = 400  # as long as a day's figures are kept


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def task_of(body: bytes) -> Task:
    """The task object (enveloped or bare) in a provider callback's body; 400 when it is
    not one."""
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


class CallbackAccessLines(logging.Filter):
    """uvicorn's access log, for callbacks: a callback answered 2xx has no access line, as
    the web's own ``callback.received`` or ``callback.archive`` line already tells of it,
    and under a storm of callbacks the second line is a fair share of the web's CPU. The
    others keep theirs, with the token masked (uvicorn prints whole paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = args[2]
            if path.startswith("/callbacks/") and len(args) == 5:
                status = args[4]
                if isinstance(status, int) and 200 <= status < 300:
                    return False
            record.args = (*args[:2], redact_path(path), *args[3:])
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
        self.publisher: Publisher | None = None  # None: every task through send_task
        self.coalescer: Coalescer | None = None  # on the publisher's client, when there is one
        self.secret = settings.secret()
        self.spend = Spend(store.redis, store.keys)
        self.signed = SignedCallbacks(
            settings.kling_webhook_key(), Deliveries(store.redis, store.keys)
        )
        self.budget = Budget(store.redis, store.keys, settings.daily_unit_budget)
        self.figures = Metrics(store.redis, store.keys)
        self.registry = metrics.registry(self._read_figures)
        self.seen = CallbackSeen(store.redis, store.keys)

    async def _saw_callback(self) -> None:
        """A provider callback passed its checks: callbacks reach us (one SET every few s)."""
        if self.seen.due():
            await run_in_threadpool(self.seen.saw, time.time())

    def callback_health(self) -> polling.Health:
        s = self.settings
        return polling.callback_health(
            s.public_base(), self.seen.last(), now=time.time(), silence=s.callback_silence_seconds
        )

    async def enqueue(self, name: str, *args: Any) -> None:
        if self.publisher is None:
            await run_in_threadpool(self.send_task, name, args=args)
            return
        try:
            await self.publisher.publish(name, args)
        except redis.RedisError as exc:  # the broker is Redis: handled as Celery's would be
            raise OperationalError(str(exc)) from exc

    async def _send_task(self, name: str, args: Sequence[Any]) -> None:
        await run_in_threadpool(self.send_task, name, args=tuple(args))

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
        if req.webhook_url is not None:
            # Checked here (a DNS lookup) and again by the worker when it delivers.
            problem = await run_in_threadpool(self.settings.webhook_url_problem, req.webhook_url)
            if problem is not None:
                detail = {"field": "webhook_url", "message": problem}
                return error(422, "invalid chain request", details=[detail])
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
        # Not the webhook URL (its query may hold a token) nor the caller's metadata.
        shown = req.model_dump(exclude_none=True, exclude={"webhook_url", "metadata"})
        log.info(
            "chain %s created: %s",
            chain.id,
            shown,
            extra={"chain_id": chain.id, "event": "chain.created"},
        )
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
        what = type(event).__name__.lower()
        log.info(
            "chain %s: %s accepted",
            chain_id,
            what,
            extra={"chain_id": chain_id, "event": f"chain.{what}"},
        )
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
        raw_status = request.query_params.get("status")
        try:
            status = None if raw_status is None else ChainStatus(raw_status)
        except ValueError:
            allowed = ", ".join(ChainStatus)
            detail = {"field": "status", "message": f"must be one of {allowed}"}
            return error(422, f"status must be one of {allowed}", details=[detail])

        def page() -> tuple[Page, dict[str, VideoRecord]]:
            found = self.store.page(limit=limit, before=before, status=status)
            return found, self.videos.of(found.chains)  # one MGET for the page's videos

        found, records = await run_in_threadpool(page)
        return JSONResponse(
            {"chains": [c.view(records) for c in found.chains], "next_before": found.next_before}
        )

    async def healthz(self, request: Request) -> Response:
        def check() -> dict[str, Any]:
            ok = self.store.ping()
            body: dict[str, Any] = {"redis": ok}
            if ok:
                # Redis answered the ping a moment ago: should it fail now, stay 200, say less
                with contextlib.suppress(redis.RedisError):
                    body["callbacks"] = self.callback_health().as_dict()
            return body

        body = await run_in_threadpool(check)
        return JSONResponse(body, status_code=200 if body["redis"] else 503)

    async def callback(self, request: Request) -> Response:
        chain_id = request.path_params["chain_id"]
        index = request.path_params["index"]
        if not tokens.verify(self.secret, chain_id, index, request.path_params["token"]):
            await self._count_callback(CallbackOutcome.FORBIDDEN)
            return error(403, "invalid callback token")
        task, webhook_id = await self._callback_task(request)
        await self._saw_callback()
        succeeded = (chain_id, index) if task.status is TaskStatus.SUCCEED else None
        # A callback is only a hint: the worker confirms it with a query before acting. The
        # task it names is a candidate for a step whose create reply has not come home yet.
        # The claimed status rides along: the worker skips the query for one before the end
        # once it knows the step's task (only a terminal status leads to action).
        candidate = task.task_id if SAFE_ID.match(task.task_id) else None
        refresh = (chain_id, index, candidate, None, task.status.value)
        fast = webhook_id is None  # unsigned: nothing to deduplicate before queueing
        known: bool | None = None  # None: not looked up, and not counted yet
        later: BackgroundTask | None = None
        duplicate = False  # a repeat delivery of a signed message already taken
        if fast and candidate is not None and task.status.value in EARLY_STATUSES:
            known = await self._look_up(chain_id, index, candidate, count=True)
        if known:
            pass  # the step recorded this task already: an early status asks nothing more
        elif known is False:
            # A task's first callback often beats its create reply to the worker: look once
            # more a moment later, after answering (a provider may hold the task's next
            # callback until this one is answered), before queueing a query for nothing.
            later = BackgroundTask(self._look_again, refresh)
        elif not (fast and await self._count_and_enqueue(succeeded, REFRESH_STEP, refresh, known)):
            if known is None:
                await self._count_callback(CallbackOutcome.ACCEPTED, succeeded)
            duplicate = not await self.signed.first(webhook_id)
            if not duplicate:
                async with self.signed.taken(webhook_id):
                    await self.enqueue(REFRESH_STEP, *refresh)
        if duplicate:
            aside = " (a repeat delivery: nothing queued)"
        else:
            aside = " (the step has it: nothing queued)" if known else ""
        log.info(
            "callback %s/%s: task %s %s%s",
            chain_id,
            index,
            task.task_id,
            task.status,
            aside,
            extra={
                "chain_id": chain_id,
                "step": index,
                "task_id": task.task_id,
                "event": "callback.received",
            },
        )
        if duplicate:
            return JSONResponse({"ok": True, "duplicate": True})
        return JSONResponse({"ok": True}, background=later)

    async def _look_again(self, refresh: tuple[Any, ...]) -> None:
        """``EARLY_LOOK_AGAIN_SECONDS`` after an early callback named a task its step had
        not recorded: queue the query of it unless the step has recorded it meanwhile. Runs
        after the reply; should the process stop first, the step's create reply, its next
        callbacks and its schedule still name the task."""
        chain_id, index, candidate = refresh[0], refresh[1], refresh[2]
        try:
            await asyncio.sleep(EARLY_LOOK_AGAIN_SECONDS)
            if await self._look_up(chain_id, index, candidate, count=False):
                return
            if not await self._count_and_enqueue(None, REFRESH_STEP, refresh, False):
                await self.enqueue(REFRESH_STEP, *refresh)
        except (redis.RedisError, OperationalError) as exc:
            log.warning(
                "callback %s/%s: task %s not queued after a second look: %s",
                chain_id,
                index,
                candidate,
                exc,
                extra={"chain_id": chain_id, "step": index, "task_id": candidate},
            )

    # -- archiving any task of the account ---------------------------------------------------
    async def archive_callback(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in KINDS or not tokens.verify_archive(
            self.secret, kind, request.path_params["token"]
        ):
            await self._count_callback(CallbackOutcome.FORBIDDEN)
            return error(403, "invalid callback token")
        task, webhook_id = await self._callback_task(request)
        await self._saw_callback()
        if not SAFE_ID.match(task.task_id):
            await self._count_callback(CallbackOutcome.MALFORMED)
            return error(400, "task_id must be 1-128 characters of letters, digits, _ . -")
        await self._count_callback(CallbackOutcome.ACCEPTED)
        duplicate = not await self.signed.first(webhook_id)
        queued = False
        if task.status.terminal and not duplicate:  # earlier statuses carry no video
            async with self.signed.taken(webhook_id):
                queued = await self._queue_archive(kind, task.task_id, "callback")
        log.info(
            "archive callback: %s task %s %s%s",
            kind,
            task.task_id,
            task.status,
            " (a repeat delivery: nothing queued)" if duplicate else "",
            extra={"task_id": task.task_id, "event": "callback.archive"},
        )
        if duplicate:
            return JSONResponse({"ok": True, "queued": False, "duplicate": True})
        return JSONResponse({"ok": True, "queued": queued})

    async def _callback_task(self, request: Request) -> tuple[Task, str | None]:
        """``_signed_task``, with a refusal counted in ``kc_callbacks_total``."""
        try:
            return await self._signed_task(request)
        except HTTPException as exc:
            outcome = CALLBACK_REFUSALS.get(exc.status_code, CallbackOutcome.MALFORMED)
            await self._count_callback(outcome)
            raise

    async def _look_up(
        self, chain_id: str, index: int, task_id: str, *, count: bool
    ) -> bool | None:
        """Whether step ``index`` recorded ``task_id`` as its own (``Store.claim_task``), and
        with ``count`` the accepted callback's count, in one round trip to the broker shared
        with the callbacks arriving meanwhile (``webhook.coalesce``). None when that is not
        possible here (nothing counted)."""
        if self.publisher is None or self.coalescer is None:
            return None

        def queue(pipe: Any) -> None:
            pipe.get(self.store.keys.task_owner(task_id))
            if count:
                self.figures.queue_callback(pipe, CallbackOutcome.ACCEPTED)

        try:
            owner, *_ = await self.coalescer.run(queue)
        except redis.RedisError as exc:  # as a failed publish: the provider will retry
            raise OperationalError(str(exc)) from exc
        return owner is not None and text(owner) == step_name(chain_id, index)

    async def _count_and_enqueue(
        self,
        succeeded: tuple[str, int] | None,
        name: str,
        args: tuple[Any, ...],
        counted: bool | None = None,
    ) -> bool:
        """An accepted callback's count (unless ``counted`` already) and its task, in one
        round trip to the broker (no thread hop), shared with the callbacks arriving
        meanwhile (``webhook.coalesce``); False when that is not possible here (then count
        and enqueue apart)."""
        publisher = self.publisher
        if publisher is None or self.coalescer is None or publisher.template(name) is None:
            return False

        def queue(pipe: Any) -> None:
            publisher.queue_on(pipe, name, args)
            if counted is None:
                self.figures.queue_callback(pipe, CallbackOutcome.ACCEPTED, succeeded)

        try:
            await self.coalescer.run(queue)
        except redis.RedisError as exc:  # as a failed publish: the provider will retry
            raise OperationalError(str(exc)) from exc
        return True

    async def _count_callback(
        self, outcome: CallbackOutcome, succeeded: tuple[str, int] | None = None
    ) -> None:
        await run_in_threadpool(lambda: self.figures.callback(outcome, succeeded=succeeded))

    async def _signed_task(self, request: Request) -> tuple[Task, str | None]:
        """A provider callback's task and, with KLING_WEBHOOK_SECRET set, its ``webhook-id``.

        The signature is checked (401) before the body is parsed and before anything is
        asked of Redis; the URL token was checked before.
        """
        body = await read_capped(request, MAX_CALLBACK_BYTES)
        where = redact_path(request.scope["path"])
        webhook_id = self.signed.verify(body, request.headers, where=where)
        return task_of(body), webhook_id

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
            states = ", ".join(s.value for s in VideoState)
            raise HTTPException(
                422, f"state must be one of {states}; limit an integer; before a number"
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
        UTC days, and in all; and the daily budget (null when none is set)."""
        raw = request.query_params.get("days", "7")
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_SPEND_DAYS:
            return error(422, f"days must be a whole number from 1 to {MAX_SPEND_DAYS}")
        days, total, budget = await run_in_threadpool(
            lambda: (self.spend.days(int(raw)), self.spend.total(), self.budget.status(time.time()))
        )
        return JSONResponse(
            {
                "today": days[0].as_dict(chains=100),
                "days": [{k: v for k, v in d.as_dict().items() if k != "chains"} for d in days],
                "total": total,
                "budget": budget,
            }
        )

    async def set_budget(self, request: Request) -> Response:
        """Set the account's daily units for every process at once; steps held back by the
        budget go on at their next look (``BUDGET_POLL_SECONDS``), without a restart."""
        body = await read_capped(request, MAX_REQUEST_BYTES)
        try:
            req = BudgetRequest.model_validate_json(body or b"null")
        except ValidationError as exc:
            return error(422, "invalid budget", details=problems(exc))
        await run_in_threadpool(self.budget.set_limit, req.daily_units)
        log.info("daily unit budget set to %s", req.daily_units)
        return JSONResponse({"budget": await run_in_threadpool(self.budget.status, time.time())})

    def _read_figures(self) -> tuple[Snapshot, str, str]:
        """What one scrape shows: the figures of every process, and the units spent."""
        snap = self.figures.read(
            queues=Queues.named(self.settings.celery_queue).all(),
            warn_window=self.settings.archive_warn_seconds,
        )
        return snap, self.spend.total(), self.spend.days(1)[0].units

    async def metrics(self, request: Request) -> Response:
        """Prometheus text: the service's families (``webhook.metrics``), read from Redis."""
        body = await run_in_threadpool(metrics.render, self.registry)
        local = "\n".join(self.signed.metric_lines()) + "\n"  # this process's own counts
        return Response(body + local.encode(), media_type=metrics.CONTENT_TYPE_LATEST)

    async def account(self, request: Request) -> Response:
        """The account panel: provider slots, today's units, refused creates."""

        def read() -> dict[str, Any]:
            in_use = int(self.store.redis.hlen(self.store.keys.slot_holders))
            refused = self.figures.refused()
            return {
                "slots": {"in_use": in_use, "limit": self.settings.kling_concurrency},
                "units_today": self.spend.days(1)[0].units,
                "budget": self.budget.status(time.time()),
                "refused_creates": {"last_hour": refused.last_hour, "total": refused.total},
            }

        return JSONResponse(await run_in_threadpool(read))


class RequireToken:
    """Bearer-token check for the API (``API_TOKEN``); only callbacks and health stay open,
    and the dashboard's page, its assets and signed file links.

    Callback routes carry their own per-URL tokens, and health checks come from load
    balancers. The dashboard's page holds no data (its script asks the API, with the token);
    a file link carries its own short-lived signature (``webhook.dashboard``). A body sent to
    the API must be JSON (415 otherwise): no web page can then start work with a plain form
    or ``text/plain`` post, even with ``API_AUTH=off``.
    """

    OPEN = ("/callbacks/", "/healthz", "/static/", "/files/", "/openapi.json")
    PAGES = frozenset({"/"})
    WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    @classmethod
    def is_open(cls, path: str) -> bool:
        """Whether ``path`` is let through without the token (the OpenAPI document says so)."""
        return path.startswith(cls.OPEN) or path in cls.PAGES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or self.is_open(path):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), self.expected
        ):
            reply = error(401, "missing or wrong API token (Authorization: Bearer $API_TOKEN)")
            await reply(scope, receive, send)
            return
        if (
            scope["method"] in self.WITH_BODY
            and not _is_json(headers.get(b"content-type"))
            and _routed(scope)
        ):
            reply = error(415, "send the request body as JSON (Content-Type: application/json)")
            await reply(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _routed(scope: Scope) -> bool:
    """Whether a route takes this method at this path. For any other the router answers 404
    or 405 (no work can start), whatever the body; without the app at hand, assume one does."""
    app = scope.get("app")
    if not isinstance(app, Starlette):
        return True
    return any(route.matches(scope)[0] is Match.FULL for route in app.routes)


def _allowed(request: Request) -> str:
    """The methods of every route at the request's path, for a 405's ``Allow``: Starlette's
    own names only the first route's when a path has one route per method."""
    methods = {
        method
        for route in request.app.routes
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
        for method in route.methods or ()
    }
    return ", ".join(sorted(methods))


def _is_json(content_type: bytes | None) -> bool:
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    return media == b"application/json"


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reply = error(exc.status_code, exc.detail)
    reply.headers.update(exc.headers or {})
    if exc.status_code == 405:
        reply.headers["Allow"] = _allowed(request)
    return reply


async def _redis_down(request: Request, exc: Exception) -> Response:
    path = redact_path(request.url.path)
    log.error("Redis unavailable during %s %s: %s", request.method, path, exc)
    return error(503, "the state store (Redis) is unavailable; try again shortly")


def _say_how_callbacks_arrive(web: Web) -> None:
    """At start-up: warn when provider callbacks cannot reach (or have not reached) us."""
    try:
        health = web.callback_health()
    except redis.RedisError:
        s = web.settings
        now = time.time()
        health = polling.callback_health(
            s.public_base(), None, now=now, silence=s.callback_silence_seconds
        )
    if not health.reachable:
        log.warning("callbacks: %s", health.reason)


def create_app(settings: Settings | None = None, send_task: Any = None) -> Starlette:
    """The web app; a configuration that is not safe to serve ends the process (exit 2)."""
    try:
        settings = settings or get_settings()
        token = settings.api_bearer()
        settings.secret()
        settings.kling_webhook_key()
    except ConfigError as exc:
        problem = f"kling-chain web: {exc}"
        if settings is not None and settings.log_format == "json":
            problem = logs.json_line("web", problem, level="CRITICAL", logger=__name__)
        print(problem, file=sys.stderr)
        raise SystemExit(2) from None
    if settings.log_format == "json":
        logs.use_json("web", loggers=("uvicorn", "uvicorn.error", "uvicorn.access"))
    else:
        logs.use_text()
    if token is None:
        log.warning(
            "API_AUTH=off: the API (which starts paid work) answers anyone who can reach "
            "this port; keep it on a private network"
        )
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, CallbackAccessLines) for f in access.filters):
        access.addFilter(CallbackAccessLines())
    built = wiring.state(settings)
    broker = None
    if send_task is None:
        from worker.celery import app as celery_app

        send_task = celery_app.send_task
        broker = aioredis.Redis.from_url(settings.redis_url)
    web = Web(settings, built.chains, built.videos, send_task)
    if broker is not None:  # one LPUSH per task, from a template Celery made (worker.publish)
        web.publisher = Publisher(celery_app, broker, web._send_task)
        web.coalescer = Coalescer(broker)
    _say_how_callbacks_arrive(web)
    board = Dashboard(settings, built.videos, web.secret)
    document = openapi.document(bearer=token is not None, is_open=RequireToken.is_open)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        built.close()
        if broker is not None:
            await broker.aclose()

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
            Route("/account", web.account, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/spend", web.get_spend, methods=["GET"]),
            Route("/spend/budget", web.set_budget, methods=["PUT"]),
            Route("/", board.page, methods=["GET"]),
            Route("/static/{name}", board.asset, methods=["GET"]),
            Route("/archive/{video_id}/url", board.video_url, methods=["GET"]),
            Route("/files/{video_id}", board.video_file, methods=["GET"]),
        ],
        middleware=[Middleware(RequireToken, token=token)],
        exception_handlers={
            HTTPException: _http_error,
            redis.RedisError: _redis_down,
            OperationalError: _redis_down,  # Celery could not publish: the broker is down
        },
        lifespan=lifespan,
    )
