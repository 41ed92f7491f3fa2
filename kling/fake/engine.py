"""The pure core of the fake gateway: tasks, videos, rules, knobs and counters.

No I/O and no real waiting: time comes from an injected clock (plus an offset that
``advance_clock`` moves), and ``tick`` applies every status change that is due, returning
them so the shell can send the callbacks.
"""

from __future__ import annotations

import dataclasses
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kling.fake.content import DEFAULT_BYTES_PER_SECOND, video_size
from kling.fake.errors import KlingError, bad_parameter, not_found
from kling.fake.faults import CutDownloads, DropCreates, Faults, RedirectDownloads
from kling.fake.params import KINDS, TEXT2VIDEO, VIDEO_EXTEND, CreateParams, parse_create
from kling.fake.tasks import (
    FAILED,
    MAX_VIDEO_SECONDS,
    PROCESSING,
    STATUSES,
    SUBMITTED,
    SUCCEED,
    Task,
    Video,
    duration_text,
    extension_seconds,
    render_task,
)
from kling.models import VIDEO_LIFETIME_SECONDS

MAX_PAGE_SIZE = 500
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def random_id(prefix: str) -> str:
    """A fresh opaque id of ``[A-Za-z0-9_-]``, e.g. ``task_Zk3...``."""
    return f"{prefix}_{secrets.token_urlsafe(12)}"


@dataclass(frozen=True)
class EngineSettings:
    delay: float = 3.0  # seconds from submitted to the end of a task
    expire_after: float = VIDEO_LIFETIME_SECONDS  # seconds a video lives
    bytes_per_second: int = DEFAULT_BYTES_PER_SECOND  # file size per second of video
    public_url: str | None = None  # base of file URLs; None: the request's own base URL


@dataclass(frozen=True)
class StatusChange:
    """A task's status changed: ``body`` is the bare task object at that moment."""

    task_id: str
    status: str
    callback_url: str | None
    body: dict[str, Any]


@dataclass
class Stats:
    creates_total: int = 0  # billed creates
    creates_by_parent: dict[str, int] = field(default_factory=dict)
    creates_by_kind: dict[str, int] = field(default_factory=dict)
    rejected_creates: int = 0
    concurrency_refusals: int = 0  # of which 1303 from ``account_concurrency``
    peak_in_flight: int = 0  # the most tasks submitted or processing at once
    queries: int = 0
    callbacks_sent: int = 0
    callbacks_dropped: int = 0
    callbacks_failed: int = 0
    callbacks_signed: int = 0  # sent with webhook-* headers (whatever the signature)
    callbacks_refused: int = 0  # answered with an HTTP error status
    downloads_started: int = 0
    download_bytes: int = 0
    downloads_redirected: int = 0


