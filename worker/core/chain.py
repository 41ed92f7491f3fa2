"""The extension chain: its state and every decision about it, with no I/O.

A chain is a JSON document. Every change is ``apply(chain, event, now) -> Outcome``: a new
chain plus the work to enqueue once the new state is committed. The Redis shell
(``worker.state.chains``) runs ``apply`` inside an optimistic transaction (compare-and-set),
so concurrent callbacks, duplicate deliveries and retries all see one linear history.

What must happen next (poll a quiet task, submit a step) is *derived* from the state by
``schedule()``; the store mirrors it into a sorted set that the beat sweep reads, so a process
that dies between committing and enqueueing never loses work. The chain's videos are archived
through their records (``worker.core.videos``), registered in the same transaction as the
step that made them; the chain keeps only which of them are settled.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from kling.models import Task, TaskKind, TaskStatus
from worker.core import budget
from worker.core.videos import VideoRecord, VideoState, archive_entry, unsafe_id

MAX_TOTAL_SECONDS = 180.0
MAX_STEP_SECONDS = 5.0
MIN_STEP_SECONDS = 4.0  # an extension adds about 4-5 s: the ceiling counts 4 s per step
PLAUSIBLE_GROWTH_SECONDS = 3.0  # an extension reported to add less is not believed
TEXT2VIDEO_SECONDS = (5, 10)


class ChainStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EndReason(StrEnum):
    TARGET_REACHED = "target_reached"
    STEPS_DONE = "steps_done"
    CAP_REACHED = "cap_reached"
    BUDGET_REACHED = "budget_reached"  # the next step would pass the chain's max_units


class StepStatus(StrEnum):
    PENDING = "pending"  # not yet sent; safe to send
    SUBMITTING = "submitting"  # a worker claimed it; a create may be in flight
    SUBMITTED = "submitted"  # the provider accepted it
    PROCESSING = "processing"
    SUCCEED = "succeed"
    FAILED = "failed"
    ATTENTION = "attention"  # a create may have been billed and cannot be confirmed

    @property
    def active(self) -> bool:
        return self in (StepStatus.SUBMITTED, StepStatus.PROCESSING)

    @property
    def done(self) -> bool:
        return self in (StepStatus.SUCCEED, StepStatus.FAILED, StepStatus.ATTENTION)


class Verdict(StrEnum):
    """What a worker that asked to act on a step should do."""

    GO = "go"  # you hold the claim: send the create
    RECONCILE = "reconcile"  # an earlier attempt may have been billed: look it up first
    SKIP = "skip"  # nothing to do (done already, or someone else holds a live claim)


@dataclass
class Spec:
    """What the user asked for; fixed at creation."""

    video_id: str | None = None
    task_id: str | None = None
    text_prompt: str | None = None
    text_duration: int = 5
    source_duration: float | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    prompts: list[str] = field(default_factory=list)
    target_seconds: float | None = None
    steps: int | None = None
    max_units: str | None = None  # the most the chain may spend, in the provider's units
    # The caller's own webhook (worker.core.webhooks), and what it filters; echoed metadata.
    webhook_url: str | None = None
    webhook_events: list[str] | None = None  # None: every event about the chain
    metadata: dict[str, Any] | None = None


@dataclass
class Step:
    index: int
    kind: str
    external_task_id: str
    status: StepStatus = StepStatus.PENDING
    prompt: str | None = None
    parent_video_id: str | None = None
    parent_task_id: str | None = None
    task_id: str | None = None
    video_id: str | None = None
    video_url: str | None = None
    duration: float | None = None
    video_created_at: float | None = None
    error: str | None = None
    error_code: int | None = None
    owner: str | None = None
    claimed_at: float | None = None
    first_try_at: float | None = None
    retry_at: float | None = None
    news_at: float | None = None
    # A query planned for then (``worker.core.polling``): the chain's schedule polls the step
    # at this time if it is sooner than ``news_at`` + POLL_AFTER_SECONDS. None: no plan.
    look_at: float | None = None
    units: str | None = None  # what the provider reports the finished task cost; None: unknown
    # When the step reached each stage (``_stamp``); None: not (yet), or stored before these.
    submitted_at: float | None = None
    processing_at: float | None = None
    ended_at: float | None = None


def step_name(chain_id: str, index: int) -> str:
    """How ``Store.claim_task`` names the step that recorded a task."""
    return f"{chain_id}:{index}"


# Statuses before the end: a callback claiming one asks for no action once the step knows
# its task (only a terminal status leads to any).
EARLY_STATUSES = frozenset(s.value for s in TaskStatus if not s.terminal)


@dataclass
class Chain:
    id: str
    spec: Spec
    created_at: float
    updated_at: float
    steps: list[Step] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)  # its videos archived or lost, by id
    end_reason: EndReason | None = None
    error: str | None = None
    waiting: str | None = None
    cancelled_at: float | None = None  # a cancel was accepted: no create is sent from then on
    resumed: int = 0  # times it was resumed after failing or being cancelled

    # -- derived views -------------------------------------------------------------------
    @property
    def duration(self) -> float | None:
        """Seconds of the newest good video (the source's, if known, before any step)."""
        for step in reversed(self.steps):
            if step.status is StepStatus.SUCCEED:
                return step.duration
        return self.spec.source_duration

    @property
    def video_ids(self) -> list[str]:
        """Every video the chain made, oldest first; each has a record in the archive."""
        return [s.video_id for s in self.steps if s.video_id is not None]

    @property
    def in_flight(self) -> Step | None:
        """The step a create may have been sent for and that has not ended, if any."""
        live = (StepStatus.SUBMITTING, StepStatus.SUBMITTED, StepStatus.PROCESSING)
        return next((s for s in self.steps if s.status in live), None)

    @property
    def status(self) -> ChainStatus:
        ended = self.end_reason is not None or self.error is not None
        if self.cancelled_at is not None:  # cancelled once its paid step ended and is archived
            done = self.in_flight is None and set(self.video_ids) <= set(self.settled)
            return ChainStatus.CANCELLED if done else ChainStatus.RUNNING
        if ended and set(self.video_ids) <= set(self.settled):
            return ChainStatus.FAILED if self.error is not None else ChainStatus.SUCCEEDED
        if not ended and all(s.first_try_at is None for s in self.steps):
            return ChainStatus.QUEUED
        return ChainStatus.RUNNING

    def step(self, index: int) -> Step:
        if not 0 <= index < len(self.steps):
            raise KeyError(f"chain {self.id} has no step {index}")
        return self.steps[index]

    # -- serialisation -------------------------------------------------------------------
    def to_json(self) -> str:
        # By hand rather than dataclasses.asdict, which deep-copies and is 8x slower: every
        # transition writes the chain. The parts are flat; StrEnums encode as their values.
        data = {
            **vars(self),
            "spec": vars(self.spec),
            "steps": [vars(s) for s in self.steps],
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Chain:
        data = json.loads(raw)
        return cls(
            id=data["id"],
            spec=Spec(**data["spec"]),
            created_at=data["created_at"],
            updated_at=data["updated_at"],
            steps=[Step(**{**s, "status": StepStatus(s["status"])}) for s in data["steps"]],
            settled=data["settled"] if "settled" in data else _settled_before(data),
            end_reason=EndReason(data["end_reason"]) if data["end_reason"] else None,
            error=data["error"],
            waiting=data["waiting"],
            cancelled_at=data.get("cancelled_at"),
            resumed=data.get("resumed", 0),
        )

    def view(self, records: Mapping[str, VideoRecord]) -> dict[str, Any]:
        """The chain as the HTTP API shows it; ``records``: its videos' (``Videos.of``)."""
        return {
            "id": self.id,
            "status": self.status.value,
            "end_reason": self.end_reason.value if self.end_reason else None,
            "error": self.error,
            "waiting": _cancelling(self) if self.cancelled_at is not None else self.waiting,
            "cancelled_at": self.cancelled_at,
            "duration": self.duration,
            "target_seconds": self.spec.target_seconds,
            "steps_requested": self.spec.steps,
            "metadata": self.spec.metadata,
            "max_units": self.spec.max_units,
            "source": {
                "video_id": self.spec.video_id,
                "task_id": self.spec.task_id,
                "text_prompt": self.spec.text_prompt,
            },
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "steps": [
                {
                    "index": s.index,
                    "kind": s.kind,
                    "task_id": s.task_id,
                    "status": s.status.value,
                    "parent_video_id": s.parent_video_id,
                    "video_id": s.video_id,
                    "duration": s.duration,
                    "error": s.error,
                    "units": s.units,
                    "first_try_at": s.first_try_at,
                    "submitted_at": s.submitted_at,
                    "processing_at": s.processing_at,
                    "ended_at": s.ended_at,
                }
                for s in self.steps
            ],
            **self.units_view(),
            "archive": [
                archive_entry(s.video_id, s.duration, records.get(s.video_id))
                for s in self.steps
                if s.video_id is not None
            ],
        }

    def units_view(self) -> dict[str, Any]:
        """The chain's cost: ``units``, the sum of its steps' reported costs (None when no
        step reported one), and ``units_complete``, whether every step sent to the provider
        reported its cost (False while one is still running or a provider left it out)."""
        billed = [s for s in self.steps if s.task_id is not None]
        known = [Decimal(s.units) for s in billed if s.units is not None]
        return {
            "units": f"{sum(known, Decimal(0)):f}" if known else None,
            "units_complete": bool(billed) and len(known) == len(billed),
        }


def _cancelling(chain: Chain) -> str | None:
    step = chain.in_flight
    if step is not None:
        return f"cancelling: following step {step.index} to its end (paid for)"
    if chain.status is ChainStatus.RUNNING:
        return "cancelling: archiving the chain's videos"
    return None


def _settled_before(data: dict[str, Any]) -> list[str]:
    """A document written while chains held their own archive entries: the settled ones."""
    return [a["video_id"] for a in data.get("archive", ()) if a["status"] != "pending"]


def video_record(chain: Chain, video_id: str, now: float) -> VideoRecord:
    """The pending archive record of a video the chain made, as ``ArchiveVideo`` asks for it."""
    step = next(s for s in chain.steps if s.video_id == video_id)
    return VideoRecord(
        video_id=video_id,
        task_id=step.task_id or "",
        kind=step.kind,
        url=step.video_url or "",
        created_at=step.video_created_at or now,
        known_at=now,
        duration=step.duration,
        parent_video_id=step.parent_video_id,
        prompt=step.prompt,
        chain_id=chain.id,
        step=step.index,
        parent_task_id=step.parent_task_id,
        origin="chain",
        queued_at=now,  # the fast path enqueues it right after the commit
    )


# -- pure rules ------------------------------------------------------------------------------
def fits_under_cap(duration: float) -> bool:
    """True when one more extension (at most 5 s) cannot take the video past 180 s."""
    return duration + MAX_STEP_SECONDS <= MAX_TOTAL_SECONDS


def extension_ceiling(start: float | None) -> int:
    """The most extensions a chain from a video of ``start`` seconds may ever pay for.

    ``ceil((180 - start) / 4)``: more than any honest run needs (each real extension adds at
    least 4 s), so it only binds when the reported durations do not add up. An unknown start
    counts as 0 s (45 extensions).
    """
    remaining = MAX_TOTAL_SECONDS - (start or 0.0)
    return max(0, math.ceil(round(remaining / MIN_STEP_SECONDS, 6)))


def duration_doubt(duration: float | None, parent: float | None, *, extension: bool) -> str | None:
    """Why a finished step's reported length cannot be believed, or None when it can.

    A result with no duration is never believed: without it neither the target nor the 180 s
    cap can be checked. An extension must be at least 3 s longer than its parent when the
    parent's length is known (each adds about 4-5 s); a relay that reports only the added
    segment, or the parent's length again, fails here instead of paying on forever.
    """
    if duration is None:
        what = "the extended video" if extension else "the video"
        parent_note = f" (its parent was {_seconds(parent)})" if extension else ""
        return (
            f"the provider reports no duration for {what}{parent_note}: without it the chain "
            "cannot keep under the 180 s cap; stopping before paying for more"
        )
    if extension and parent is not None and round(duration - parent, 3) < PLAUSIBLE_GROWTH_SECONDS:
        return (
            f"the provider reports the extended video as {duration:.1f} s, its parent was "
            f"{parent:.1f} s: an extension adds about 4-5 s, so this provider's durations "
            "cannot be trusted; stopping before paying for more"
        )
    return None


def _seconds(value: float | None) -> str:
    return "of unknown length" if value is None else f"{value:.1f} s"


def end_reason_after(
    spec: Spec, duration: float | None, extensions_done: int, *, ceiling: int | None = None
) -> EndReason | None:
    """Why the chain stops now, or None when one more extension is due.

    ``ceiling`` is the most extensions the chain may pay for (``chain_ceiling``; by default
    ``extension_ceiling(spec.source_duration)``). A target or step count the user set wins over
    the cap when both hold at once.
    """
    if ceiling is None:
        ceiling = extension_ceiling(spec.source_duration)
    if spec.target_seconds is not None and duration is not None and duration >= spec.target_seconds:
        return EndReason.TARGET_REACHED
    if spec.steps is not None and extensions_done >= spec.steps:
        return EndReason.STEPS_DONE
    if duration is not None and not fits_under_cap(duration):
        return EndReason.CAP_REACHED
    if extensions_done >= ceiling:
        return EndReason.CAP_REACHED
    return None


def chain_ceiling(chain: Chain) -> int:
    """``extension_ceiling`` from the chain's known start length, else from its first result.

    The start is ``source_duration`` when the user gave it; otherwise the first step's result
    is taken as the start (a text2video video, or the first extension, which then counts as
    one extension already paid). Before any of that is known, the worst case: 45.
    """
    if chain.spec.source_duration is not None:
        return extension_ceiling(chain.spec.source_duration)
    first = chain.steps[0]
    if first.status is StepStatus.SUCCEED and first.duration is not None:
        paid = 1 if first.kind == TaskKind.VIDEO_EXTEND.value else 0
        return paid + extension_ceiling(first.duration)
    return extension_ceiling(None)


def external_task_id(chain_id: str, index: int) -> str:
    """Deterministic per step, so "was this step created already?" can be asked."""
    return f"kc-{chain_id}-{index}"


def _extend_prompt(spec: Spec, extension_number: int) -> str | None:
    if extension_number < len(spec.prompts):
        return spec.prompts[extension_number]
    return spec.prompt


def _extensions_done(chain: Chain) -> int:
    return sum(
        1
        for s in chain.steps
        if s.kind == TaskKind.VIDEO_EXTEND.value and s.status is StepStatus.SUCCEED
    )


def _new_extension(chain: Chain, parent_video_id: str | None, parent_task_id: str | None) -> Step:
    index = len(chain.steps)
    number = sum(1 for s in chain.steps if s.kind == TaskKind.VIDEO_EXTEND.value)
    return Step(
        index=index,
        kind=TaskKind.VIDEO_EXTEND.value,
        external_task_id=external_task_id(chain.id, index),
        prompt=_extend_prompt(chain.spec, number),
        parent_video_id=parent_video_id,
        parent_task_id=parent_task_id,
    )


def new_chain(chain_id: str, spec: Spec, now: float) -> Chain:
    """A chain with its first step pending. The spec must already be validated."""
    chain = Chain(id=chain_id, spec=spec, created_at=now, updated_at=now)
    if spec.text_prompt is not None:
        chain.steps.append(
            Step(
                index=0,
                kind=TaskKind.TEXT2VIDEO.value,
                external_task_id=external_task_id(chain_id, 0),
                prompt=spec.text_prompt,
            )
        )
    else:
        chain.steps.append(_new_extension(chain, spec.video_id, spec.task_id))
    return chain


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """A worker asks to submit step ``index``."""

    index: int
    owner: str
    lease: float
    # The account's latest reported cost per task kind: the chain's budget estimates a step
    # it has not yet paid for from it (``worker.core.budget``).
    account_costs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Submitted:
    """The provider accepted (or a lookup found) the create for step ``index``. ``look_at``:
    when to query it, if sooner than POLL_AFTER_SECONDS (``Step.look_at``)."""

    index: int
    task: Task
    look_at: float | None = None


@dataclass(frozen=True)
class SubmitRetry:
    """Nothing was created; try again at ``retry_at``."""

    index: int
    reason: str
    retry_at: float
    deadline: float


@dataclass(frozen=True)
class SubmitFailed:
    index: int
    message: str
    code: int | None = None


@dataclass(frozen=True)
class NeedsAttention:
    """A create may have been billed and the provider cannot tell us: stop, don't pay twice."""

    index: int
    message: str


@dataclass(frozen=True)
class TaskUpdate:
    """The provider's own query reply for step ``index`` (never a raw callback body);
    ``look_at`` as in ``Submitted``."""

    index: int
    task: Task
    look_at: float | None = None


@dataclass(frozen=True)
class VideoSettled:
    """The archive record of the chain's video ``video_id`` is archived, or lost with ``error``."""

    video_id: str
    archived: bool
    error: str | None = None

    @classmethod
    def of(cls, record: VideoRecord) -> VideoSettled:
        return cls(record.video_id, record.state is VideoState.ARCHIVED, record.error)


@dataclass(frozen=True)
class Cancel:
    """The user cancels the chain: no create is sent from now on (``worker.core.control``)."""


@dataclass(frozen=True)
class Resume:
    """The user resumes a failed or cancelled chain with the work that remains."""


@dataclass(frozen=True)
class Release:
    """The claimant of step ``index`` found the chain cancelled before sending: not sent."""

    index: int
    owner: str


@dataclass(frozen=True)
class AwaitSlot:
    """The claimant of step ``index`` found no provider slot free (``worker.core.slots``):
    nothing was sent; the claim goes back and the step waits in line, saying so."""

    index: int
    owner: str
    waiting: str


@dataclass(frozen=True)
class AwaitBudget(AwaitSlot):
    """The claimant of step ``index`` found the account's daily budget spent or reserved
    (``worker.core.budget.admit``): nothing was sent; the step waits, saying so."""


Event = (
    Claim
    | Submitted
    | SubmitRetry
    | SubmitFailed
    | NeedsAttention
    | TaskUpdate
    | VideoSettled
    | Cancel
    | Resume
    | Release
    | AwaitSlot
)


@dataclass(frozen=True)
class SubmitStep:
    index: int


@dataclass(frozen=True)
class ArchiveVideo:
    """Archive a video the chain made: its record is registered with the transition."""

    video_id: str


Action = SubmitStep | ArchiveVideo


@dataclass
class Outcome:
    chain: Chain
    actions: list[Action] = field(default_factory=list)
    verdict: Verdict = Verdict.SKIP
    ended: bool = False  # this event is the one that made the chain succeed, fail or cancel
    refused: str | None = None  # why a Cancel or Resume cannot be done (the API's 409)
    succeeded: list[int] = field(default_factory=list)  # steps this event made succeed


def apply(chain: Chain, event: Event, now: float) -> Outcome:
    """The one way a chain changes. Never mutates ``chain``; stale events change nothing."""
    return evolve(copy.deepcopy(chain), event, now, before=chain)


def evolve(new: Chain, event: Event, now: float, *, before: Chain) -> Outcome:
    """``apply`` on a private copy ``new`` of ``before`` (e.g. parsed anew from the same JSON),
    which it changes in place; ``before`` is left alone."""
    chain = before
    out = Outcome(new)
    match event:
        case Claim():
            _claim(new, event, now, out)
        case Submitted():
            _submitted(new, event, now)
        case SubmitRetry():
            _submit_retry(new, event, now)
        case SubmitFailed():
            step = new.step(event.index)
            if step.status in (StepStatus.PENDING, StepStatus.SUBMITTING):
                step.status = StepStatus.FAILED
                step.error, step.error_code = event.message, event.code
                _fail(new, f"step {event.index}: {event.message}")
        case NeedsAttention():
            step = new.step(event.index)
            if step.status is StepStatus.SUBMITTING:
                step.status = StepStatus.ATTENTION
                step.error = event.message
                _fail(new, f"step {event.index} needs attention: {event.message}")
        case TaskUpdate():
            _task_update(new, event, now, out)
        case VideoSettled():
            _video_settled(new, event)
        case Cancel() | Resume():
            from worker.core.control import command  # the user's, built on the rules here

            out.refused = command(new, event, now, out.actions)
        case Release():
            step = new.step(event.index)
            if step.status is StepStatus.SUBMITTING and step.owner == event.owner:
                step.status, step.owner, step.claimed_at = StepStatus.PENDING, None, None
        case AwaitSlot():  # or AwaitBudget
            step = new.step(event.index)
            if step.status is StepStatus.SUBMITTING and step.owner == event.owner:
                step.status, step.owner, step.claimed_at = StepStatus.PENDING, None, None
                step.retry_at = None  # a slot handed over may be taken at once
                # Nothing of this step was sent (it held no slot): its retry deadline and
                # lookup window start when it is sent, not while it waits in line.
                step.first_try_at = None
                new.waiting = event.waiting
    _stamp(chain, new, now)
    if new != chain:
        new.updated_at = now
    finished = (ChainStatus.SUCCEEDED, ChainStatus.FAILED, ChainStatus.CANCELLED)
    out.ended = chain.status not in finished and new.status in finished
    return out


def _stamp(before: Chain, new: Chain, now: float) -> None:
    """Note when each step that changed status reached it (the dashboard's timeline)."""
    for step in new.steps:
        old = before.steps[step.index].status if step.index < len(before.steps) else None
        if step.status is old:
            continue
        if step.status is StepStatus.SUBMITTED:
            step.submitted_at = now
        elif step.status is StepStatus.PROCESSING:
            step.processing_at = now
        elif step.status.done:
            step.ended_at = now
        else:  # back to pending or claimed (resumed, or a claim given back): not ended
            step.ended_at = None


def _claim(chain: Chain, event: Claim, now: float, out: Outcome) -> None:
    step = chain.step(event.index)
    if chain.error is not None or chain.end_reason is not None:
        return
    if step.status is StepStatus.PENDING and chain.cancelled_at is None:
        if step.retry_at is not None and step.retry_at > now:
            return  # backing off; the scheduled retry will come back
        over = budget.over_chain_budget(chain, step.kind, event.account_costs)
        if over is not None:  # never sent: the chain ends with what it has
            chain.end_reason, chain.waiting = EndReason.BUDGET_REACHED, None
            step.error = f"not sent: {over}"
            return
        step.status, step.owner, step.claimed_at = StepStatus.SUBMITTING, event.owner, now
        step.first_try_at = step.first_try_at or now
        out.verdict = Verdict.GO
    elif step.status is StepStatus.SUBMITTING:
        lease_over = step.claimed_at is None or now - step.claimed_at >= event.lease
        if lease_over or step.owner == event.owner:
            # The holder died or this is the same task redelivered after a crash: a create
            # may have gone out. Never send blindly; look it up.
            step.owner, step.claimed_at = event.owner, now
            out.verdict = Verdict.RECONCILE


def _submitted(chain: Chain, event: Submitted, now: float) -> None:
    step = chain.step(event.index)
    if step.status not in (StepStatus.PENDING, StepStatus.SUBMITTING):
        return
    step.status = StepStatus.SUBMITTED
    step.task_id = event.task.task_id
    step.owner = step.claimed_at = step.retry_at = None
    step.error = None
    step.news_at, step.look_at = now, event.look_at
    chain.waiting = None


def _submit_retry(chain: Chain, event: SubmitRetry, now: float) -> None:
    step = chain.step(event.index)
    if step.status is not StepStatus.SUBMITTING:
        return
    if now >= event.deadline:
        step.status, step.error = StepStatus.FAILED, f"gave up: {event.reason}"
        _fail(
            chain, f"step {event.index}: provider kept failing until the deadline: {event.reason}"
        )
        return
    step.status, step.owner, step.claimed_at = StepStatus.PENDING, None, None
    step.retry_at = event.retry_at
    chain.waiting = f"step {event.index}: {event.reason}; retrying in {event.retry_at - now:.0f} s"


def _task_update(chain: Chain, event: TaskUpdate, now: float, out: Outcome) -> None:
    step = chain.step(event.index)
    task = event.task
    if step.task_id is None or task.task_id != step.task_id or step.status.done:
        return  # unknown, foreign, or already settled: duplicates and stale news stop here
    step.news_at, step.look_at = now, event.look_at
    if task.status.terminal and task.units is not None:
        step.units = f"{task.units:f}"  # a failed task may be billed too
    if task.status is TaskStatus.PROCESSING and step.status is StepStatus.SUBMITTED:
        step.status = StepStatus.PROCESSING
    elif task.status is TaskStatus.FAILED:
        step.status = StepStatus.FAILED
        step.error = task.status_msg or "the provider reported the task as failed"
        _fail(chain, f"step {event.index} failed: {step.error}")
    elif task.status is TaskStatus.SUCCEED:
        video = task.video
        if video is None:
            step.status, step.error = (
                StepStatus.FAILED,
                "the provider reported success with no video",
            )
            _fail(chain, f"step {event.index} failed: {step.error}")
            return
        extension = step.kind == TaskKind.VIDEO_EXTEND.value
        doubt = duration_doubt(
            video.duration, _parent_duration(chain, step, task), extension=extension
        )
        # A doubted step's video is recorded and archived all the same (it was paid for, and
        # only its reported length is in question), but the step fails and nothing follows.
        step.status = StepStatus.SUCCEED if doubt is None else StepStatus.FAILED
        if doubt is None:
            out.succeeded.append(step.index)
        step.error = doubt
        step.video_id, step.video_url, step.duration = video.id, video.url, video.duration
        step.video_created_at = task.created_at_ms / 1000 if task.created_at_ms else now
        unsafe = unsafe_id(video.id)
        if unsafe is None:
            out.actions.append(ArchiveVideo(video.id))
        if doubt is not None:
            _fail(chain, f"step {event.index}: {doubt}")
        else:
            reason = end_reason_after(
                chain.spec, video.duration, _extensions_done(chain), ceiling=chain_ceiling(chain)
            )
            if reason is None and budget.over_chain_budget(chain, TaskKind.VIDEO_EXTEND, {}):
                reason = EndReason.BUDGET_REACHED  # judged on what this chain has paid
            if reason is not None and chain.cancelled_at is None:
                chain.end_reason, chain.waiting = reason, None
        if unsafe is not None:  # never a file name nor a key: lost at once, and no record
            _video_settled(chain, VideoSettled(video.id, archived=False, error=unsafe))
        if chain.end_reason is None and chain.error is None and chain.cancelled_at is None:
            nxt = _new_extension(chain, video.id, step.task_id)
            chain.steps.append(nxt)
            out.actions.append(SubmitStep(nxt.index))


def _parent_duration(chain: Chain, step: Step, task: Task) -> float | None:
    """The parent's length as the chain recorded it (the step before, or the user's
    ``source_duration`` for the first), else as the reply's ``task_info.parent_video`` says."""
    if step.index > 0:
        before = chain.steps[step.index - 1]
        if before.video_id == step.parent_video_id and before.duration is not None:
            return before.duration
    elif chain.spec.source_duration is not None:
        return chain.spec.source_duration
    return task.parent_video.duration if task.parent_video is not None else None


def _video_settled(chain: Chain, event: VideoSettled) -> None:
    """Note a settled video; losing the newest one fails the chain, even one that succeeded."""
    videos = chain.video_ids
    if event.video_id not in videos or event.video_id in chain.settled:
        return
    chain.settled.append(event.video_id)
    if not event.archived and chain.error is None and videos[-1] == event.video_id:
        chain.error = f"archiving video {event.video_id} failed: {event.error}"


def _fail(chain: Chain, message: str) -> None:
    if chain.error is None and chain.end_reason is None:
        chain.error = message
    chain.waiting = None
