"""Tasks and videos of the fake gateway, and how they are shown in replies and callbacks."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

SUBMITTED = "submitted"
PROCESSING = "processing"
SUCCEED = "succeed"
FAILED = "failed"
STATUSES = (SUBMITTED, PROCESSING, SUCCEED, FAILED)
TERMINAL = frozenset({SUCCEED, FAILED})

MAX_VIDEO_SECONDS = 180.0
PROCESSING_FRACTION = 0.3


def extension_seconds(task_id: str) -> float:
    """The seconds an extension task adds: 4.0 to 5.0 in steps of 0.1, fixed by its id."""
    digest = hashlib.sha256(task_id.encode()).digest()
    return round(4.0 + (int.from_bytes(digest[:8], "big") % 11) / 10, 1)


def duration_text(seconds: float) -> str:
    """A duration the way the provider writes it: a string of seconds, e.g. ``"9.3"``."""
    return f"{seconds:.1f}"


def millis(seconds: float) -> int:
    return round(seconds * 1000)


def file_url(base_url: str, video_id: str) -> str:
    return f"{base_url.rstrip('/')}/files/{video_id}.mp4"


@dataclass
class Video:
    """A generated video: downloadable and extendable until it expires."""

    video_id: str
    duration: float
    created_at: float  # seconds on the engine's clock
    task_id: str  # the task that produced it

    def as_dict(self, base_url: str) -> dict[str, str]:
        return {
            "id": self.video_id,
            "url": file_url(base_url, self.video_id),
            "duration": duration_text(self.duration),
        }


@dataclass
class Task:
    """A generation task: text2video, image2video or video-extend."""

    task_id: str
    kind: str
    created_at: float
    updated_at: float
    delay: float  # seconds from submitted to the end
    output_duration: float  # seconds of the video it makes (the whole video for extensions)
    origin: str = ""  # base URL of the create request, for links in callbacks
    status: str = SUBMITTED
    status_msg: str = ""
    callback_url: str | None = None
    external_task_id: str | None = None
    parent: Video | None = None  # the video an extension extends
    fail_message: str | None = None  # set when the task is bound to fail
    video: Video | None = None  # the result, once succeeded
    units: str | None = None  # final_unit_deduction once finished; None: not reported

    @property
    def processing_at(self) -> float:
        return self.created_at + PROCESSING_FRACTION * self.delay

    @property
    def finished_at(self) -> float:
        return self.created_at + self.delay

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


def render_task(task: Task, base_url: str, *, durations: str = "whole") -> dict[str, Any]:
    """The task object of the provider's replies (``data``) and callbacks.

    ``durations`` is the ``result_durations`` knob: how the result video's length is shown.
    """
    info: dict[str, Any] = {}
    if task.parent is not None:
        info["parent_video"] = task.parent.as_dict(base_url)
    if task.external_task_id is not None:
        info["external_task_id"] = task.external_task_id
    videos = [_result(task, task.video, base_url, durations)] if task.video is not None else []
    body: dict[str, Any] = {
        "task_id": task.task_id,
        "task_status": task.status,
        "task_status_msg": task.status_msg,
        "task_info": info,
        "task_result": {"videos": videos},
        "created_at": millis(task.created_at),
        "updated_at": millis(task.updated_at),
    }
    if task.is_terminal and task.units is not None:
        body["final_unit_deduction"] = task.units
    return body


def _result(task: Task, video: Video, base_url: str, durations: str) -> dict[str, str]:
    shown = video.as_dict(base_url)
    if durations == "missing":
        del shown["duration"]
    elif durations == "segment" and task.parent is not None:
        shown["duration"] = duration_text(video.duration - task.parent.duration)
    return shown


def envelope(data: Any, *, code: int = 0, message: str = "SUCCEED") -> dict[str, Any]:
    """The provider's reply envelope around ``data``."""
    return {"code": code, "message": message, "request_id": uuid.uuid4().hex, "data": data}
