"""Checking the body of a create request, one function per task kind."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from kling.fake.errors import INVALID_REQUEST, KlingError, bad_parameter
from kling.models import TaskKind

TEXT2VIDEO = TaskKind.TEXT2VIDEO.value
IMAGE2VIDEO = TaskKind.IMAGE2VIDEO.value
VIDEO_EXTEND = TaskKind.VIDEO_EXTEND.value
KINDS = tuple(kind.value for kind in TaskKind)

MAX_PROMPT_CHARS = 2500
DURATIONS = {"5": 5.0, "10": 10.0}
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
MODES = ("std", "pro")


@dataclass(frozen=True)
class CreateParams:
    """A create request that passed the parameter checks."""

    kind: str
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    callback_url: str | None = None
    external_task_id: str | None = None
    video_id: str | None = None  # video-extend: the video to extend
    task_id: str | None = None  # video-extend: the task that made video_id (some gateways)
    duration: float | None = None  # text2video / image2video: 5 or 10 seconds
    options: dict[str, str] = field(default_factory=dict)  # model_name, mode, aspect_ratio...


def parse_create(kind: str, body: object) -> CreateParams:
    """Check a create request's JSON body; raise ``KlingError`` (400) when it is not valid."""
    if kind not in KINDS:
        raise KlingError(404, 1202, f"unknown task kind {kind!r}")
    if not isinstance(body, Mapping):
        raise KlingError(400, INVALID_REQUEST, "request body must be a JSON object")
    prompt = _prompt(body, "prompt", required=kind == TEXT2VIDEO)
    negative_prompt = _prompt(body, "negative_prompt", required=False)
    cfg_scale = _cfg_scale(body)
    callback_url = _callback_url(body)
    external_task_id = _optional_text(body, "external_task_id") or None
    if kind == VIDEO_EXTEND:
        video_id = _optional_text(body, "video_id")
        if not video_id:
            raise bad_parameter("video_id is required")
        return CreateParams(
            kind=kind,
            prompt=prompt,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            callback_url=callback_url,
            external_task_id=external_task_id,
            video_id=video_id,
            task_id=_optional_text(body, "task_id") or None,
        )
    options: dict[str, str] = {
        "model_name": _optional_text(body, "model_name") or "kling-v1",
        "mode": _choice(body, "mode", MODES),
    }
    if kind == TEXT2VIDEO:
        options["aspect_ratio"] = _choice(body, "aspect_ratio", ASPECT_RATIOS)
    else:
        image = _optional_text(body, "image")
        if not image:
            raise bad_parameter("image is required")
        options["image"] = image
        if image_tail := _optional_text(body, "image_tail"):
            options["image_tail"] = image_tail
    return CreateParams(
        kind=kind,
        prompt=prompt,
        negative_prompt=negative_prompt,
        cfg_scale=cfg_scale,
        callback_url=callback_url,
        external_task_id=external_task_id,
        duration=_duration(body),
        options=options,
    )


def _optional_text(body: Mapping[str, object], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_parameter(f"{name} must be a string")
    return value


def _prompt(body: Mapping[str, object], name: str, *, required: bool) -> str | None:
    value = _optional_text(body, name)
    if required and not (value and value.strip()):
        raise bad_parameter(f"{name} is required")
    if value is not None and len(value) > MAX_PROMPT_CHARS:
        raise bad_parameter(f"{name} must be at most {MAX_PROMPT_CHARS} characters")
    return value


def _cfg_scale(body: Mapping[str, object]) -> float | None:
    value = body.get("cfg_scale")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_parameter("cfg_scale must be a number")
    if not 0.0 <= value <= 1.0:
        raise bad_parameter("cfg_scale must be between 0 and 1")
    return float(value)


def _callback_url(body: Mapping[str, object]) -> str | None:
    value = _optional_text(body, "callback_url")
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise bad_parameter("callback_url must be an http(s) URL")
    return value


def _choice(body: Mapping[str, object], name: str, allowed: tuple[str, ...]) -> str:
    value = body.get(name)
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise bad_parameter(f"{name} must be one of {', '.join(allowed)}")
    return str(value)


def _duration(body: Mapping[str, object]) -> float:
    value = body.get("duration", "5")
    key = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
    if key not in DURATIONS:
        raise bad_parameter('duration must be "5" or "10"')
    return DURATIONS[key]
