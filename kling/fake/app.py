"""The Starlette shell of the fake gateway: routes, timers and callbacks around the engine.

Kling API paths are served bare and behind a ``/kling`` gateway prefix. ``/_fake/*`` is the
admin API (seeding, clock, knobs, counters) and ``/files/*`` serves the videos; neither
needs auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from kling.fake.auth import Credentials, authorize
from kling.fake.callbacks import CallbackSender
from kling.fake.config import FakeConfig
from kling.fake.downloads import LostReplyResponse, VideoFileResponse
from kling.fake.engine import Engine, EngineSettings
from kling.fake.errors import INVALID_METHOD, KlingError, bad_parameter, not_found
from kling.fake.faults import FaultsError
from kling.fake.mp4 import MAX_SECONDS as MAX_MP4_SECONDS
from kling.fake.mp4 import Mp4Files
from kling.fake.params import KINDS
from kling.fake.tasks import Video, envelope, file_url, millis

log = logging.getLogger("kling.fake")

API_PREFIXES = ("", "/kling")


class Gateway:
    """One fake provider: the engine, its callbacks and the timers that move its tasks."""

    def __init__(self, config: FakeConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        settings = EngineSettings(
            delay=config.delay,
            expire_after=config.expire_after,
            bytes_per_second=config.random_bytes_per_second(),
            public_url=config.public_url,
        )
        self.video_format = config.content_format()
        self.mp4: Mp4Files | None = Mp4Files() if self.video_format == "mp4" else None
        # --random-seed: the durations' draws and the drops' apart, each restarted by a reset
        seed = config.random_seed
        self._draws = [] if seed is None else [random.Random(seed), random.Random(seed + 1)]
        rng, drops = self._draws or (None, None)
        self.engine = Engine(settings, clock=clock, faults=config.initial_faults(), rng=rng)
        self.credentials = Credentials(config.api_key, config.access_key, config.secret_key)
        self.callbacks = CallbackSender(
            self.engine, webhook_secret=config.webhook_secret, rng=drops
        )
        self.seeded: list[Video] = [self.engine.seed_video(d) for d in config.seed_videos]
        self._timers: set[asyncio.Task[None]] = set()

    # -- plumbing ------------------------------------------------------------------------

    def sync(self) -> None:
        """Apply the status changes that are due and send their callbacks."""
        self.callbacks.dispatch(self.engine.tick())

    def _start_timer(self, task_id: str) -> None:
        timer = asyncio.get_running_loop().create_task(self._drive(task_id))
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def _drive(self, task_id: str) -> None:
        try:
            while (due := self.engine.next_due(task_id)) is not None:
                wait = due - self.engine.now()
                if wait > 0:
                    await asyncio.sleep(wait)
                else:
                    self.sync()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("timer of task %s failed", task_id)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        for timer in list(self._timers):
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        await self.callbacks.aclose()

    def _authorize(self, request: Request) -> None:
        authorize(request.headers.get("authorization"), self.credentials, now=time.time())

    # -- Kling API -----------------------------------------------------------------------

    async def create_task(self, request: Request) -> Response:
        self.sync()
        self._authorize(request)
        kind = _kind(request)
        try:
            body: object = await request.json()
        except ValueError:
            body = None  # refused by the engine as 400/1200, after any injected failure
        base = request_base(request)
        task = self.engine.create(kind, body, origin=base)
        reply = envelope(self.engine.render(task, base))
        self._start_timer(task.task_id)
        lost = self.engine.take_dropped_reply()
        if lost is not None and lost.mode == "reset":
            log.info("losing the reply of create %s (connection reset)", task.task_id)
            return LostReplyResponse(reply)
        if lost is not None and lost.mode == "bad_gateway":
            log.info("losing the reply of create %s (a relay's 502)", task.task_id)
            return HTMLResponse("<html><body>502 Bad Gateway</body></html>", status_code=502)
        if lost is not None:
            log.info("losing the reply of create %s (hang %.1f s)", task.task_id, lost.hang_seconds)
            await asyncio.sleep(lost.hang_seconds)
        return JSONResponse(reply)

    async def get_task(self, request: Request) -> Response:
        self.sync()
        self._authorize(request)
        task = self.engine.find_task(_kind(request), request.path_params["task_id"])
        return JSONResponse(envelope(self.engine.render(task, request_base(request))))

    async def list_tasks(self, request: Request) -> Response:
        self.sync()
        self._authorize(request)
        try:
            page_num = int(request.query_params.get("pageNum", "1"))
            page_size = int(request.query_params.get("pageSize", "30"))
        except ValueError:
            raise bad_parameter("pageNum and pageSize must be whole numbers") from None
        tasks = self.engine.list_tasks(_kind(request), page_num, page_size)
        base = request_base(request)
        return JSONResponse(envelope([self.engine.render(task, base) for task in tasks]))

    # -- files ---------------------------------------------------------------------------

    async def video_file(self, request: Request) -> Response:
        self.sync()
        name: str = request.path_params["name"]
        if not name.endswith(".mp4"):
            raise not_found(f"file {name} not found")
        video, size = self.engine.video_for_download(name.removesuffix(".mp4"))
        redirect = self.engine.take_download_redirect()
        if redirect is not None:
            location = redirect.location or str(request.url)
            log.info("redirecting the download of %s to %s", video.video_id, location)
            return Response(status_code=redirect.status, headers={"location": location})
        content = None
        if self.mp4 is not None:  # encoded off the event loop, once per file (then cached)
            if video.duration > MAX_MP4_SECONDS:
                raise KlingError(
                    500,
                    5000,
                    f"video {video.video_id} lasts {video.duration:g} s: MP4 files are made for "
                    f"videos of at most {MAX_MP4_SECONDS:g} s (or run with --video-format random)",
                )
            content = await asyncio.to_thread(self.mp4.get, video.video_id, video.duration)
            size = len(content)
        return VideoFileResponse(
            self.engine, video, size, request.headers.get("range"), content=content
        )

    # -- admin ---------------------------------------------------------------------------

    async def seed_video(self, request: Request) -> Response:
        body = await _admin_json(request)
        duration = body.get("duration")
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            raise bad_parameter("duration (seconds) is required and must be a number")
        ids = {name: body.get(name) for name in ("video_id", "task_id")}
        if any(value is not None and not isinstance(value, str) for value in ids.values()):
            raise bad_parameter("video_id and task_id must be strings")
        video = self.engine.seed_video(
            float(duration),
            video_id=cast("str | None", ids["video_id"]),
            task_id=cast("str | None", ids["task_id"]),
        )
        return JSONResponse(self.video_summary(video, request_base(request)), status_code=201)

    def video_summary(self, video: Video, request_base: str) -> dict[str, Any]:
        return {
            "video_id": video.video_id,
            "task_id": video.task_id,
            "url": file_url(self.engine.base_url(request_base), video.video_id),
            "duration": video.duration,
            "created_at": millis(video.created_at),
        }

    async def clock(self, request: Request) -> Response:
        if request.method == "POST":
            body = await _admin_json(request)
            seconds = body.get("advance_seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                raise bad_parameter("advance_seconds must be a number >= 0")
            self.engine.advance_clock(float(seconds))
        self.sync()
        return JSONResponse(
            {"now": millis(self.engine.now()), "offset_seconds": self.engine.clock_offset}
        )

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.engine.set_faults(await _admin_json(request))
            except FaultsError as exc:
                raise bad_parameter(str(exc)) from None
        return JSONResponse(self.engine.faults.to_dict())

    def reset(self) -> None:
        """Back to the start-up state: start-up knobs, seeded videos and, with
        ``--random-seed``, the draws from their start; nothing else."""
        self.engine.reset()
        for offset, draws in enumerate(self._draws):  # none without a seed
            draws.seed((self.config.random_seed or 0) + offset)
        self.callbacks.forget_held()
        self.seeded = [
            self.engine.seed_video(v.duration, video_id=v.video_id, task_id=v.task_id)
            for v in self.seeded
        ]

    async def reset_endpoint(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True, "faults": self.engine.faults.to_dict()})

    async def stats(self, request: Request) -> Response:
        self.sync()
        return JSONResponse(self.engine.stats_view())

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def routes(self) -> list[Route]:
        routes = [
            Route("/_fake/health", self.health, methods=["GET"]),
            Route("/_fake/videos", self.seed_video, methods=["POST"]),
            Route("/_fake/clock", self.clock, methods=["GET", "POST"]),
            Route("/_fake/faults", self.faults, methods=["GET", "POST"]),
            Route("/_fake/reset", self.reset_endpoint, methods=["POST"]),
            Route("/_fake/stats", self.stats, methods=["GET"]),
            Route("/files/{name}", self.video_file, methods=["GET", "HEAD"]),
        ]
        for prefix in API_PREFIXES:
            routes += [
                Route(prefix + "/v1/videos/{kind}", self.create_task, methods=["POST"]),
                Route(prefix + "/v1/videos/{kind}", self.list_tasks, methods=["GET"]),
                Route(prefix + "/v1/videos/{kind}/{task_id}", self.get_task, methods=["GET"]),
            ]
        return routes


def request_base(request: Request) -> str:
    """The request's own base URL: scheme, host and port, without any path prefix."""
    return f"{request.url.scheme}://{request.url.netloc}"


