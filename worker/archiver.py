"""Archiving: provider URL -> verified object in storage, for chains and for any other task.

Every video is archived from its record (``worker.state.videos``) by ``archive_video``, the one
download-and-store path. A chain's videos are recorded by the transition that made them;
videos of tasks this service did not submit (named by an archive callback or by
``POST /archive``) are confirmed by a query and recorded by ``archive_task``. The sweep takes
the pending ones nearest their deadline first, warns inside ``ARCHIVE_WARN_SECONDS`` and marks
the expired ones lost. A chain's video that settles tells its chain in the same transaction
(``Store.settle``), which may end the chain: ``notify_end`` announces that, once. With
``ARCHIVE_KEEP=final`` a chain that succeeded is then pruned (``supersede``): the files of the
videos its final one contains are deleted, their records kept as ``superseded``.
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
from worker.core.chain import Chain, ChainStatus, Outcome
from worker.core.retention import Prune, prune_plan, unfinished_plan
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
    superseded,
    superseding,
    unsafe_id,
)
from worker.core.webhooks import Destination, destinations
from worker.outbound.download import (
    Downloaded,
    DownloadPermanent,
    DownloadRetryable,
    download_into,
)
from worker.outbound.netguard import guarded_session
from worker.outbound.notify import Event, EventType, event_id, new_event
from worker.settings import DOWNLOAD_ATTEMPTS, Settings
from worker.state import Also
from worker.state.chains import Store, UnknownChain
from worker.state.metrics import Metrics
from worker.state.videos import Videos
from worker.storage import Storage
from worker.storage.errors import StorageError
from worker.tasknames import ARCHIVE_VIDEO, NOTIFY, SUPERSEDE

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
        self.metrics = Metrics(chains.redis, chains.keys, clock=clock)
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
            task = self.metrics.query(lambda: self.provider.get(TaskKind(kind), task_id))
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
        started = time.monotonic()
        try:
            stored = self.store(record)
        except DownloadRetryable as exc:
            reason, delay = str(exc), retry.delay(retry.Kind.ARCHIVE, attempt + 1)
            log.warning(
                "archive: video %s not downloaded (%s); again in %.0f s",
                video_id,
                reason,
                delay,
                extra=_fields(record, "video.retry"),
            )
            self.videos.update(video_id, lambda r: retry_at(r, reason, self.clock() + delay))
            return delay
        except (DownloadPermanent, KlingError) as exc:
            self._lost(video_id, str(exc))
            return None
        counted = self.metrics.download_counted(stored.bytes, time.monotonic() - started)
        log.info(
            "archive: video %s archived (%d bytes) at %s",
            video_id,
            stored.bytes,
            stored.location,
            extra=_fields(record, "video.archived"),
        )
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
            also=counted,
            hint=record,  # as the claim wrote it: no read of it before the commit
        )
        return None

    def _lost(self, video_id: str, reason: str) -> None:
        if self._settle(video_id, lambda r: lost(r, reason), EventType.VIDEO_LOST):
            log.error(
                "archive: video %s is lost: %s",
                video_id,
                reason,
                extra={"video_id": video_id, "event": "video.lost"},
            )

    def _settle(
        self,
        video_id: str,
        change: Callable[[VideoRecord], VideoRecord],
        kind: EventType,
        *,
        also: Also | None = None,
        hint: VideoRecord | None = None,
    ) -> bool:
        """Settle the record (telling its chain, if any), then announce it; False when it was
        settled already."""
        done = self.chains.settle(video_id, change, also=also, hint=hint)
        if done.changed:
            self.notify(kind, done.record, done.chain.chain if done.chain is not None else None)
        if done.chain is not None:
            self.notify_end(done.chain)
            self.prune_later(done.chain)
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
                    self.notify(EventType.VIDEO_AT_RISK, warned, self._chain_of(record))
            if record.claimed_at is not None and now - record.claimed_at < lease:
                continue  # a worker holds it
            _, handed = self.videos.update(record.video_id, lambda r: queue(r, now, hold))
            if not handed:
                continue
            self.enqueue(ARCHIVE_VIDEO, (record.video_id,))
            queued += 1
        return queued

    # -- events: to NOTIFY_URL, and a chain's to its own webhook_url ---------------------------
    def notify(
        self, kind: EventType, record: VideoRecord | None, chain: Chain | None = None
    ) -> None:
        """Announce ``record`` (as just written) to NOTIFY_URL, if one is set; a chain's video
        (``chain``: its chain) with the chain's metadata, to the chain's webhook_url too."""
        where = self._destinations(kind, chain)
        if not where or record is None:
            return
        data = record.view(self.clock(), self.settings.archive_warn_seconds)
        if chain is not None:
            data["metadata"] = chain.spec.metadata
        self._send(new_event(kind, data, event_id=event_id(record.video_id, kind.value)), where)

    def notify_end(self, out: Outcome) -> None:
        """Announce what the transition ``out`` did to its chain: each step it made succeed
        (``chain.step_succeeded``), and the chain's end when ``out`` is the transition that
        ended it. One transition does each, so each announcement goes out once (the
        runner's too); its id is deterministic all the same."""
        chain = out.chain
        records: dict[str, VideoRecord] | None = None
        step_where = self._destinations(EventType.CHAIN_STEP_SUCCEEDED, chain)
        for index in out.succeeded if step_where else ():
            records = self.videos.of([chain]) if records is None else records
            view = {**chain.view(records), "step_index": index}
            step_id = event_id(chain.id, "step", index, "succeeded")
            event = new_event(EventType.CHAIN_STEP_SUCCEEDED, view, event_id=step_id)
            self._send(event, step_where)
        if not out.ended:
            return
        kind = {
            ChainStatus.SUCCEEDED: EventType.CHAIN_SUCCEEDED,
            ChainStatus.CANCELLED: EventType.CHAIN_CANCELLED,
        }.get(chain.status, EventType.CHAIN_FAILED)
        where = self._destinations(kind, chain)
        if not where:
            return
        view = chain.view(self.videos.of([chain]) if records is None else records)
        # A resumed chain ends again: each end is an event of its own.
        again = (chain.resumed,) if chain.resumed else ()
        self._send(new_event(kind, view, event_id=event_id(chain.id, "end", *again)), where)

    def _destinations(self, kind: EventType, chain: Chain | None) -> tuple[Destination, ...]:
        notify_url = self.settings.notify_url
        spec = chain.spec if chain is not None else None
        return destinations(
            kind,
            notify_url=None if notify_url is None else str(notify_url),
            webhook_url=spec.webhook_url if spec is not None else None,
            webhook_events=spec.webhook_events if spec is not None else None,
        )

    def _send(self, event: Event, where: tuple[Destination, ...]) -> None:
        """One delivery task per destination, each retried on its own (``worker.tasks.notify``):
        NOTIFY_URL's as ``(event,)``, as ever; a chain's own as ``(event, url)``."""
        payload = event.to_dict()
        for destination in where:
            url = destination.url
            self.enqueue(NOTIFY, (payload,) if url is None else (payload, url))

    def _chain_of(self, record: VideoRecord) -> Chain | None:
        if record.chain_id is None:
            return None
        try:
            return self.chains.get(record.chain_id)
        except UnknownChain:
            return None

    # -- ARCHIVE_KEEP=final: delete what a succeeded chain's final video supersedes -------------
    def prune_later(self, out: Outcome) -> None:
        """Queue the prune of the chain that ``out`` made succeed (``ARCHIVE_KEEP=final``).
        The store owed it in that same transaction, so the sweep hands it out if this is lost."""
        if self.settings.archive_keep != "final":
            return
        if out.ended and out.chain.status is ChainStatus.SUCCEEDED:
            self.enqueue(SUPERSEDE, (out.chain.id,))

    def sweep_prunes(self) -> int:
        """Hand out the prunes owed whose fast path did not finish them."""
        hold = self.settings.poll_after_seconds
        owed = self.chains.take_prunes(now=self.clock(), hold=hold)
        for chain_id in owed:
            self.enqueue(SUPERSEDE, (chain_id,))
        return len(owed)

    def supersede(self, chain_id: str, *, attempt: int = 0) -> float | None:
        """Delete the files of the videos that the succeeded chain's final video contains
        (``worker.core.retention.prune_plan``); a delay when storage failed for now.

        Each record is marked ``superseding`` before its files are deleted and ``superseded``
        after, so no record calls a file that may be gone archived, and a run cut short
        anywhere is finished by the next one: deleting what is gone changes nothing. Nothing
        is deleted unless the final video's record is archived and its object is in this
        storage, whole.
        """
        if self.settings.archive_keep != "final":
            self.chains.prune_done(chain_id)  # switched off since it was owed: keep it all
            return None
        plan, records = self._plan(chain_id)
        try:
            problem = plan if isinstance(plan, str) else self._unsafe_final(records[plan.final])
            if problem is not None:
                log.error("prune %s: nothing deleted: %s", chain_id, problem)
                self.chains.prune_done(chain_id)
                return None
            assert isinstance(plan, Prune)
            gone = [v for v in plan.videos if self._supersede(v, plan.final, records[v])]
        except (StorageError, OSError) as exc:
            delay = retry.delay(retry.Kind.ARCHIVE, attempt + 1)
            log.warning("prune %s: storage failed (%s); again in %.0f s", chain_id, exc, delay)
            return delay
        log.info("prune %s: kept %s, deleted %d video(s) it holds", chain_id, plan.final, len(gone))
        self.chains.prune_done(chain_id)
        return None

    def _plan(self, chain_id: str) -> tuple[Prune | str, dict[str, VideoRecord]]:
        """The chain's prune and the records it reads; for a chain whose document expired
        meanwhile, what its records show was left half done."""
        try:
            chain = self.chains.get(chain_id)
        except UnknownChain:
            marked = self.videos.recent(state=VideoState.SUPERSEDING, limit=500, before=None)
            half = [r for r in marked if r.chain_id == chain_id]
            records = {r.video_id: r for r in half}
            for final in {r.superseded_by for r in half if r.superseded_by is not None}:
                found = self.videos.get(final)
                if found is not None:
                    records[final] = found
            return unfinished_plan(chain_id, half, records), records
        records = self.videos.of([chain])
        return prune_plan(chain, records), records

    def _unsafe_final(self, final: VideoRecord) -> str | None:
        """Why the final video is not safely stored here, or None when it is."""
        name = f"{final.video_id}.mp4"
        here = self.storage.location(name)
        if final.location != here:
            return f"its final video {final.video_id} is at {final.location}, not {here}"
        size = self.storage.size(name)
        if size is None or size != final.bytes:
            held = "missing" if size is None else f"{size} bytes"
            return f"its final video {here} is {held}, its record says {final.bytes} bytes"
        return None

    def _supersede(self, video_id: str, final: str, record: VideoRecord) -> bool:
        """Mark, delete, mark one video; False when it is not this storage's to delete."""
        name = f"{video_id}.mp4"
        if record.location is not None and record.location != self.storage.location(name):
            log.warning("prune: video %s is kept: it is at %s", video_id, record.location)
            return False
        marked, _ = self.videos.update(video_id, lambda r: superseding(r, final))
        if marked is None or marked.state is not VideoState.SUPERSEDING:
            return False  # changed meanwhile: not ours to delete
        self.storage.delete(name)
        self.storage.delete(f"{video_id}.json")
        self.videos.update(video_id, lambda r: superseded(r, self.clock()))
        return True


def _fields(record: VideoRecord, event: str) -> dict[str, Any]:
    """A log record's ``extra=``: the fields ``LOG_FORMAT=json`` lines carry (worker.logs)."""
    fields: dict[str, Any] = {"video_id": record.video_id, "task_id": record.task_id}
    fields["event"] = event
    if record.chain_id is not None:
        fields |= {"chain_id": record.chain_id, "step": record.step}
    return fields


def _warned(record: VideoRecord) -> VideoRecord:
    return replace(record, warned=True)


__all__ = ["Archiver", "Stored", "VideoGone", "VideoState"]
