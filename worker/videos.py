"""The archive's record of every known video: what it is, its deadline, whether it is safe.

A video is known when a chain made it, when a callback from any of the account's tasks named
it, or when someone asked for its task to be archived. Each record carries ``expires_at``
(the provider deletes videos 30 days after they were made) and moves, only forward, from
``pending`` to ``archived`` or ``lost``.

Keys (under ``KEY_PREFIX``): ``video:{id}`` (the record), ``videos`` (all, by time known),
``videos:{state}`` (by time known, for filtering) and ``videos:deadline`` (pending ones by
``expires_at``: the sweep's nearest-deadline-first order).
"""

from __future__ import annotations

import builtins
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

import redis

from worker.atomic import Writes, optimistic

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""Provider ids that may become a file name or a key: the same rule for chains and the rest."""

RETENTION_SECONDS = 30 * 24 * 3600.0


class VideoState(StrEnum):
    PENDING = "pending"
    ARCHIVED = "archived"
    LOST = "lost"


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    task_id: str
    kind: str
    url: str
    created_at: float
    known_at: float
    duration: float | None = None
    parent_video_id: str | None = None
    prompt: str | None = None
    chain_id: str | None = None
    origin: str = "callback"  # chain | callback | request
    state: VideoState = VideoState.PENDING
    location: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    source_host: str | None = None
    archived_at: float | None = None
    error: str | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    owner: str | None = None
    claimed_at: float | None = None
    queued_at: float | None = None
    warned: bool = False

    @property
    def expires_at(self) -> float:
        return self.created_at + RETENTION_SECONDS

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | builtins.bytes) -> VideoRecord:
        data = json.loads(raw)
        return cls(**{**data, "state": VideoState(data["state"])})

    def view(self, now: float, warn_window: float) -> dict[str, Any]:
        """The record as the HTTP API and the JSON-lines export show it."""
        return {
            "video_id": self.video_id,
            "task_id": self.task_id,
            "kind": self.kind,
            "state": self.state.value,
            "parent_video_id": self.parent_video_id,
            "prompt": self.prompt,
            "duration": self.duration,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "location": self.location,
            "source_host": self.source_host,
            "chain_id": self.chain_id,
            "origin": self.origin,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "archived_at": self.archived_at,
            "at_risk": at_risk(self, now, warn_window),
            "error": self.error,
        }


# -- pure rules --------------------------------------------------------------------------------
def at_risk(record: VideoRecord, now: float, warn_window: float) -> bool:
    return record.state is VideoState.PENDING and record.expires_at - now <= warn_window


def claim(record: VideoRecord, owner: str, now: float, lease: float) -> VideoRecord | None:
    """The record with ``owner`` holding it, or None when it is not this worker's to take."""
    if record.state is not VideoState.PENDING or record.next_attempt_at > now:
        return None
    live = record.claimed_at is not None and now - record.claimed_at < lease
    if live and record.owner != owner:
        return None
    return replace(record, owner=owner, claimed_at=now, attempts=record.attempts + 1)


def queue(record: VideoRecord, now: float, hold: float) -> VideoRecord | None:
    """Mark a pending video as handed to the queue, unless that happened within ``hold``."""
    if record.state is not VideoState.PENDING or record.next_attempt_at > now:
        return None
    if record.queued_at is not None and now - record.queued_at < hold:
        return None
    return replace(record, queued_at=now)


def archived(
    record: VideoRecord, *, location: str, size: int, sha256: str, host: str | None, now: float
) -> VideoRecord:
    if record.state is not VideoState.PENDING:
        return record
    return replace(
        record,
        state=VideoState.ARCHIVED,
        location=location,
        bytes=size,
        sha256=sha256,
        source_host=host,
        archived_at=now,
        error=None,
        owner=None,
        claimed_at=None,
    )


def retry_at(record: VideoRecord, reason: str, when: float) -> VideoRecord:
    if record.state is not VideoState.PENDING:
        return record
    return replace(record, error=reason, next_attempt_at=when, owner=None, claimed_at=None)