def _kind(request: Request) -> str:
    kind: str = request.path_params["kind"]
    if kind not in KINDS:
        raise KlingError(404, INVALID_METHOD, f"unknown endpoint /v1/videos/{kind}")
    return kind


async def _admin_json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise bad_parameter("body must be JSON") from None
    if not isinstance(body, dict):
        raise bad_parameter("body must be a JSON object")
    return body


def _kling_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KlingError)
    return JSONResponse(envelope(None, code=exc.code, message=exc.message), exc.http_status)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail or "invalid method or path"
    return JSONResponse(envelope(None, code=INVALID_METHOD, message=message), exc.status_code)


def create_app(
    config: FakeConfig | None = None, *, clock: Callable[[], float] = time.time
) -> Starlette:
    """The fake gateway as an ASGI app; its ``Gateway`` is at ``app.state.gateway``."""
    gateway = Gateway(config or FakeConfig(), clock=clock)
    app = Starlette(
        routes=gateway.routes(),
        exception_handlers={KlingError: _kling_error, HTTPException: _http_error},
        lifespan=gateway.lifespan,
    )
    app.state.gateway = gateway
    return app


def gateway_of(app: Starlette) -> Gateway:
    """The ``Gateway`` behind an app made by ``create_app``."""
    return cast(Gateway, app.state.gateway)
