"""Video records in Redis (``worker.core.videos`` holds the record and its rules).

Keys (``worker.state.keys``): the record per video, every video by time known, one index
per state, and the pending ones by ``expires_at`` (the sweep's nearest-deadline-first order).
``write`` is the one way a record and its indexes are written, here and in the chain
transitions that register a chain's videos (``worker.state.chains``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from worker.core.chain import Chain
from worker.core.videos import SAFE_ID, VideoRecord, VideoState
from worker.state import Read, Writes, optimistic, text
from worker.state.keys import Keys


def write(pipe: Any, keys: Keys, old: VideoRecord | None, new: VideoRecord) -> None:
    """Queue the writes that store ``new`` over ``old`` (None: a new video), indexes included."""
    pipe.set(keys.video(new.video_id), new.to_json())
    if old is None:
        pipe.zadd(keys.videos, {new.video_id: new.known_at})
    if old is not None and old.state is not new.state:
        pipe.zrem(keys.videos_in(old.state.value), new.video_id)
    if old is None or old.state is not new.state:
        pipe.zadd(keys.videos_in(new.state.value), {new.video_id: new.known_at})
    if new.state is VideoState.PENDING:
        pipe.zadd(keys.videos_by_deadline, {new.video_id: new.expires_at})
    else:
        pipe.zrem(keys.videos_by_deadline, new.video_id)


class Videos:
    def __init__(
        self, client: redis.Redis, *, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.clock = clock

    def _key(self, video_id: str) -> str:
        return self.keys.video(video_id)

    def register(self, record: VideoRecord) -> bool:
        """Remember a video; False (and no change) when it is known already."""

        def decide(raw: bytes | None, _: Read) -> tuple[Writes | None, bool]:
            if raw is not None:
                return None, False
            return lambda pipe: write(pipe, self.keys, None, record), True

        return optimistic(self.redis, self._key(record.video_id), decide)

    def ask(self, kind: str, task_id: str, origin: str, *, ttl: int) -> bool:
        """Mark a task as asked for archiving; False when it is asked for already."""
        return bool(self.redis.set(self.keys.archive_asked(kind, task_id), origin, nx=True, ex=ttl))

    def forget_ask(self, kind: str, task_id: str) -> None:
        """Let the task be asked for again (its query gave up)."""
        self.redis.delete(self.keys.archive_asked(kind, task_id))

    def get(self, video_id: str) -> VideoRecord | None:
        raw = self.redis.get(self._key(video_id))
        return None if raw is None else VideoRecord.from_json(raw)

    def update(
        self, video_id: str, change: Callable[[VideoRecord], VideoRecord | None]
    ) -> tuple[VideoRecord | None, bool]:
        """Apply ``change`` atomically. Returns (record after, whether it changed).

        A change that archives or loses a chain's video goes through ``Store.settle``
        instead, which tells the chain in the same transaction."""

        def decide(
            raw: bytes | None, _: Read
        ) -> tuple[Writes | None, tuple[VideoRecord | None, bool]]:
            if raw is None:
                return None, (None, False)
            old = VideoRecord.from_json(raw)
            new = change(old)
            if new is None or new == old:
                return None, (old, False)
            return lambda pipe: write(pipe, self.keys, old, new), (new, True)

        return optimistic(self.redis, self._key(video_id), decide)

    def of(self, chains: Iterable[Chain]) -> dict[str, VideoRecord]:
        """The records of these chains' videos (what ``Chain.view`` shows), in one MGET."""
        ids = [v for chain in chains for v in chain.video_ids if SAFE_ID.match(v)]
        return {r.video_id: r for r in self._load(ids)}

    def by_deadline(self, limit: int) -> list[VideoRecord]:
        """Pending videos, nearest deadline first."""
        ids = self.redis.zrange(self.keys.videos_by_deadline, 0, limit - 1)
        return self._load(ids)

    def recent(
        self, *, state: VideoState | None, limit: int, before: float | None
    ) -> list[VideoRecord]:
        index = self.keys.videos_in(state.value) if state else self.keys.videos
        top = f"({before}" if before is not None else "+inf"
        ids = self.redis.zrevrangebyscore(index, top, "-inf", start=0, num=limit)
        return self._load(ids)

    def counts(self) -> dict[str, int]:
        return {s.value: int(self.redis.zcard(self.keys.videos_in(s.value))) for s in VideoState}

    def _load(self, ids: list[Any]) -> list[VideoRecord]:
        if not ids:
            return []
        keys = [self._key(text(i)) for i in ids]
        return [VideoRecord.from_json(raw) for raw in self.redis.mget(keys) if raw is not None]
