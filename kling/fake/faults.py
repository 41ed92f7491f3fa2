"""Fault knobs: the ways the fake gateway can be told to misbehave, and their validation.

Knobs are set at start-up (``--faults`` JSON) and at run time (``POST /_fake/faults``)
with a JSON merge: only the fields given change; a nested knob given as ``null`` goes back
to its defaults. A patch is checked whole before anything changes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

RESULT_DURATIONS = ("whole", "segment", "missing")
CALLBACK_SIGNATURES = ("valid", "rotated", "none", "wrong", "stale")


class FaultsError(ValueError):
    """A fault patch names an unknown knob or gives a value of the wrong kind."""


@dataclass
class CallbackFaults:
    """How status-change callbacks are delivered."""

    drop: float = 0.0  # probability of dropping a callback (1 drops all)
    duplicate: int = 0  # extra copies of each callback
    delay_seconds: float = 0.0  # wait before sending
    reorder: bool = False  # hold the processing callback until after the terminal one


@dataclass
class FailCreates:
    """The next ``count`` create requests are refused with this reply and create nothing."""

    count: int = 0
    http_status: int = 429
    code: int = 1102
    message: str = "resource pack exhausted"


@dataclass
class DropCreates:
    """The next ``count`` creates are made and billed, then the reply is lost."""

    count: int = 0
    # "reset": headers then a broken connection; "hang": answer late; "bad_gateway": a
    # relay's HTTP 502 page in place of the reply
    mode: str = "reset"
    hang_seconds: float = 60.0


@dataclass
class FailTasks:
    """The next ``count`` tasks created end ``failed`` with ``message``."""

    count: int = 0
    message: str = "task failed: content safety check (injected fault)"


@dataclass
class CutDownloads:
    """The next ``count`` file responses break after ``after_bytes`` bytes of body."""

    count: int = 0
    after_bytes: int = 0


@dataclass
class RedirectDownloads:
    """The next ``count`` file requests are answered ``status`` with ``Location: location``.

    A redirecting file host (a CDN, or one sending the client somewhere it should not go).
    ``location`` is sent as given; empty means the request's own URL, so ``count`` requests
    in a row go round in a loop before the file is served.
    """

    count: int = 0
    location: str = ""
    status: int = 302


@dataclass
class Faults:
    """Every knob of the fake gateway, with the defaults of a well-behaved provider."""

    callbacks: CallbackFaults = field(default_factory=CallbackFaults)
    fail_next_creates: FailCreates = field(default_factory=FailCreates)
    drop_next_creates: DropCreates = field(default_factory=DropCreates)
    fail_next_tasks: FailTasks = field(default_factory=FailTasks)
    cut_next_downloads: CutDownloads = field(default_factory=CutDownloads)
    redirect_next_downloads: RedirectDownloads = field(default_factory=RedirectDownloads)
    require_parent_task_id: bool = False
    support_external_task_id: bool = True  # false: a relay that takes the field and drops it
    support_task_list: bool = True  # false: the list endpoint answers 404
    callback_envelope: bool = False
    # With a webhook secret configured, how callbacks are signed: "valid"; "rotated" (an old
    # secret's signature, then the valid one, as during a rotation); "none" (unsigned);
    # "wrong" (another secret); "stale" (signed 10 minutes ago). Without a secret: unsigned.
    callback_signatures: str = "valid"
    download_bytes_per_second: float | None = None
    ranges: bool = True
    # "whole": result videos report the whole video's seconds, as the API says; "segment": an
    # extension's result reports only the part it added (~4-5 s; files stay whole); "missing":
    # result videos carry no duration at all.
    result_durations: str = "whole"
    # What a finished task reports as ``final_unit_deduction`` (a string of units, as the
    # official API does), fixed when the task is created; null leaves the field out, as
    # gateways do. A task bound to fail reports ``failed_unit_cost``.
    unit_cost: str | None = "1"
    failed_unit_cost: str | None = "0"
    # At most this many of the account's tasks submitted or processing at once; a create past
    # it is refused with HTTP 429 code 1303, as the provider does. Null: no limit.
    account_concurrency: int | None = None
    # [low, high]: each task created from now on takes a time drawn uniformly from that many
    # seconds (a spread of task durations), in place of ``--delay``. Null: ``--delay``.
    task_seconds: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, patch: object) -> Faults:
        """A copy with ``patch`` (a JSON object) merged in; raises ``FaultsError``."""
        if not isinstance(patch, Mapping):
            raise FaultsError("faults must be a JSON object")
        result = copy.deepcopy(self)
        for key, value in patch.items():
            spec = _SCHEMA.get(key)
            if spec is None:
                raise FaultsError(f"unknown fault knob {key!r}")
            if callable(spec):
                setattr(result, key, spec(key, value))
                continue
            if value is None:
                setattr(result, key, type(getattr(result, key))())
                continue
            if not isinstance(value, Mapping):
                raise FaultsError(f"{key} must be a JSON object")
            target = getattr(result, key)
            for name, sub_value in value.items():
                check = spec.get(name)
                if check is None:
                    raise FaultsError(f"unknown field {key}.{name}")
                setattr(target, name, check(f"{key}.{name}", sub_value))
        return result


Check = Callable[[str, object], object]


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultsError(f"{name} must be a number")
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FaultsError(f"{name} must be a whole number >= 0")
    return value


def _http_status(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise FaultsError(f"{name} must be an HTTP error status (400-599)")
    return value


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise FaultsError(f"{name} must be a string")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise FaultsError(f"{name} must be true or false")
    return value


def _probability(name: str, value: object) -> float:
    number = _number(name, value)
    if not 0.0 <= number <= 1.0:
        raise FaultsError(f"{name} must be between 0 and 1")
    return number


def _seconds(name: str, value: object) -> float:
    number = _number(name, value)
    if number < 0:
        raise FaultsError(f"{name} must be >= 0")
    return number


def _drop_mode(name: str, value: object) -> str:
    if value not in ("reset", "hang", "bad_gateway"):
        raise FaultsError(f"{name} must be 'reset', 'hang' or 'bad_gateway'")
    return str(value)


def _result_durations(name: str, value: object) -> str:
    if value not in RESULT_DURATIONS:
        raise FaultsError(f"{name} must be one of {', '.join(map(repr, RESULT_DURATIONS))}")
    return str(value)


def _callback_signatures(name: str, value: object) -> str:
    if value not in CALLBACK_SIGNATURES:
        raise FaultsError(f"{name} must be one of {', '.join(map(repr, CALLBACK_SIGNATURES))}")
    return str(value)


def _redirect_status(name: str, value: object) -> int:
    redirects = (301, 302, 303, 307, 308)
    if isinstance(value, bool) or not isinstance(value, int) or value not in redirects:
        raise FaultsError(f"{name} must be a redirect status (301, 302, 303, 307 or 308)")
    return value


def _rate(name: str, value: object) -> float | None:
    if value is None:
        return None
    number = _number(name, value)
    if number <= 0:
        raise FaultsError(f"{name} must be > 0 or null")
    return number


def _limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    number = _count(name, value)
    if number < 1:
        raise FaultsError(f"{name} must be an integer >= 1 or null")
    return number


def _units(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number) and number >= 0 and value.strip() == value and value:
            return value
    raise FaultsError(f'{name} must be a string of units >= 0 (e.g. "1", "0.5") or null')


def _spread(name: str, value: object) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise FaultsError(f"{name} must be [low, high] (seconds) or null")
    low, high = (_seconds(name, v) for v in value)
    if low > high:
        raise FaultsError(f"{name}: low ({low:g}) must not be more than high ({high:g})")
    return [low, high]


_SCHEMA: dict[str, Check | dict[str, Check]] = {
    "callbacks": {
        "drop": _probability,
        "duplicate": _count,
        "delay_seconds": _seconds,
        "reorder": _flag,
    },
    "fail_next_creates": {
        "count": _count,
        "http_status": _http_status,
        "code": _count,
        "message": _text,
    },
    "drop_next_creates": {"count": _count, "mode": _drop_mode, "hang_seconds": _seconds},
    "fail_next_tasks": {"count": _count, "message": _text},
    "cut_next_downloads": {"count": _count, "after_bytes": _count},
    "redirect_next_downloads": {"count": _count, "location": _text, "status": _redirect_status},
    "require_parent_task_id": _flag,
    "support_external_task_id": _flag,
    "support_task_list": _flag,
    "callback_envelope": _flag,
    "callback_signatures": _callback_signatures,
    "download_bytes_per_second": _rate,
    "ranges": _flag,
    "result_durations": _result_durations,
    "unit_cost": _units,
    "failed_unit_cost": _units,
    "account_concurrency": _limit,
    "task_seconds": _spread,
}
