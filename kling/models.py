"""Kling tasks and requests: plain data, reply parsing and request validation.

Everything here is pure: no network, no clock. ``parse_task`` reads both the query reply
(``{"code", "message", "request_id", "data": {...}}``) and the bare task object that the
official API POSTs to a ``callback_url``, in its legacy shape and in the newer one: where a
legacy body reports a finished task's cost as ``final_unit_deduction`` and
``final_balance_deduction``, the newer one sends a ``billing`` list instead (see `_billing`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from kling.errors import InvalidRequest, MalformedReply, provider_error

__all__ = [
    "MAX_PROMPT_CHARS",
    "VIDEO_LIFETIME_SECONDS",
    "BalanceDeduction",
    "ExtendRequest",
    "Task",
    "TaskKind",
    "TaskStatus",
    "Text2VideoRequest",
    "Video",
    "parse_task",
    "parse_task_list",
]

MAX_PROMPT_CHARS = 2500
VIDEO_LIFETIME_SECONDS = 30 * 24 * 3600.0
"""The provider deletes every generated video this long after it was made."""
TEXT2VIDEO_DURATIONS = (5, 10)


class TaskStatus(StrEnum):
    """A task's status as the provider reports it."""

    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEED = "succeed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        """True once the task has ended, well or badly."""
        return self in (TaskStatus.SUCCEED, TaskStatus.FAILED)

    @property
    def rank(self) -> int:
        """Progress order: a status only ever moves to an equal or higher rank.

        Callbacks arrive late and out of order; compare ranks to ignore a step backwards.
        """
        return _RANKS[self]


_RANKS = {
    TaskStatus.SUBMITTED: 0,
    TaskStatus.PROCESSING: 1,
    TaskStatus.SUCCEED: 2,
    TaskStatus.FAILED: 2,
}


class TaskKind(StrEnum):
    """A kind of task: the value is the action in ``/v1/{family}/{action}``.

    To add a kind, add a member; if it is not a video task (e.g. ``generations`` under
    ``images``), also list it in ``_FAMILIES``.
    """

    VIDEO_EXTEND = "video-extend"
    TEXT2VIDEO = "text2video"
    IMAGE2VIDEO = "image2video"

    @property
    def family(self) -> str:
        """``videos`` or ``images``: the path segment before the action."""
        return _FAMILIES.get(self, "videos")

    @property
    def path(self) -> str:
        """The path below ``/v1/``, e.g. ``videos/video-extend``."""
        return f"{self.family}/{self.value}"


_FAMILIES: dict[TaskKind, str] = {}
"""Kinds outside ``videos``, e.g. ``{TaskKind.IMAGE_GENERATIONS: "images"}``."""


@dataclass(frozen=True)
class Video:
    """A generated video. ``url`` expires with the video.

    ``duration`` is in seconds, or None when the reply gives none (some relays leave it out):
    callers decide what an unknown length means for them.
    """

    id: str
    url: str
    duration: float | None


@dataclass(frozen=True)
class BalanceDeduction:
    """``final_balance_deduction``: what a finished task cost an account that pays in money.

    Both parts as the provider sent them (``quota`` and ``list_price``), None when absent.
    """

    quota: Decimal | None = None
    list_price: Decimal | None = None


@dataclass(frozen=True)
class Task:
    """A provider task as read from a query reply, a create reply or a callback.

    ``videos`` of an extension hold the whole extended video (parent plus new part).
    Times are Unix milliseconds. ``units`` is ``final_unit_deduction`` (or, in a newer body,
    what its ``billing`` list took from resource packs), what the finished task cost in units;
    None when the provider does not report it (unknown, not zero).
    """

    task_id: str
    status: TaskStatus
    status_msg: str | None = None
    created_at_ms: int | None = None
    updated_at_ms: int | None = None
    videos: tuple[Video, ...] = ()
    parent_video: Video | None = None
    external_task_id: str | None = None
    units: Decimal | None = None
    balance_deduction: BalanceDeduction | None = None

    @property
    def video(self) -> Video | None:
        """The first result video, if any."""
        return self.videos[0] if self.videos else None


# --- parsing ---------------------------------------------------------------------------


def parse_task(body: Mapping[str, Any]) -> Task:
    """Read a task from an enveloped reply or a bare task object.

    Raises the mapped ``KlingError`` for an envelope with a non-zero ``code``, and
    ``MalformedReply`` when the task cannot be read.
    """
    if not isinstance(body, Mapping):
        raise MalformedReply(f"expected a JSON object, got {_type_name(body)}")
    if "data" in body or "code" in body:
        return _parse_task_object(_unwrap(body), "data")
    return _parse_task_object(body, "task")


def parse_task_list(body: Mapping[str, Any]) -> list[Task]:
    """Read a page of the list endpoint: an envelope whose ``data`` is a list of task objects.

    Raises the mapped ``KlingError`` for a non-zero ``code``, ``MalformedReply`` otherwise.
    """
    if not isinstance(body, Mapping):
        raise MalformedReply(f"expected a JSON object, got {_type_name(body)}")
    items = _unwrap(body, list_data=True)
    if not isinstance(items, list):
        raise MalformedReply(f"envelope data must be a list of tasks, got {_type_name(items)}")
    return [_parse_task_object(item, f"data[{i}]") for i, item in enumerate(items)]


def _unwrap(envelope: Mapping[str, Any], *, list_data: bool = False) -> Any:
    raw_request_id = envelope.get("request_id")
    request_id = None if raw_request_id is None else str(raw_request_id)
    try:
        code = envelope_code(envelope.get("code"))
    except MalformedReply as exc:
        raise MalformedReply(exc.message, request_id=request_id) from None
    if code:
        message = envelope.get("message")
        raise provider_error(code, None, message if isinstance(message, str) else "", request_id)
    data = envelope.get("data")
    if list_data:
        return data
    if not isinstance(data, Mapping):
        raise MalformedReply(
            f"envelope data must be an object, got {_type_name(data)}", request_id=request_id
        )
    return data


def envelope_code(raw: object) -> int | None:
    """The envelope's ``code`` as an int (some relays send it as a digit string).

    Raises ``MalformedReply`` when it is neither missing nor a whole number.
    """
    if raw is None:
        return None
    if _is_int(raw):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    raise MalformedReply(f"envelope code must be an integer, got {raw!r}")


def _parse_task_object(obj: Any, where: str) -> Task:
    if not isinstance(obj, Mapping):
        raise MalformedReply(f"{where} must be a task object, got {_type_name(obj)}")
    task_id = _id(obj, "task_id", where)
    if task_id is None:
        raise MalformedReply(f"{where}.task_id is missing")
    status_raw = obj.get("task_status")
    if not isinstance(status_raw, str):
        raise MalformedReply(f"{where}.task_status must be a string, got {_type_name(status_raw)}")
    try:
        status = TaskStatus(status_raw.strip().lower())
    except ValueError:
        raise MalformedReply(f"{where}.task_status {status_raw!r} is not a known status") from None

    info = _optional_mapping(obj, "task_info", where)
    result = _optional_mapping(obj, "task_result", where)

    parent_video = None
    raw_parent = info.get("parent_video")
    if raw_parent:  # absent, null or {} all mean "not reported"
        parent_video = _video(raw_parent, f"{where}.task_info.parent_video")

    raw_videos = result.get("videos")
    if raw_videos is None:
        raw_videos = []
    if not isinstance(raw_videos, list):
        raise MalformedReply(
            f"{where}.task_result.videos must be a list, got {_type_name(raw_videos)}"
        )
    videos = tuple(
        _video(item, f"{where}.task_result.videos[{i}]") for i, item in enumerate(raw_videos)
    )

    units = _amount(obj.get("final_unit_deduction"))
    balance = _balance(obj.get("final_balance_deduction"))
    if "final_unit_deduction" not in obj and "final_balance_deduction" not in obj:
        units, balance = _billing(obj.get("billing"))

    external_task_id = _optional_str(info, "external_task_id", f"{where}.task_info")
    if external_task_id is None:  # some gateways put it beside task_id
        external_task_id = _optional_str(obj, "external_task_id", where)

    return Task(
        task_id=task_id,
        status=status,
        status_msg=_optional_str(obj, "task_status_msg", where) or None,
        created_at_ms=_optional_ms(obj, "created_at", where),
        updated_at_ms=_optional_ms(obj, "updated_at", where),
        videos=videos,
        parent_video=parent_video,
        external_task_id=external_task_id or None,
        units=units,
        balance_deduction=balance,
    )


def _amount(raw: Any) -> Decimal | None:
    """A non-negative decimal amount from a string or a number, else None (unknown).

    Absent, blank and unreadable values all mean "not reported": a cost is never guessed nor
    read as zero, and a relay's odd cost field never stops a paid task from being recorded.
    """
    value: Decimal | None = None
    if isinstance(raw, str) and raw.strip():
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            return None
    elif _is_number(raw):
        value = Decimal(str(raw))
    if value is None or not value.is_finite() or value < 0:
        return None
    return value


def _balance(raw: Any) -> BalanceDeduction | None:
    """``final_balance_deduction`` (``{quota, list_price}``); None when absent or unreadable."""
    if not isinstance(raw, Mapping):
        return None
    found = BalanceDeduction(
        quota=_amount(raw.get("quota")), list_price=_amount(raw.get("list_price"))
    )
    return None if found == BalanceDeduction() else found


def _billing(raw: Any) -> tuple[Decimal | None, BalanceDeduction | None]:
    """The cost in a newer body's ``billing`` list: ``(units, balance_deduction)``.

    Each entry is ``{charge_type, amount, currency, package_type, list_price}``. One naming a
    ``package_type`` was paid from a resource pack: its ``amount`` is units. One without was
    paid from the account's money: ``amount`` and ``list_price`` are read as
    ``final_balance_deduction``'s ``quota`` and ``list_price``. Amounts of one kind are
    summed; a kind with an unreadable amount (or money in more than one currency) is unknown
    (None), as is a missing, empty or malformed list: a cost is never guessed.
    """
    if not isinstance(raw, list) or not raw:
        return None, None
    entries = [entry for entry in raw if isinstance(entry, Mapping)]
    if len(entries) != len(raw):
        return None, None
    packs: list[Mapping[str, Any]] = []
    money: list[Mapping[str, Any]] = []
    for entry in entries:
        pack = entry.get("package_type")
        (packs if isinstance(pack, str) and pack.strip() else money).append(entry)
    units = _sum(e.get("amount") for e in packs) if packs else None
    balance = None
    currencies = {str(e.get("currency") or "") for e in money}
    if money and len(currencies) == 1:
        quota = _sum(e.get("amount") for e in money)
        list_price = _sum(e.get("list_price") for e in money)
        found = BalanceDeduction(quota=quota, list_price=list_price)
        balance = None if found == BalanceDeduction() else found
    return units, balance


def _sum(raws: Iterable[Any]) -> Decimal | None:
    """The sum of amounts (see `_amount`), None when any one of them is unknown."""
    total = Decimal(0)
    for raw in raws:
        value = _amount(raw)
        if value is None:
            return None
        total += value
    return total


def _video(raw: Any, where: str) -> Video:
    if not isinstance(raw, Mapping):
        raise MalformedReply(f"{where} must be an object, got {_type_name(raw)}")
    video_id = _id(raw, "id", where)
    if video_id is None:
        raise MalformedReply(f"{where}.id is missing")
    url = raw.get("url")
    if not isinstance(url, str) or not url.strip():
        raise MalformedReply(f"{where}.url must be a non-empty string, got {url!r}")
    return Video(id=video_id, url=url.strip(), duration=_duration(raw.get("duration"), where))


def _duration(raw: Any, where: str) -> float | None:
    """Seconds; None when absent, null or blank. Anything else that is not seconds is malformed."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    value: float | None = None
    if isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    elif _is_number(raw):
        value = float(raw)
    if value is None or not math.isfinite(value) or value < 0:
        raise MalformedReply(f"{where}.duration must be a number of seconds, got {raw!r}")
    return value


