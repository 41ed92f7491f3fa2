"""Did a create whose reply was lost make a (billed) task? The decisions, with no I/O.

A create request that timed out, lost its connection or got a gateway error may still have
made a task, and every task is billed. Sending the step again is safe only when the provider
can say for certain that nothing was made. Two ways of asking exist:

- a lookup by the step's ``external_task_id``. Gateways accept the field but do not all
  keep it; a 404 counts as "not created" only from a provider *proven* to answer such
  lookups (one of our own creates was found by its external id before);
- the task list (``GET .../{kind}?pageNum&pageSize``, newest first): a task on the step's
  parent video made since the step was first claimed. Its silence counts only when the list
  is proven (it listed one of our own creates before) and was read back past the window.

A task named by a callback on the step's own URL is a candidate too, confirmed the same way:
by a query whose reply shows the same parent video, a creation time in the window, and no
other step that recorded it. When nothing can tell, the step needs a person: never resend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from kling.models import Task, TaskKind
from worker.core.chain import Step

CLOCK_SLACK_SECONDS = 300.0
"""How far the provider's clock may be from ours when placing a task in a step's window."""
LIST_PAGE_SIZE = 100
LIST_MAX_PAGES = 5
"""How much of the task list one reconciliation reads (newest first) before giving up."""


class Capability(StrEnum):
    """What this service has seen a provider do, per task kind."""

    UNKNOWN = "unknown"
    WORKS = "works"
    BROKEN = "broken"


@dataclass(frozen=True)
class Window:
    """Unix seconds in which a task made by the step's create must have been created."""

    start: float
    end: float

    def holds(self, task: Task) -> bool:
        if task.created_at_ms is None:
            return False
        return self.start <= task.created_at_ms / 1000 <= self.end


def window_for(step: Step, now: float) -> Window:
    """From the step's first claim (less the clock slack) to now (plus the slack)."""
    first = step.first_try_at if step.first_try_at is not None else now
    return Window(first - CLOCK_SLACK_SECONDS, now + CLOCK_SLACK_SECONDS)


def mismatch(
    task: Task, step: Step, window: Window, *, owner: str | None, me: str, by_url: bool
) -> str | None:
    """Why ``task`` cannot be the task that ``step``'s create made, or None when it can be.

    ``owner`` is the step that recorded the task already (None if none did), ``me`` this
    step's own name for that. ``by_url``: the task was named by a callback on the step's
    own URL, which identifies the step; a task found in the list must instead show the
    step's parent video (an extension) or its external id (other kinds).
    """
    if task.external_task_id is not None and task.external_task_id != step.external_task_id:
        return f"it carries external_task_id {task.external_task_id}"
    if owner is not None and owner != me:
        return f"step {owner} recorded it already"
    if not window.holds(task):
        return "it was not created while this step was being submitted"
    if step.kind == TaskKind.VIDEO_EXTEND.value:
        parent = task.parent_video.id if task.parent_video is not None else None
        if parent is None:
            return "the provider does not say which video it extends"
        if parent != step.parent_video_id:
            return f"it extends video {parent}, not {step.parent_video_id}"
    elif not by_url and task.external_task_id != step.external_task_id:
        return "nothing in it ties it to this step"
    return None


@dataclass(frozen=True)
class Found:
    task: Task


@dataclass(frozen=True)
class NotCreated:
    """The provider proves that the step's create made nothing: sending it is safe."""

    how: str


@dataclass(frozen=True)
class Unknown:
    """Nothing can tell: the step may have been billed. ``seen``: the provider shows
    tasks that could be the step's, so it may well have been."""

    reason: str
    seen: bool = False


Answer = Found | NotCreated | Unknown


def list_read_far_enough(page: Sequence[Task], window: Window) -> bool:
    """Whether a list page (newest first) reaches back past the window's start, or the end."""
    if len(page) < LIST_PAGE_SIZE:
        return True
    oldest = page[-1].created_at_ms
    return oldest is not None and oldest / 1000 < window.start


def judge_list(
    tasks: Sequence[Task],
    step: Step,
    window: Window,
    *,
    owners: dict[str, str],
    me: str,
    complete: bool,
    capability: Capability,
) -> Answer:
    """What the task list says about the step.

    ``owners`` maps the task ids of ``tasks`` that some step recorded already to that step.
    """
    matches = [
        t
        for t in tasks
        if mismatch(t, step, window, owner=owners.get(t.task_id), me=me, by_url=False) is None
    ]
    if len(matches) == 1:
        return Found(matches[0])
    if len(matches) > 1:
        ids = ", ".join(t.task_id for t in matches)
        return Unknown(
            f"the task list holds {len(matches)} tasks that could be this step's ({ids})",
            seen=True,
        )
    if capability is not Capability.WORKS:
        return Unknown(
            "the task list shows no such task, but this provider has not yet been seen to "
            "list this service's own tasks, so its silence proves nothing"
        )
    if not complete:
        return Unknown(
            f"the task list was not read back to the step's start ({LIST_MAX_PAGES} pages)"
        )
    if step.kind != TaskKind.VIDEO_EXTEND.value:
        # Other kinds carry no parent video: only an empty window is proof.
        others = [t for t in tasks if window.holds(t) and owners.get(t.task_id) is None]
        if others:
            return Unknown(
                f"the task list holds {len(others)} task(s) from the step's time that carry "
                "nothing that ties them to it",
                seen=True,
            )
    return NotCreated("the task list, read back past the step's start, holds no such task")


def combine(by_external_id: NotCreated | Unknown | None, by_list: Answer) -> Answer:
    """One answer from both ways of asking (a lookup that found the task never gets here).

    Whatever the list shows wins; a proven "no such external id" settles what the list
    cannot tell, unless the list shows tasks that could be the step's.
    """
    if not isinstance(by_list, Unknown) or by_list.seen:
        return by_list
    if isinstance(by_external_id, NotCreated):
        return by_external_id
    if isinstance(by_external_id, Unknown):
        return Unknown(f"{by_external_id.reason}; and {by_list.reason}")
    return by_list
