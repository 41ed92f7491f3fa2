"""The work a chain is owed, derived from its state: a typed value, not a string format.

``schedule(chain)`` says what must happen next and when (poll a quiet task, submit a
pending step). The Redis side mirrors it into a sorted set whose members are ``Due.member``
strings; the beat sweep takes the due ones back with ``Due.parse``. A chain's videos are owed
to the archive through their records, which the archive's deadline sweep reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from worker.core.chain import Chain, StepStatus


class Work(StrEnum):
    POLL = "poll"  # query a task that has had no news for a while
    SUBMIT = "submit"  # send (or reconcile) a step's create
    RECONCILE = "reconcile"  # a cancelled chain's claimed step: look it up, never send it


@dataclass(frozen=True)
class Due:
    """One piece of owed work: ``ref`` is a step index."""

    work: Work
    chain_id: str
    ref: str

    @property
    def member(self) -> str:
        return f"{self.work.value}|{self.chain_id}|{self.ref}"

    @property
    def index(self) -> int:
        return int(self.ref)

    @classmethod
    def parse(cls, member: str) -> Due:
        work, chain_id, ref = member.split("|", 2)
        return cls(Work(work), chain_id, ref)


def schedule(chain: Chain, *, poll_after: float, submit_lease: float) -> dict[Due, float]:
    """Work the chain is owed, with when it is due.

    The beat sweep enqueues what is due; a lost callback, a dead worker or a crash between
    commit and enqueue all end up here.
    """
    due: dict[Due, float] = {}
    ended = chain.error is not None or chain.end_reason is not None
    cancelled = chain.cancelled_at is not None  # owes no create: only what may be paid for
    for step in chain.steps:
        if step.status.active:
            quiet = (step.news_at or chain.updated_at) + poll_after
            look = step.look_at
            due[Due(Work.POLL, chain.id, str(step.index))] = (
                quiet if look is None else min(quiet, look)
            )
        elif not ended and not cancelled and step.status is StepStatus.PENDING:
            due[Due(Work.SUBMIT, chain.id, str(step.index))] = (
                step.retry_at if step.retry_at is not None else chain.updated_at + submit_lease
            )
        elif not ended and step.status is StepStatus.SUBMITTING:
            work = Work.RECONCILE if cancelled else Work.SUBMIT
            due[Due(work, chain.id, str(step.index))] = (
                step.claimed_at or chain.updated_at
            ) + submit_lease
    return due