class Engine:
    """The fake provider's state and rules."""

    def __init__(
        self,
        settings: EngineSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[str], str] = random_id,
        faults: Faults | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or EngineSettings()
        self._rng = rng or random.Random()
        self._clock = clock
        self._new_id = new_id
        self._initial_faults = faults or Faults()
        self.reset()

    # -- state -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget tasks, videos and counters; knobs and clock go back to their start."""
        self.faults = self._initial_faults.merged({})  # a deep copy
        self.stats = Stats()
        self._offset = 0.0
        self._tasks: dict[str, Task] = {}
        self._videos: dict[str, Video] = {}
        self._by_external: dict[str, str] = {}
        self._pending: dict[str, Task] = {}

    def now(self) -> float:
        return self._clock() + self._offset

    @property
    def clock_offset(self) -> float:
        """Seconds the fake clock has been moved ahead of the injected clock."""
        return self._offset

    def advance_clock(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds

    def set_faults(self, patch: object) -> None:
        """Merge a JSON patch into the knobs (raises ``FaultsError``, changing nothing)."""
        self.faults = self.faults.merged(patch)

    # -- videos ------------------------------------------------------------------------

    def seed_video(
        self, duration: float, *, video_id: str | None = None, task_id: str | None = None
    ) -> Video:
        """Make a finished text2video task with a video of ``duration`` seconds (not billed)."""
        if not duration > 0:
            raise bad_parameter("duration must be a number > 0")
        wanted = (("video_id", video_id, self._videos), ("task_id", task_id, self._tasks))
        for name, value, known in wanted:
            if value is not None and not _ID.match(value):
                raise bad_parameter(f"{name} must be 1-128 characters of [A-Za-z0-9_-]")
            if value is not None and value in known:
                raise KlingError(409, 1201, f"{name} {value} already exists")
        now = self.now()
        task = Task(
            task_id=task_id or self._fresh_id("task", self._tasks),
            kind=TEXT2VIDEO,
            created_at=now,
            updated_at=now,
            delay=0.0,
            output_duration=round(duration, 1),
            status=SUCCEED,
        )
        video = Video(
            video_id=video_id or self._fresh_id("vid", self._videos),
            duration=task.output_duration,
            created_at=now,
            task_id=task.task_id,
        )
        task.video = video
        self._tasks[task.task_id] = task
        self._videos[video.video_id] = video
        return video

    def is_expired(self, video: Video) -> bool:
        return self.now() >= video.created_at + self.settings.expire_after

    def video_for_download(self, video_id: str) -> tuple[Video, int]:
        """The video and its size in bytes; 404 when unknown or expired."""
        video = self._videos.get(video_id)
        if video is None or self.is_expired(video):
            raise not_found(f"video {video_id} not found")
        return video, video_size(video.duration, self.settings.bytes_per_second)

    def base_url(self, request_base: str) -> str:
        return (self.settings.public_url or request_base).rstrip("/")

    # -- tasks -------------------------------------------------------------------------

    def create(self, kind: str, body: object, *, origin: str = "") -> Task:
        """Accept (and bill) a create request or raise ``KlingError``."""
        try:
            failure = self.faults.fail_next_creates
            if failure.count > 0:
                failure.count -= 1
                raise KlingError(failure.http_status, failure.code, failure.message)
            limit = self.faults.account_concurrency
            if limit is not None and self.in_flight() >= limit:
                self.stats.concurrency_refusals += 1
                raise KlingError(429, 1303, "parallel task over resource pack limit")
            task = self._admit(parse_create(kind, body), origin)
        except KlingError:
            self.stats.rejected_creates += 1
            raise
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.in_flight())
        self.stats.creates_total += 1
        _bump(self.stats.creates_by_kind, kind)
        if task.parent is not None:
            _bump(self.stats.creates_by_parent, task.parent.video_id)
        return task

    def in_flight(self) -> int:
        """The account's tasks submitted or processing now: each holds a concurrency slot."""
        now = self.now()
        return sum(1 for task in self._pending.values() if now < task.finished_at)

    def _admit(self, params: CreateParams, origin: str) -> Task:
        external = params.external_task_id if self.faults.support_external_task_id else None
        if external is not None and external in self._by_external:
            raise bad_parameter(f"external_task_id already exists: {external}")
        task_id = self._fresh_id("task", self._tasks)
        parent = None
        if params.kind == VIDEO_EXTEND:
            assert params.video_id is not None
            parent = self._extendable(params, extension_seconds(task_id))
            output = round(parent.duration + extension_seconds(task_id), 1)
        else:
            assert params.duration is not None
            output = params.duration
        now = self.now()
        task = Task(
            task_id=task_id,
            kind=params.kind,
            created_at=now,
            updated_at=now,
            delay=self._task_delay(),
            output_duration=output,
            origin=origin,
            callback_url=params.callback_url,
            external_task_id=external,
            parent=parent,
        )
        doom = self.faults.fail_next_tasks
        if doom.count > 0:
            doom.count -= 1
            task.fail_message = doom.message
        failing = task.fail_message is not None
        task.units = self.faults.failed_unit_cost if failing else self.faults.unit_cost
        self._tasks[task_id] = task
        self._pending[task_id] = task
        if external is not None:
            self._by_external[external] = task_id
        return task

    def _task_delay(self) -> float:
        """Seconds a task created now takes: ``task_seconds`` drawn uniformly, else ``delay``."""
        spread = self.faults.task_seconds
        if spread is None:
            return self.settings.delay
        low, high = spread
        return self._rng.uniform(low, high)

    def _extendable(self, params: CreateParams, extension: float) -> Video:
        video_id = params.video_id or ""
        video = self._videos.get(video_id)
        if video is None:
            raise not_found(f"video {video_id} not found")
        if self.is_expired(video):
            days = self.settings.expire_after / 86400
            raise bad_parameter(
                f"video {video_id} has expired: generated videos are deleted {days:g} days "
                "after generation and can no longer be extended"
            )
        if self.faults.require_parent_task_id:
            if params.task_id is None:
                raise bad_parameter("task_id is required: the id of the task that made video_id")
            if params.task_id != video.task_id:
                raise bad_parameter(f"task_id {params.task_id} did not generate video {video_id}")
        if video.duration > MAX_VIDEO_SECONDS:
            raise bad_parameter(
                f"video {video_id} lasts {duration_text(video.duration)} s: only videos of at "
                "most 3 minutes (180 s) can be extended"
            )
        if round(video.duration + extension, 1) > MAX_VIDEO_SECONDS:
            raise bad_parameter(
                f"extending video {video_id} ({duration_text(video.duration)} s) by "
                f"{duration_text(extension)} s would exceed 3 minutes (180 s)"
            )
        return video

    def find_task(self, kind: str, key: str) -> Task:
        """A task by its id or, when supported, its external_task_id (counted as a query)."""
        self.stats.queries += 1
        task = self._tasks.get(key)
        if task is None and self.faults.support_external_task_id and key in self._by_external:
            task = self._tasks.get(self._by_external[key])
        if task is None or task.kind != kind:
            raise not_found(f"task {key} not found")
        return task

    def list_tasks(self, kind: str, page_num: int, page_size: int) -> list[Task]:
        """A page of tasks of one kind, newest first (counted as a query)."""
        self.stats.queries += 1
        if not self.faults.support_task_list:
            raise not_found("no such route")  # a relay that does not offer the list
        if page_num < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise bad_parameter(f"pageNum must be >= 1 and pageSize 1..{MAX_PAGE_SIZE}")
        if kind not in KINDS:
            raise not_found(f"unknown task kind {kind}")
        tasks = [task for task in reversed(self._tasks.values()) if task.kind == kind]
        return tasks[(page_num - 1) * page_size : page_num * page_size]

    def tick(self) -> list[StatusChange]:
        """Apply every status change due by now, in order."""
        now = self.now()
        changes: list[StatusChange] = []
        for task in list(self._pending.values()):
            if task.status == SUBMITTED and now >= task.processing_at:
                task.status, task.updated_at = PROCESSING, task.processing_at
                changes.append(self._change(task))
            if task.status == PROCESSING and now >= task.finished_at:
                self._finish(task)
                del self._pending[task.task_id]
                changes.append(self._change(task))
        return changes

    def next_due(self, task_id: str) -> float | None:
        """When the task's next status change is due (engine clock), None when it is over."""
        task = self._pending.get(task_id)
        if task is None:
            return None
        return task.processing_at if task.status == SUBMITTED else task.finished_at

    def _finish(self, task: Task) -> None:
        task.updated_at = task.finished_at
        if task.fail_message is not None:
            task.status, task.status_msg = FAILED, task.fail_message
            return
        video = Video(
            video_id=self._fresh_id("vid", self._videos),
            duration=task.output_duration,
            created_at=task.finished_at,
            task_id=task.task_id,
        )
        self._videos[video.video_id] = video
        task.video = video
        task.status = SUCCEED

    def _change(self, task: Task) -> StatusChange:
        body = render_task(task, self.base_url(task.origin), durations=self.faults.result_durations)
        return StatusChange(task.task_id, task.status, task.callback_url, body)

    def render(self, task: Task, request_base: str) -> dict[str, Any]:
        return render_task(
            task, self.base_url(request_base), durations=self.faults.result_durations
        )

    # -- faults the shell carries out ------------------------------------------------------

    def take_dropped_reply(self) -> DropCreates | None:
        """Whether to lose the reply of the create just made (and how)."""
        knob = self.faults.drop_next_creates
        if knob.count <= 0:
            return None
        knob.count -= 1
        return dataclasses.replace(knob)

    def take_download_cut(self) -> CutDownloads | None:
        knob = self.faults.cut_next_downloads
        if knob.count <= 0:
            return None
        knob.count -= 1
        return dataclasses.replace(knob)

    def take_download_redirect(self) -> RedirectDownloads | None:
        """Whether to answer this file request with a redirect (and where to)."""
        knob = self.faults.redirect_next_downloads
        if knob.count <= 0:
            return None
        knob.count -= 1
        self.stats.downloads_redirected += 1
        return dataclasses.replace(knob)

    def stats_view(self) -> dict[str, Any]:
        view = dataclasses.asdict(self.stats)
        view["tasks"] = dict.fromkeys(STATUSES, 0)
        for task in self._tasks.values():
            view["tasks"][task.status] += 1
        view["videos"] = len(self._videos)
        view["in_flight"] = self.in_flight()
        return view

    def _fresh_id(self, prefix: str, taken: dict[str, Any]) -> str:
        while True:
            candidate = self._new_id(prefix)
            if candidate not in taken:
                return candidate


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1
