"""Archiving: provider URL -> verified object in storage, for chains and for any other task.

Every video is archived from its record (``worker.state.videos``) by ``archive_video``, the one
download-and-store path. A chain's videos are recorded by the transition that made them;
videos of tasks this service did not submit (named by an archive callback or by
``POST /archive``) are confirmed by a query and recorded by ``archive_task``. The sweep takes
the pending ones nearest their deadline first, warns inside ``ARCHIVE_WARN_SECONDS`` and marks
the expired ones lost. A chain's video that settles tells its chain in the same transaction
(``Store.settle``), which may end the chain: ``notify_end`` announces that, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from kling.client import KlingClient
from kling.errors import KlingError, MalformedReply, PermanentError, RetryableError
from kling.models import TaskKind, TaskStatus
from worker.core import retry
from worker.core.chain import Outcome
from worker.core.videos import (
    SAFE_ID,
    VideoRecord,
    VideoState,
    archived,
    at_risk,
    claim,
    lost,
    queue,
    retry_at,
    unsafe_id,
)
from worker.outbound.download import (
    Downloaded,
    DownloadPermanent,
    DownloadRetryable,
    download_into,
)
from worker.outbound.netguard import guarded_session
from worker.outbound.notify import EventType, event_id, new_event
from worker.settings import DOWNLOAD_ATTEMPTS, Settings
from worker.state.chains import Store
from worker.state.videos import Videos
from worker.storage import Storage
from worker.storage.errors import StorageError
from worker.tasknames import ARCHIVE_VIDEO, NOTIFY

log = logging.getLogger(__name__)

GONE = "the provider deleted the video (30 days after it was made) before it was archived"

Enqueue = Callable[[str, tuple[Any, ...]], None]


class VideoGone(DownloadPermanent):
    """The video is past its 30 days: it can no longer be downloaded."""


@dataclass(frozen=True)
class Stored:
    location: str
    bytes: int
    sha256: str
    host: str | None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class Archiver:
    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        chains: Store,
        videos: Videos,
        provider: KlingClient,
        enqueue: Enqueue,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.chains = chains
        self.videos = videos
        self.provider = provider
        self.enqueue = enqueue
        self.clock = clock
        # One session per process: downloads from the same file host reuse its connection.
        # Guarded: no internal address unless ALLOW_PRIVATE_HOSTS names it, no .netrc.
        self.http = guarded_session(settings.allow_private_hosts)

    # -- the one way a video reaches storage ---------------------------------------------------
    def store(self, record: VideoRecord) -> Stored:
        """Stream the record's URL into storage as ``{video_id}.mp4`` with a ``.json`` sidecar.

        Raises VideoGone past the deadline, DownloadPermanent or DownloadRetryable.
        """
        video_id, url, expires = record.video_id, record.url, record.expires_at
        unsafe = unsafe_id(video_id)
        if unsafe is not None:
            raise DownloadPermanent(unsafe)
        now = self.clock()
        if now >= expires:
            raise VideoGone(GONE)
        # Aim to finish well before the deletion, but never give up sooner than a minute.
        deadline = min(expires, max(expires - self.settings.archive_margin_seconds, now + 60.0))
        try:
            got = download_into(
                url,
                self.storage.open(f"{video_id}.mp4"),
                deadline=deadline,
                max_bytes=self.settings.archive_max_bytes,
                max_attempts=DOWNLOAD_ATTEMPTS,
                session=self.http,
                limits=self.settings.download_limits(),
            )
            host = urlsplit(url).hostname
            self._sidecar(record, got, host)
        except (StorageError, OSError) as exc:
            # Never the video's fault: keep it pending; the warning window reports it in time.
            raise DownloadRetryable(f"archive storage failed: {exc}") from exc
        return Stored(got.location, got.bytes, got.sha256, host)

    def _sidecar(self, record: VideoRecord, got: Downloaded, host: str | None) -> None:
        """The one sidecar writer: where the video came from, and what was stored."""
        self.storage.write_json(
            f"{record.video_id}.json",
            {
                **record.sidecar(),
                "video_id": record.video_id,
                "bytes": got.bytes,
                "sha256": got.sha256,
                "location": got.location,
                "source_host": host,
                "created_at": iso(record.created_at),
                "expires_at": iso(record.expires_at),
                "archived_at": iso(self.clock()),
            },
        )

    # -- any task of the account ----------------------------------------------------------------
    def archive_task(
        self, kind: str, task_id: str, origin: str, *, attempt: int = 0
    ) -> float | None:
        """Confirm a task by query and queue its videos; a delay when it is not finished yet.

        At most ``retry.Kind.TASK_QUERY``'s attempts: then it is dropped, and may be asked for
        again.
        """
        queries = attempt + 1
        try:
            task = self.provider.get(TaskKind(kind), task_id)
        except (RetryableError, MalformedReply) as exc:
            log.warning("archive %s %s: query failed: %s", kind, task_id, exc)
            delay = retry.delay(retry.Kind.TASK_QUERY, queries)
            return self._again(kind, task_id, delay, queries, str(exc))
        except PermanentError as exc:
            log.error("archive %s %s: the provider refused the query: %s", kind, task_id, exc)
            self.videos.forget_ask(kind, task_id)
            return None
        if task.status is TaskStatus.FAILED:
            log.info("archive %s %s: failed (%s); nothing to keep", kind, task_id, task.status_msg)
            return None
        if not task.status.terminal:  # not done yet: ask again later
            poll = self.settings.poll_after_seconds
            return self._again(kind, task_id, poll, queries, "unfinished")
        now = self.clock()
        created = task.created_at_ms / 1000 if task.created_at_ms else now
        for video in task.videos:
            if not SAFE_ID.match(video.id):
                log.error(
                    "archive %s %s: video id %r is not a safe name; skipped",
                    kind,
                    task_id,
                    video.id,
                )
                continue
            record = VideoRecord(
                video_id=video.id,
                task_id=task.task_id,
                kind=kind,
                url=video.url,
                created_at=created,
                known_at=now,
                duration=video.duration,
                parent_video_id=task.parent_video.id if task.parent_video else None,
                origin=origin,
                queued_at=now,
            )
            if self.videos.register(record):
                log.info("archive: now tracking video %s of %s task %s", video.id, kind, task_id)
                self.enqueue(ARCHIVE_VIDEO, (video.id,))
        return None

    def _again(self, kind: str, task_id: str, delay: float, queries: int, why: str) -> float | None:
        if not retry.exhausted(retry.Kind.TASK_QUERY, queries):
            return delay
        log.error(
            "archive %s %s: gave up after %d queries (%s); ask again to retry",
            kind,
            task_id,
            queries,
            why,
        )
        self.videos.forget_ask(kind, task_id)
        return None

    def archive_video(self, video_id: str, *, owner: str, attempt: int = 0) -> float | None:
        """Download a recorded video (a chain's or any other) once, under a lease; a delay
        when it should be tried again."""
        lease = self.settings.archive_lease_seconds
        record, took = self.videos.update(video_id, lambda r: claim(r, owner, self.clock(), lease))
        if record is None or not took or record.owner != owner:
            return None
        try:
            stored = self.store(record)
        except DownloadRetryable as exc:
            reason, delay = str(exc), retry.delay(retry.Kind.ARCHIVE, attempt + 1)
            self.videos.update(video_id, lambda r: retry_at(r, reason, self.clock() + delay))
            return delay
        except (DownloadPermanent, KlingError) as exc:
            self._lost(video_id, str(exc))
            return None
        self._settle(
            video_id,
            lambda r: archived(
                r,
                location=stored.location,
                size=stored.bytes,
                sha256=stored.sha256,
                host=stored.host,
                now=self.clock(),
            ),
            EventType.VIDEO_ARCHIVED,
        )
        return None

    def _lost(self, video_id: str, reason: str) -> None:
        if self._settle(video_id, lambda r: lost(r, reason), EventType.VIDEO_LOST):
            log.error("archive: video %s is lost: %s", video_id, reason)

    def _settle(
        self, video_id: str, change: Callable[[VideoRecord], VideoRecord], kind: EventType
    ) -> bool:
        """Settle the record (telling its chain, if any), then announce it; False when it was
        settled already."""
        done = self.chains.settle(video_id, change)
        if done.changed:
            self.notify(kind, done.record)
        if done.chain is not None:
            self.notify_end(done.chain)
        return done.changed

    # -- the deadline sweep ---------------------------------------------------------------------
    def sweep(self, limit: int = 500) -> int:
        """Queue pending videos nearest-deadline first; warn near the deadline; mark the expired."""
        now = self.clock()
        warn = self.settings.archive_warn_seconds
        lease = self.settings.archive_lease_seconds
        hold = min(self.settings.poll_after_seconds, lease)
        queued = 0
        for record in self.videos.by_deadline(limit):
            if now >= record.expires_at:
                self._lost(record.video_id, GONE)
                continue
            if at_risk(record, now, warn) and not record.warned:
                warned, first = self.videos.update(
                    record.video_id, lambda r: None if r.warned else _warned(r)
                )
                if first:
                    hours = (record.expires_at - now) / 3600
                    log.error(
                        "archive: video %s (task %s) is not archived and will be deleted in "
                        "%.1f h: %s",
                        record.video_id,
                        record.task_id,
                        hours,
                        record.error or "",
                    )
                    self.notify(EventType.VIDEO_AT_RISK, warned)
            if record.claimed_at is not None and now - record.claimed_at < lease:
                continue  # a worker holds it
            _, handed = self.videos.update(record.video_id, lambda r: queue(r, now, hold))
            if not handed:
                continue
            self.enqueue(ARCHIVE_VIDEO, (record.video_id,))
            queued += 1
        return queued

    def notify(self, kind: EventType, record: VideoRecord | None) -> None:
        """Announce ``record`` (as just written) to NOTIFY_URL, if one is set."""
        if self.settings.notify_url is None or record is None:
            return
        data = record.view(self.clock(), self.settings.archive_warn_seconds)
        event = new_event(kind, data, event_id=event_id(record.video_id, kind.value))
        self.enqueue(NOTIFY, (event.to_dict(),))

    def notify_end(self, out: Outcome) -> None:
        """Announce the chain's end to NOTIFY_URL when ``out`` is the transition that ended
        it: one transition does, so the announcement goes out once (the runner's too)."""
        if not out.ended or self.settings.notify_url is None:
            return
        view = out.chain.view(self.videos.of([out.chain]))
        kind = {
            "succeeded": EventType.CHAIN_SUCCEEDED,
            "cancelled": EventType.CHAIN_CANCELLED,
        }.get(view["status"], EventType.CHAIN_FAILED)
        # A resumed chain ends again: each end is an event of its own.
        again = (out.chain.resumed,) if out.chain.resumed else ()
        event = new_event(kind, view, event_id=event_id(out.chain.id, "end", *again))
        self.enqueue(NOTIFY, (event.to_dict(),))


def _warned(record: VideoRecord) -> VideoRecord:
    return replace(record, warned=True)


__all__ = ["Archiver", "Stored", "VideoGone", "VideoState"]