def _id(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    """A non-empty id; some gateways send numeric ids, which are read as strings."""
    raw = obj.get(key)
    if raw is None:
        return None
    if _is_int(raw):
        return str(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise MalformedReply(f"{where}.{key} must be a non-empty string, got {raw!r}")
    return raw.strip()


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    raw = obj.get(key)
    if raw is None or isinstance(raw, str):
        return raw
    raise MalformedReply(f"{where}.{key} must be a string, got {_type_name(raw)}")


def _optional_ms(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    raw = obj.get(key)
    if raw is None:
        return None
    if _is_int(raw):
        return int(raw)
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    raise MalformedReply(f"{where}.{key} must be Unix milliseconds, got {raw!r}")


def _optional_mapping(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    raw = obj.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise MalformedReply(f"{where}.{key} must be an object, got {_type_name(raw)}")
    return raw


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


# --- requests --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtendRequest:
    """Extend a Kling-generated video by about 4-5 seconds.

    ``task_id`` is the task that produced ``video_id``; some gateways require it, the
    official API has no such field (see ``KlingClient(send_parent_task_id=...)``).
    """

    video_id: str
    task_id: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    callback_url: str | None = None
    external_task_id: str | None = None

    def validate(self) -> None:
        """Raise ``InvalidRequest`` naming the first field that breaks a rule."""
        _check_id("video_id", self.video_id, required=True)
        _check_id("task_id", self.task_id)
        _check_prompt("prompt", self.prompt)
        _check_prompt("negative_prompt", self.negative_prompt)
        _check_cfg_scale(self.cfg_scale)
        _check_callback_url(self.callback_url)
        _check_id("external_task_id", self.external_task_id)

    def to_json(self, *, send_parent_task_id: bool = True) -> dict[str, Any]:
        """The POST body; fields that are None are left out."""
        return _without_none(
            {
                "video_id": _strip(self.video_id),
                "task_id": _strip(self.task_id) if send_parent_task_id else None,
                "prompt": self.prompt,
                "negative_prompt": self.negative_prompt,
                "cfg_scale": self.cfg_scale,
                "callback_url": self.callback_url,
                "external_task_id": _strip(self.external_task_id),
            }
        )


@dataclass(frozen=True)
class Text2VideoRequest:
    """Generate a video from a prompt: the usual first link of a chain.

    ``duration`` is 5 or 10 seconds and is sent as a string, as the API expects.
    ``aspect_ratio`` (e.g. ``"16:9"``), ``model_name`` and ``mode`` (``"std"``/``"pro"``)
    are passed through for the provider to judge.
    """

    prompt: str
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    duration: int = 5
    aspect_ratio: str | None = None
    model_name: str | None = None
    mode: str | None = None
    callback_url: str | None = None
    external_task_id: str | None = None

    def validate(self) -> None:
        """Raise ``InvalidRequest`` naming the first field that breaks a rule."""
        _check_prompt("prompt", self.prompt, required=True)
        _check_prompt("negative_prompt", self.negative_prompt)
        _check_cfg_scale(self.cfg_scale)
        if not _is_int(self.duration) or self.duration not in TEXT2VIDEO_DURATIONS:
            raise InvalidRequest(f"duration must be 5 or 10 seconds, got {self.duration!r}")
        _check_id("aspect_ratio", self.aspect_ratio)
        _check_id("model_name", self.model_name)
        _check_id("mode", self.mode)
        _check_callback_url(self.callback_url)
        _check_id("external_task_id", self.external_task_id)

    def to_json(self) -> dict[str, Any]:
        """The POST body; fields that are None are left out."""
        return _without_none(
            {
                "prompt": self.prompt,
                "negative_prompt": self.negative_prompt,
                "cfg_scale": self.cfg_scale,
                "duration": str(self.duration),
                "aspect_ratio": _strip(self.aspect_ratio),
                "model_name": _strip(self.model_name),
                "mode": _strip(self.mode),
                "callback_url": self.callback_url,
                "external_task_id": _strip(self.external_task_id),
            }
        )


def _check_id(name: str, value: object, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required")
        return
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string, got {_type_name(value)}")
    if not value.strip():
        raise InvalidRequest(f"{name} must not be empty")


def _check_prompt(name: str, value: object, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required")
        return
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string, got {_type_name(value)}")
    if required and not value.strip():
        raise InvalidRequest(f"{name} must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{name} is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}")


def _check_cfg_scale(value: object) -> None:
    if value is None:
        return
    if not _is_number(value):
        raise InvalidRequest(f"cfg_scale must be a number, got {_type_name(value)}")
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise InvalidRequest(f"cfg_scale must be between 0 and 1, got {value!r}")


def _check_callback_url(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidRequest(f"callback_url must be a string, got {_type_name(value)}")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        # Not echoing the URL: it usually carries a secret per-task token.
        raise InvalidRequest("callback_url must be an absolute http:// or https:// URL")
    if any(ch.isspace() for ch in value):
        raise InvalidRequest("callback_url must not contain whitespace")


def _strip(value: str | None) -> str | None:
    return value.strip() if value is not None else None


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}