def lost(record: VideoRecord, reason: str) -> VideoRecord:
    if record.state is not VideoState.PENDING:
        return record
    return replace(record, state=VideoState.LOST, error=reason, owner=None, claimed_at=None)


# -- the Redis shell ---------------------------------------------------------------------------
class Videos:
    def __init__(
        self, client: redis.Redis, *, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.clock = clock

    def _key(self, video_id: str) -> str:
        return f"{self.prefix}video:{video_id}"

    def _index(self, pipe: Any, old: VideoRecord | None, new: VideoRecord) -> None:
        p = self.prefix
        if old is None:
            pipe.zadd(f"{p}videos", {new.video_id: new.known_at})
        if old is not None and old.state is not new.state:
            pipe.zrem(f"{p}videos:{old.state.value}", new.video_id)
        if old is None or old.state is not new.state:
            pipe.zadd(f"{p}videos:{new.state.value}", {new.video_id: new.known_at})
        if new.state is VideoState.PENDING:
            pipe.zadd(f"{p}videos:deadline", {new.video_id: new.expires_at})
        else:
            pipe.zrem(f"{p}videos:deadline", new.video_id)

    def register(self, record: VideoRecord) -> bool:
        """Remember a video; False (and no change) when it is known already."""

        def decide(raw: bytes | None) -> tuple[Writes | None, bool]:
            if raw is not None:
                return None, False

            def writes(pipe: Any) -> None:
                pipe.set(self._key(record.video_id), record.to_json())
                self._index(pipe, None, record)

            return writes, True

        return optimistic(self.redis, self._key(record.video_id), decide)

    def ask(self, kind: str, task_id: str, origin: str, *, ttl: int) -> bool:
        """Mark a task as asked for archiving; False when it is asked for already."""
        name = f"{self.prefix}archive-asked:{kind}:{task_id}"
        return bool(self.redis.set(name, origin, nx=True, ex=ttl))

    def forget_ask(self, kind: str, task_id: str) -> None:
        """Let the task be asked for again (its query gave up)."""
        self.redis.delete(f"{self.prefix}archive-asked:{kind}:{task_id}")

    def get(self, video_id: str) -> VideoRecord | None:
        raw = self.redis.get(self._key(video_id))
        return None if raw is None else VideoRecord.from_json(raw)

    def update(
        self, video_id: str, change: Callable[[VideoRecord], VideoRecord | None]
    ) -> tuple[VideoRecord | None, bool]:
        """Apply ``change`` atomically. Returns (record after, whether it changed)."""

        def decide(raw: bytes | None) -> tuple[Writes | None, tuple[VideoRecord | None, bool]]:
            if raw is None:
                return None, (None, False)
            old = VideoRecord.from_json(raw)
            new = change(old)
            if new is None or new == old:
                return None, (old, False)

            def writes(pipe: Any) -> None:
                pipe.set(self._key(video_id), new.to_json())
                self._index(pipe, old, new)

            return writes, (new, True)

        return optimistic(self.redis, self._key(video_id), decide)

    def by_deadline(self, limit: int) -> list[VideoRecord]:
        """Pending videos, nearest deadline first."""
        ids = self.redis.zrange(f"{self.prefix}videos:deadline", 0, limit - 1)
        return self._load(ids)

    def recent(
        self, *, state: VideoState | None, limit: int, before: float | None
    ) -> list[VideoRecord]:
        index = f"{self.prefix}videos" + (f":{state.value}" if state else "")
        top = f"({before}" if before is not None else "+inf"
        ids = self.redis.zrevrangebyscore(index, top, "-inf", start=0, num=limit)
        return self._load(ids)

    def counts(self) -> dict[str, int]:
        return {
            s.value: int(self.redis.zcard(f"{self.prefix}videos:{s.value}")) for s in VideoState
        }

    def _load(self, ids: list[Any]) -> list[VideoRecord]:
        if not ids:
            return []
        keys = [self._key(i.decode() if isinstance(i, bytes) else str(i)) for i in ids]
        return [VideoRecord.from_json(raw) for raw in self.redis.mget(keys) if raw is not None]
