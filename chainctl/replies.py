"""The kling-chain API's replies as frozen dataclasses: typed fields for what the API
documents, and every field the server sent (those added after this client was written too)
by name: ``chain["max_units"]``, ``chain.get("metadata")``, or all of them as ``.raw``."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chainctl.errors import UnexpectedReply

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
"""Chain statuses that do not change by themselves (a resume starts a failed or cancelled
chain again)."""


class View:
    """A reply object: typed fields, and every field the server sent by name."""

    raw: Mapping[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.raw[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.raw.get(name, default)


def as_object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise UnexpectedReply(f"expected {what} as a JSON object, got {type(data).__name__}")
    return data


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise UnexpectedReply(f"{key!r} should be a string, got {value!r}")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def _opt_float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnexpectedReply(f"{key!r} should be a number, got {value!r}")
    return float(value)


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnexpectedReply(f"{key!r} should be an integer, got {value!r}")
    return value


def _list(data: Mapping[str, Any], key: str) -> builtins.list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, builtins.list):
        raise UnexpectedReply(f"{key!r} should be a list, got {type(value).__name__}")
    return value


@dataclass(frozen=True, kw_only=True)
class Step(View):
    """One step of a chain: an extension (or the first text-to-video) at the provider."""

    index: int
    kind: str
    status: str
    task_id: str | None
    parent_video_id: str | None
    video_id: str | None
    duration: float | None
    error: str | None
    units: str | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> Step:
        d = as_object(data, "a step")
        return cls(
            index=_opt_int(d, "index") or 0,
            kind=_str(d, "kind"),
            status=_str(d, "status"),
            task_id=_opt_str(d, "task_id"),
            parent_video_id=_opt_str(d, "parent_video_id"),
            video_id=_opt_str(d, "video_id"),
            duration=_opt_float(d, "duration"),
            error=_opt_str(d, "error"),
            units=_opt_str(d, "units"),
            raw=d,
        )


@dataclass(frozen=True, kw_only=True)
class ArchiveEntry(View):
    """One of a chain's videos in the archive; ``status`` ``done`` when it is kept."""

    video_id: str
    status: str
    path: str | None
    bytes: int | None
    sha256: str | None
    duration: float | None
    error: str | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> ArchiveEntry:
        d = as_object(data, "an archive entry")
        return cls(
            video_id=_str(d, "video_id"),
            status=_str(d, "status"),
            path=_opt_str(d, "path"),
            bytes=_opt_int(d, "bytes"),
            sha256=_opt_str(d, "sha256"),
            duration=_opt_float(d, "duration"),
            error=_opt_str(d, "error"),
            raw=d,
        )


@dataclass(frozen=True, kw_only=True)
class Chain(View):
    """A chain as ``GET /chains/{id}`` shows it (see the README's "The chain object")."""

    id: str
    status: str
    end_reason: str | None
    error: str | None
    waiting: str | None
    cancelled_at: float | None
    duration: float | None
    target_seconds: float | None
    steps_requested: int | None
    created_at: float | None
    updated_at: float | None
    steps: tuple[Step, ...]
    units: str | None
    units_complete: bool
    max_units: str | None
    archive: tuple[ArchiveEntry, ...]
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def terminal(self) -> bool:
        """Whether the chain has ended (``succeeded``, ``failed`` or ``cancelled``)."""
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: Any) -> Chain:
        d = as_object(data, "a chain")
        return cls(
            id=_str(d, "id"),
            status=_str(d, "status"),
            end_reason=_opt_str(d, "end_reason"),
            error=_opt_str(d, "error"),
            waiting=_opt_str(d, "waiting"),
            cancelled_at=_opt_float(d, "cancelled_at"),
            duration=_opt_float(d, "duration"),
            target_seconds=_opt_float(d, "target_seconds"),
            steps_requested=_opt_int(d, "steps_requested"),
            created_at=_opt_float(d, "created_at"),
            updated_at=_opt_float(d, "updated_at"),
            steps=tuple(Step.from_json(s) for s in _list(d, "steps")),
            units=_opt_str(d, "units"),
            units_complete=bool(d.get("units_complete")),
            max_units=_opt_str(d, "max_units"),
            archive=tuple(ArchiveEntry.from_json(a) for a in _list(d, "archive")),
            raw=d,
        )


@dataclass(frozen=True, kw_only=True)
class ChainPage(View):
    """A page of ``GET /chains``, newest first; ``next_before`` asks for the next one."""

    chains: tuple[Chain, ...]
    next_before: float | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> ChainPage:
        d = as_object(data, "a page of chains")
        return cls(
            chains=tuple(Chain.from_json(c) for c in _list(d, "chains")),
            next_before=_opt_float(d, "next_before"),
            raw=d,
        )


