"""The pure rules for a create whose reply was lost: which task can be the step's, and when
the provider's silence proves that nothing was made."""

from __future__ import annotations

import pytest

from kling.models import Task, TaskKind, TaskStatus, Video
from worker.core.chain import Step
from worker.core.reconcile import (
    CLOCK_SLACK_SECONDS,
    LIST_PAGE_SIZE,
    Capability,
    Found,
    NotCreated,
    Unknown,
    Window,
    combine,
    judge_list,
    list_read_far_enough,
    mismatch,
    window_for,
)

T0 = 1_800_000_000.0
WINDOW = Window(T0 - CLOCK_SLACK_SECONDS, T0 + 60 + CLOCK_SLACK_SECONDS)
EXTEND = Step(
    index=1,
    kind=TaskKind.VIDEO_EXTEND.value,
    external_task_id="kc-c1-1",
    parent_video_id="v1",
    first_try_at=T0,
)
TEXT = Step(index=0, kind=TaskKind.TEXT2VIDEO.value, external_task_id="kc-c1-0", first_try_at=T0)


def task(
    task_id: str = "t1",
    *,
    at: float | None = T0 + 1,
    parent: str | None = "v1",
    external: str | None = None,
) -> Task:
    return Task(
        task_id,
        TaskStatus.SUBMITTED,
        created_at_ms=None if at is None else int(at * 1000),
        parent_video=Video(parent, f"https://cdn.example/{parent}.mp4", 5.0) if parent else None,
        external_task_id=external,
    )


def test_the_window_runs_from_the_first_claim_to_now_with_slack_for_clocks() -> None:
    assert window_for(EXTEND, T0 + 60) == WINDOW


@pytest.mark.parametrize(
    ("step", "candidate", "owner", "by_url", "why"),
    [
        (EXTEND, task(), None, False, None),
        (EXTEND, task(), "c1:1", False, None),  # recorded by this very step: still ours
        (EXTEND, task(external="kc-c1-1"), None, False, None),
        (EXTEND, task(external="kc-c9-4"), None, False, "carries external_task_id kc-c9-4"),
        (EXTEND, task(), "c2:0", False, "step c2:0 recorded it already"),
        (EXTEND, task(at=T0 - 3600), None, False, "not created while"),
        (EXTEND, task(at=T0 + 3600), None, False, "not created while"),
        (EXTEND, task(at=None), None, False, "not created while"),
        (EXTEND, task(parent="v7"), None, False, "extends video v7, not v1"),
        (EXTEND, task(parent=None), None, True, "does not say which video"),
        (TEXT, task(parent=None), None, True, None),  # named by a callback on its own URL
        (TEXT, task(parent=None), None, False, "nothing in it ties it"),
        (TEXT, task(parent=None, external="kc-c1-0"), None, False, None),
    ],
)
def test_which_task_can_be_the_steps(
    step: Step, candidate: Task, owner: str | None, by_url: bool, why: str | None
) -> None:
    problem = mismatch(candidate, step, WINDOW, owner=owner, me="c1:1", by_url=by_url)
    if why is None:
        assert problem is None
    else:
        assert problem is not None
        assert why in problem


def judge(
    tasks: list[Task],
    *,
    step: Step = EXTEND,
    owners: dict[str, str] | None = None,
    complete: bool = True,
    capability: Capability = Capability.WORKS,
) -> object:
    return judge_list(
        tasks,
        step,
        WINDOW,
        owners=owners or {},
        me="c1:1",
        complete=complete,
        capability=capability,
    )


@pytest.mark.parametrize("capability", list(Capability))
def test_one_match_is_found_whatever_the_list_is_known_to_do(capability: Capability) -> None:
    mine = task("t1")
    assert judge([task("t0", parent="v0"), mine], capability=capability) == Found(mine)


def test_two_matches_cannot_be_told_apart() -> None:
    answer = judge([task("t1"), task("t2")])
    assert isinstance(answer, Unknown)
    assert "(t1, t2)" in answer.reason


def test_a_match_another_step_recorded_does_not_count() -> None:
    answer = judge([task("t1"), task("t2")], owners={"t2": "c2:0"})
    assert answer == Found(task("t1"))


@pytest.mark.parametrize(
    ("capability", "complete", "expected"),
    [
        (Capability.WORKS, True, NotCreated),
        (Capability.WORKS, False, Unknown),
        (Capability.UNKNOWN, True, Unknown),
        (Capability.BROKEN, True, Unknown),
    ],
)
def test_silence_proves_nothing_was_made_only_from_a_proven_list_read_far_enough(
    capability: Capability, complete: bool, expected: type
) -> None:
    answer = judge([task("t0", parent="v0")], capability=capability, complete=complete)
    assert isinstance(answer, expected)


def test_for_a_text_step_only_an_empty_window_is_proof() -> None:
    others = [task("t5", parent=None)]  # someone's text2video task from the same minutes
    assert isinstance(judge(others, step=TEXT), Unknown)
    assert isinstance(judge([task("t5", parent=None, at=T0 - 7200)], step=TEXT), NotCreated)
    mine = task("t6", parent=None, external="kc-c1-0")
    assert judge([*others, mine], step=TEXT) == Found(mine)


@pytest.mark.parametrize(
    ("page", "far_enough"),
    [
        ([], True),
        ([task(f"t{i}") for i in range(3)], True),  # a short page is the list's end
        ([task(f"t{i}") for i in range(LIST_PAGE_SIZE)], False),
        ([task(f"t{i}", at=T0 - 3600) for i in range(LIST_PAGE_SIZE)], True),
        ([task(f"t{i}", at=None) for i in range(LIST_PAGE_SIZE)], False),
    ],
)
def test_a_page_is_far_enough_when_it_reaches_past_the_windows_start(
    page: list[Task], far_enough: bool
) -> None:
    assert list_read_far_enough(page, WINDOW) is far_enough


PROVEN_NONE = NotCreated("lookup by external id")
UNPROVEN_NONE = Unknown("lookup unproven")
LIST_SILENT = Unknown("list unproven")
LIST_CROWDED = Unknown("two candidates", seen=True)


@pytest.mark.parametrize(
    ("by_external_id", "by_list", "expected"),
    [
        (PROVEN_NONE, Found(task()), Found(task())),  # the list wins: the gateway changed
        (PROVEN_NONE, LIST_CROWDED, LIST_CROWDED),
        (PROVEN_NONE, LIST_SILENT, PROVEN_NONE),
        (PROVEN_NONE, NotCreated("list"), NotCreated("list")),
        (UNPROVEN_NONE, NotCreated("list"), NotCreated("list")),
        (UNPROVEN_NONE, LIST_SILENT, Unknown("lookup unproven; and list unproven")),
        (None, LIST_SILENT, LIST_SILENT),
        (None, Found(task()), Found(task())),
    ],
)
def test_both_ways_of_asking_combine(
    by_external_id: NotCreated | Unknown | None, by_list: object, expected: object
) -> None:
    assert combine(by_external_id, by_list) == expected  # type: ignore[arg-type]
