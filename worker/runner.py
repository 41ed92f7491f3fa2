"""The I/O around a chain: talk to the provider and the archive, record what happened.

Each method reads input, runs the pure core through an atomic ``Store.transition`` and does
the I/O the outcome asks for. It returns ``None`` when finished, or a delay in seconds after
which it wants to run again (the Celery task turns that into a retry).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from kling.client import KlingClient
from kling.errors import (
    AmbiguousCreate,
    InvalidRequest,
    KlingError,
    MalformedReply,
    PermanentError,
    RetryableError,
)
from kling.models import ExtendRequest, Task, TaskKind, Text2VideoRequest
from worker import tokens
from worker.archiver import NOTIFY_TASK, Archiver
from worker.chain import (
    Action,
    ArchiveClaim,
    Archived,
    ArchiveFailed,
    ArchiveRetry,
    ArchiveVideo,
    Chain,
    Claim,
    Event,
    NeedsAttention,
    Outcome,
    Step,
    StepStatus,
    SubmitFailed,
    SubmitRetry,
    SubmitStep,
    Submitted,
    TaskUpdate,
    Verdict,
)
from worker.download import DownloadPermanent, DownloadRetryable, backoff
from worker.notify import EventType, event_id, new_event
from worker.settings import Settings
from worker.store import Store
from worker.videos import VideoRecord

log = logging.getLogger(__name__)

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RACE_RETRIES = 20  # a callback may beat the create reply home; wait for the task id this often

Enqueue = Callable[[str, tuple[Any, ...]], None]

SUBMIT_TASK = "kc.submit_step"
REFRESH_TASK = "kc.refresh_step"
ARCHIVE_TASK = "kc.archive_video"


def describe(exc: KlingError) -> str:
    code = f" (code {exc.code})" if exc.code is not None else ""
    return f"{exc.message}{code}"


class Runner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        provider: KlingClient,
        enqueue: Enqueue,
        archiver: Archiver,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.enqueue = enqueue
        self.archiver = archiver
        self.clock = clock

    # -- plumbing ------------------------------------------------------------------------------
    def dispatch(self, chain_id: str, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case SubmitStep(index):
                    self.enqueue(SUBMIT_TASK, (chain_id, index))
                case ArchiveVideo(video_id):
                    self.enqueue(ARCHIVE_TASK, (chain_id, video_id))

    def _request(self, chain: Chain, step: Step) -> ExtendRequest | Text2VideoRequest:
        spec = chain.spec
        callback = tokens.callback_url(
            self.settings.public_base(), self.settings.secret(), chain.id, step.index
        )
        external = step.external_task_id if self.settings.kling_external_task_id else None
        if step.kind == TaskKind.TEXT2VIDEO.value:
            return Text2VideoRequest(
                prompt=step.prompt or "",
                negative_prompt=spec.negative_prompt,
                cfg_scale=spec.cfg_scale,
                duration=spec.text_duration,
                callback_url=callback,
                external_task_id=external,
            )
        return ExtendRequest(
            video_id=step.parent_video_id or "",
            task_id=step.parent_task_id,
            prompt=step.prompt,
            negative_prompt=spec.negative_prompt,
            cfg_scale=spec.cfg_scale,
            callback_url=callback,
            external_task_id=external,
        )

    def _record(self, chain_id: str, index: int, task: Task) -> None:
        out = self._apply(chain_id, Submitted(index, task))
        if task.status.terminal:  # a lookup found it finished already: that reply is a query
            out = self._apply(chain_id, TaskUpdate(index, task))
        self.dispatch(chain_id, out.actions)

    # -- submit one step -------------------------------------------------------------------------
    def submit(self, chain_id: str, index: int, *, owner: str, attempt: int = 0) -> float | None:
        lease = self.settings.submit_lease_seconds
        out = self._apply(chain_id, Claim(index, owner, lease))
        if out.verdict is Verdict.SKIP:
            return None
        step = out.chain.step(index)
        kind = TaskKind(step.kind)
        if out.verdict is Verdict.RECONCILE:
            if not self.settings.kling_external_task_id:
                self._apply(
                    chain_id,
                    NeedsAttention(
                        index,
                        "a create request for this step may have reached the provider and been "
                        "billed, and this provider cannot be asked about it by external_task_id; "
                        "check the account's task list before starting a new chain from the last "
                        "good video",
                    ),
                )
                return None
            try:
                found = self.provider.find_by_external_id(kind, step.external_task_id)
            except (RetryableError, MalformedReply) as exc:
                log.warning("step %s/%s: lookup failed, will retry: %s", chain_id, index, exc)
                return backoff(attempt + 1)
            except PermanentError as exc:
                self._apply(
                    chain_id, NeedsAttention(index, f"looking up the step failed: {describe(exc)}")
                )
                return None
            if found is not None:
                log.info(
                    "step %s/%s: found task %s, not resubmitting", chain_id, index, found.task_id
                )
                self._record(chain_id, index, found)
                return None
            log.info("step %s/%s: the provider has no such task; sending it", chain_id, index)

        try:
            request = self._request(out.chain, step)
            task = self.provider.create(kind, request)
        except InvalidRequest as exc:
            self._apply(chain_id, SubmitFailed(index, describe(exc)))
            return None
        except (AmbiguousCreate, MalformedReply) as exc:
            # The request may have created a billed task. Keep the claim; the retry (same
            # owner) reconciles by external_task_id instead of sending again.
            log.warning("step %s/%s: create reply lost (%s); will look it up", chain_id, index, exc)
            return self.settings.recheck_after_seconds
        except RetryableError as exc:
            delay = backoff(attempt + 1)
            now = self.clock()
            first = step.first_try_at or now
            after = self._apply(
                chain_id,
                SubmitRetry(
                    index,
                    describe(exc),
                    retry_at=now + delay,
                    deadline=first + self.settings.retry_deadline_seconds,
                ),
            )
            return delay if not after.chain.step(index).status.done else None
        except PermanentError as exc:
            if self._exists_already(kind, step.external_task_id, exc):
                return self.submit(chain_id, index, owner=owner, attempt=attempt)
            self._apply(chain_id, SubmitFailed(index, describe(exc), exc.code))
            return None
        self._record(chain_id, index, task)
        return None

    def _exists_already(self, kind: TaskKind, external_id: str, exc: PermanentError) -> bool:
        """A parameter error may be the provider refusing a duplicate external_task_id: the
        step's first create landed after all. The claim is still ours, so the next pass
        reconciles and records that task instead of failing the step."""
        if not self.settings.kling_external_task_id or exc.code not in (1200, 1201):
            return False
        try:
            return self.provider.find_by_external_id(kind, external_id) is not None
        except KlingError:
            return False

    # -- learn how a step is doing ---------------------------------------------------------------
    def refresh(self, chain_id: str, index: int, *, attempt: int = 0) -> float | None:
        step = self.store.get(chain_id).step(index)
        if step.status.done:
            return None
        if step.task_id is None:
            # Only a step mid-submit can be racing its own create reply; anything else is news
            # about nothing (the chain's schedule polls every real task anyway).
            if step.status is not StepStatus.SUBMITTING:
                return None
            # The callback beat the create reply home, so the create reached the provider:
            # ask for it by external_task_id now rather than wait for the submit task to
            # record the reply. Both may record it; Submitted is idempotent.
            if self._found_early(chain_id, step):
                return None
            return 0.5 if attempt < RACE_RETRIES else None
        try:
            task = self.provider.get(TaskKind(step.kind), step.task_id)
        except (RetryableError, MalformedReply) as exc:
            log.warning("step %s/%s: query failed: %s", chain_id, index, exc)
            return backoff(attempt + 1) if attempt < 5 else None  # the sweep polls again later
        except PermanentError as exc:
            log.error("step %s/%s: query refused: %s", chain_id, index, describe(exc))
            return None
        out = self._apply(chain_id, TaskUpdate(index, task))
        self.dispatch(chain_id, out.actions)
        return None

    def _found_early(self, chain_id: str, step: Step) -> bool:
        if not self.settings.kling_external_task_id:
            return False
        try:
            found = self.provider.find_by_external_id(TaskKind(step.kind), step.external_task_id)
        except KlingError as exc:
            log.info("step %s/%s: early lookup failed: %s", chain_id, step.index, exc)
            return False
        if found is None:
            return False
        self._record(chain_id, step.index, found)
        return True

    # -- archive one video -----------------------------------------------------------------------
    def archive(
        self, chain_id: str, video_id: str, *, owner: str, attempt: int = 0
    ) -> float | None:
        lease = self.settings.archive_lease_seconds
        out = self._apply(chain_id, ArchiveClaim(video_id, owner, lease))
        if out.verdict is not Verdict.GO:
            return None
        chain = out.chain
        entry = chain.entry(video_id)
        step = chain.step(entry.step)
        now = self.clock()
        created = entry.created_at or now
        record = VideoRecord(
            video_id=video_id,
            task_id=step.task_id or "",
            kind=step.kind,
            url=entry.url,
            created_at=created,
            known_at=now,
            duration=entry.duration,
            parent_video_id=step.parent_video_id,
            prompt=step.prompt,
            chain_id=chain_id,
            origin="chain",
        )
        if not SAFE_ID.match(video_id):
            self._archive_failed(chain_id, record, f"video id {video_id!r} is not a safe file name")
            return None
        sidecar = {
            "chain_id": chain_id,
            "step": step.index,
            "kind": step.kind,
            "task_id": step.task_id,
            "parent_video_id": step.parent_video_id,
            "parent_task_id": step.parent_task_id,
            "prompt": step.prompt,
            "duration": entry.duration,
        }
        try:
            stored = self.archiver.store(video_id, entry.url, created, sidecar)
        except DownloadRetryable as exc:
            delay = backoff(attempt + 1, base=2.0, cap=600.0)
            self._apply(chain_id, ArchiveRetry(video_id, str(exc), now + delay))
            return delay
        except DownloadPermanent as exc:
            self._archive_failed(chain_id, record, str(exc))
            return None
        self._apply(chain_id, Archived(video_id, stored.location, stored.bytes, stored.sha256))
        self.archiver.remember_chain_video(record, stored, None)
        return None

    def _archive_failed(self, chain_id: str, record: VideoRecord, message: str) -> None:
        self._apply(chain_id, ArchiveFailed(record.video_id, message))
        if SAFE_ID.match(record.video_id):
            self.archiver.remember_chain_video(record, None, message)

    def _apply(self, chain_id: str, event: Event) -> Outcome:
        out = self.store.transition(chain_id, event)
        self._ended(out)
        return out

    def _ended(self, out: Outcome) -> None:
        """Tell NOTIFY_URL when this transition is the one that ended the chain."""
        if not out.ended or self.settings.notify_url is None:
            return
        view = out.chain.view()
        kind = (
            EventType.CHAIN_SUCCEEDED if view["status"] == "succeeded" else EventType.CHAIN_FAILED
        )
        event = new_event(kind, view, event_id=event_id(out.chain.id, "end"))
        self.enqueue(NOTIFY_TASK, (event.to_dict(),))

    # -- the safety net --------------------------------------------------------------------------
    def sweep(self) -> int:
        """Enqueue owed work (quiet tasks to poll, stalled submits and downloads)."""
        s = self.settings
        lock = f"{s.key_prefix}sweep-lock"
        if not self.store.redis.set(lock, "1", nx=True, px=int(s.sweep_seconds * 800)):
            return 0  # another beat already swept in this interval
        hold = min(s.poll_after_seconds, s.submit_lease_seconds)
        items = self.store.take_due(now=self.clock(), hold=hold)
        for item in items:
            kind, chain_id, ref = item.split("|", 2)
            if kind == "poll":
                self.enqueue(REFRESH_TASK, (chain_id, int(ref)))
            elif kind == "submit":
                self.enqueue(SUBMIT_TASK, (chain_id, int(ref)))
            elif kind == "archive":
                self.enqueue(ARCHIVE_TASK, (chain_id, ref))
        videos = self.archiver.sweep()
        if items or videos:
            log.info("sweep: enqueued %d owed chain item(s), %d video(s)", len(items), videos)
        return len(items) + videos