@dataclass(frozen=True, kw_only=True)
class ArchiveTask(View):
    task_id: str
    kind: str
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> ArchiveTask:
        d = as_object(data, "an archive task")
        return cls(task_id=_str(d, "task_id"), kind=_str(d, "kind"), raw=d)


@dataclass(frozen=True, kw_only=True)
class ArchiveQueued(View):
    """``POST /archive``: the tasks queued now, and those queued or archived already."""

    queued: tuple[ArchiveTask, ...]
    already_queued: tuple[ArchiveTask, ...]
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> ArchiveQueued:
        d = as_object(data, "an archive reply")
        return cls(
            queued=tuple(ArchiveTask.from_json(t) for t in _list(d, "queued")),
            already_queued=tuple(ArchiveTask.from_json(t) for t in _list(d, "already_queued")),
            raw=d,
        )


@dataclass(frozen=True, kw_only=True)
class ArchivedVideo(View):
    """A video in the archive's manifest (``GET /archive``)."""

    video_id: str
    task_id: str | None
    kind: str
    state: str
    chain_id: str | None
    duration: float | None
    bytes: int | None
    sha256: str | None
    location: str | None
    expires_at: float | None
    at_risk: bool
    error: str | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> ArchivedVideo:
        d = as_object(data, "an archived video")
        return cls(
            video_id=_str(d, "video_id"),
            task_id=_opt_str(d, "task_id"),
            kind=_str(d, "kind"),
            state=_str(d, "state"),
            chain_id=_opt_str(d, "chain_id"),
            duration=_opt_float(d, "duration"),
            bytes=_opt_int(d, "bytes"),
            sha256=_opt_str(d, "sha256"),
            location=_opt_str(d, "location"),
            expires_at=_opt_float(d, "expires_at"),
            at_risk=bool(d.get("at_risk")),
            error=_opt_str(d, "error"),
            raw=d,
        )


@dataclass(frozen=True, kw_only=True)
class ArchivePage(View):
    """A page of the archive's manifest, newest first, with the count of videos per state."""

    videos: tuple[ArchivedVideo, ...]
    next_before: float | None
    counts: Mapping[str, int]
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> ArchivePage:
        d = as_object(data, "a page of the archive")
        return cls(
            videos=tuple(ArchivedVideo.from_json(v) for v in _list(d, "videos")),
            next_before=_opt_float(d, "next_before"),
            counts={str(k): int(v) for k, v in as_object(d.get("counts") or {}, "counts").items()},
            raw=d,
        )


@dataclass(frozen=True, kw_only=True)
class ChainUnits(View):
    id: str
    units: str
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class SpendDay(View):
    """One UTC day's units; ``chains`` only for today (most expensive first)."""

    date: str
    units: str
    unpriced_steps: int
    chains: tuple[ChainUnits, ...]
    latest: Mapping[str, str]
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> SpendDay:
        d = as_object(data, "a day of spend")
        chains = tuple(
            ChainUnits(id=_str(c, "id"), units=_str(c, "units"), raw=c)
            for c in (as_object(c, "a chain's units") for c in _list(d, "chains"))
        )
        return cls(
            date=_str(d, "date"),
            units=_str(d, "units"),
            unpriced_steps=_opt_int(d, "unpriced_steps") or 0,
            chains=chains,
            latest={str(k): str(v) for k, v in as_object(d.get("latest") or {}, "latest").items()},
            raw=d,
        )


@dataclass(frozen=True, kw_only=True)
class Budget(View):
    """The account's daily unit budget, as ``GET /spend`` and ``PUT /spend/budget`` show it."""

    daily_units: str
    source: str  # "DAILY_UNIT_BUDGET" (the environment) or "api"
    spent: str
    reserved: str
    steps_in_flight: int
    remaining: str
    resets_at: str
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> Budget | None:
        if data is None:
            return None
        d = as_object(data, "a budget")
        return cls(
            daily_units=_str(d, "daily_units"),
            source=_str(d, "source"),
            spent=_str(d, "spent"),
            reserved=_str(d, "reserved"),
            steps_in_flight=_opt_int(d, "steps_in_flight") or 0,
            remaining=_str(d, "remaining"),
            resets_at=_str(d, "resets_at"),
            raw=d,
        )


@dataclass(frozen=True, kw_only=True)
class Spend(View):
    """``GET /spend``: today, the last days (today first), in all, and the daily budget."""

    today: SpendDay
    days: tuple[SpendDay, ...]
    total: str
    budget: Budget | None
    """None: no daily budget is set."""
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Any) -> Spend:
        d = as_object(data, "a spend report")
        return cls(
            today=SpendDay.from_json(d.get("today")),
            days=tuple(SpendDay.from_json(day) for day in _list(d, "days")),
            total=_str(d, "total"),
            budget=Budget.from_json(d.get("budget")),
            raw=d,
        )
