"""The runner's decisions around money and files, with fakeredis and a scripted provider.

The same paths run against the real gateway, Redis and worker in tests/integration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from kling.errors import (
    AccountError,
    AmbiguousCreate,
    KlingError,
    PermanentError,
    RetryableError,
)
from kling.models import ExtendRequest, Task, TaskKind, TaskStatus, Text2VideoRequest, Video
from worker.archiver import Archiver
from worker.chain import Claim, Spec, StepStatus, new_chain
from worker.runner import ARCHIVE_TASK, SUBMIT_TASK, Runner
from worker.settings import Settings
from worker.storage.local import LocalStorage
from worker.store import Store, Timing
from worker.videos import Videos


@dataclass
class ScriptedProvider:
    """Answers creates from a script; remembers what it was asked."""

    script: list[KlingError | None] = field(default_factory=list)
    creates: list[dict[str, Any]] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    lookups: int = 0
    land_before_error: bool = False

    def create(self, kind: TaskKind, request: ExtendRequest | Text2VideoRequest) -> Task:
        outcome = self.script.pop(0) if self.script else None
        billed = outcome is None or isinstance(outcome, AmbiguousCreate) or self.land_before_error
        if billed:
            task = Task(
                f"t{len(self.tasks)}",
                TaskStatus.SUBMITTED,
                external_task_id=request.external_task_id,
            )
            self.tasks[task.task_id] = task
            self.creates.append({"kind": kind, "external": request.external_task_id})
        if outcome is not None:
            raise outcome
        return task

    def get(self, kind: TaskKind, task_id: str) -> Task:
        return self.tasks[task_id]

    def find_by_external_id(self, kind: TaskKind, external_task_id: str) -> Task | None:
        self.lookups += 1
        for task in self.tasks.values():
            if task.external_task_id == external_task_id:
                return task
        return None


@dataclass
class Rig:
    runner: Runner
    store: Store
    provider: ScriptedProvider
    queued: list[tuple[str, tuple[Any, ...]]]

    def chain(self, **spec: Any) -> str:
        c = new_chain("c1", Spec(**{"video_id": "v0", "task_id": "p0", "steps": 2, **spec}), 1000.0)
        self.store.create(c)
        return c.id


def make_rig(tmp_path: Path, provider: ScriptedProvider, **settings: Any) -> Rig:
    s = Settings(
        callback_secret="s" * 32,  # type: ignore[arg-type]
        kling_api_key="k",  # type: ignore[arg-type]
        archive_dir=tmp_path,
        **settings,
    )
    store = Store(
        fakeredis.FakeRedis(),
        prefix="t:",
        timing=Timing(poll_after=120, submit_lease=60, archive_lease=600),
    )
    queued: list[tuple[str, tuple[Any, ...]]] = []

    def enqueue(name: str, args: tuple[Any, ...]) -> None:
        queued.append((name, args))

    videos = Videos(store.redis, prefix="t:")
    archiver = Archiver(s, LocalStorage(tmp_path), videos, provider, enqueue)  # type: ignore[arg-type]
    runner = Runner(s, store, provider, enqueue, archiver)  # type: ignore[arg-type]
    return Rig(runner, store, provider, queued)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path, ScriptedProvider())


def test_a_submit_runs_once_however_often_it_is_delivered(rig: Rig) -> None:
    cid = rig.chain()
    assert rig.runner.submit(cid, 0, owner="a") is None
    for owner in ("a", "b", "c"):
        rig.runner.submit(cid, 0, owner=owner)
    assert len(rig.provider.creates) == 1
    assert rig.store.get(cid).step(0).status is StepStatus.SUBMITTED


def test_lost_reply_is_looked_up_not_resent(rig: Rig) -> None:
    cid = rig.chain()
    rig.provider.script = [AmbiguousCreate("read timed out")]
    delay = rig.runner.submit(cid, 0, owner="a")
    assert delay is not None  # comes back to reconcile
    assert rig.store.get(cid).step(0).status is StepStatus.SUBMITTING
    rig.runner.submit(cid, 0, owner="a", attempt=1)  # the retry of the same task
    assert rig.provider.lookups == 1
    assert len(rig.provider.creates) == 1
    step = rig.store.get(cid).step(0)
    assert (step.status, step.task_id) == (StepStatus.SUBMITTED, "t0")


def test_lost_reply_where_nothing_landed_is_sent_again_with_the_same_external_id(rig: Rig) -> None:
    cid = rig.chain()
    rig.provider.script = [RetryableError("connection refused")]
    rig.runner.submit(cid, 0, owner="a")
    assert rig.provider.creates == []
    assert "connection refused" in (rig.store.get(cid).waiting or "")


def test_without_external_ids_a_lost_reply_needs_attention(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(), kling_external_task_id=False)
    cid = rig.chain()
    rig.provider.script = [AmbiguousCreate("connection reset")]
    rig.runner.submit(cid, 0, owner="a")
    rig.runner.submit(cid, 0, owner="a", attempt=1)
    chain = rig.store.get(cid)
    assert chain.step(0).status is StepStatus.ATTENTION
    assert chain.status.value == "failed"
    assert "billed" in (chain.error or "")
    assert len(rig.provider.creates) == 1


def test_exhausted_balance_is_tried_exactly_once(rig: Rig) -> None:
    cid = rig.chain()
    rig.provider.script = [AccountError("resource pack used up", code=1102, http_status=429)]
    assert rig.runner.submit(cid, 0, owner="a") is None
    chain = rig.store.get(cid)
    assert chain.step(0).status is StepStatus.FAILED
    assert "1102" in (chain.error or "")
    assert rig.runner.submit(cid, 0, owner="b") is None
    assert rig.provider.lookups == 0
    assert rig.provider.script == []


def test_duplicate_external_id_refusal_records_the_task_that_landed(rig: Rig) -> None:
    cid = rig.chain()
    rig.provider.land_before_error = True  # the first create landed late; the resend is refused
    rig.provider.script = [PermanentError("external_task_id already exists", code=1201)]
    rig.runner.submit(cid, 0, owner="a")
    step = rig.store.get(cid).step(0)
    assert (step.status, step.task_id) == (StepStatus.SUBMITTED, "t0")
    assert len(rig.provider.creates) == 1


def test_callback_racing_the_create_reply_waits_for_the_task_id(rig: Rig) -> None:
    cid = rig.chain()
    rig.store.transition(cid, Claim(0, "a", 60))
    assert rig.runner.refresh(cid, 0) == 0.5


def succeed_step(rig: Rig, cid: str, video_id: str, url: str) -> None:
    rig.runner.submit(cid, 0, owner="a")
    done = Task(
        "t0",
        TaskStatus.SUCCEED,
        created_at_ms=int(1000.0 * 1000),
        videos=(Video(video_id, url, 9.5),),
    )
    rig.provider.tasks["t0"] = done
    rig.runner.refresh(cid, 0)


def test_success_queues_one_archive_and_one_next_step(rig: Rig) -> None:
    cid = rig.chain()
    succeed_step(rig, cid, "v1", "https://cdn.example/v1.mp4")
    assert rig.queued == [(ARCHIVE_TASK, (cid, "v1")), (SUBMIT_TASK, (cid, 1))]
    rig.runner.refresh(cid, 0)  # a duplicate callback, confirmed again
    assert len(rig.queued) == 2


@pytest.mark.parametrize("video_id", ["../../etc/passwd", ".hidden", "a/b", "x" * 200])
def test_unsafe_video_id_never_becomes_a_path(rig: Rig, tmp_path: Path, video_id: str) -> None:
    cid = rig.chain(steps=1)
    succeed_step(rig, cid, video_id, "https://cdn.example/v.mp4")
    assert rig.runner.archive(cid, video_id, owner="a") is None
    entry = rig.store.get(cid).entry(video_id)
    assert entry.status.value == "failed"
    assert "not a safe file name" in (entry.error or "")
    assert list(tmp_path.iterdir()) == []


def test_video_past_its_deletion_is_marked_failed_without_downloading(
    rig: Rig, tmp_path: Path
) -> None:
    cid = rig.chain(steps=1)
    succeed_step(rig, cid, "v1", "https://cdn.example/v1.mp4")  # created at t=1000 s (1970)
    assert rig.runner.archive(cid, "v1", owner="a") is None
    chain = rig.store.get(cid)
    assert "30 days" in (chain.entry("v1").error or "")
    assert chain.status.value == "failed"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://cdn.example/v.mp4"])
def test_only_http_urls_are_downloaded(tmp_path: Path, url: str) -> None:
    now = 2_000_000_000.0
    rig = make_rig(tmp_path, ScriptedProvider())
    rig.runner.clock = lambda: now
    cid = rig.chain(steps=1)
    rig.runner.submit(cid, 0, owner="a")
    rig.provider.tasks["t0"] = Task(
        "t0", TaskStatus.SUCCEED, created_at_ms=int(now * 1000), videos=(Video("v1", url, 9.5),)
    )
    rig.runner.refresh(cid, 0)
    assert rig.runner.archive(cid, "v1", owner="a") is None
    entry = rig.store.get(cid).entry("v1")
    assert entry.status.value == "failed"
    assert list(tmp_path.iterdir()) == []


def test_celery_tasks_leave_retry_limits_to_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery's retry(max_retries=None) means "the task's default" (3), not "no limit": a task
    # must carry max_retries=None itself or a fourth rate-limit retry would be dropped.
    monkeypatch.setenv("CALLBACK_SECRET", "s" * 32)
    from worker import tasks

    for task in (
        tasks.submit_step,
        tasks.refresh_step,
        tasks.archive_video,
        tasks.archive_task,
        tasks.archive_record,
        tasks.notify,
    ):
        assert task.max_retries is None, task.name


def test_callback_racing_the_create_reply_finds_the_task_at_once(rig: Rig) -> None:
    cid = rig.chain()
    rig.store.transition(cid, Claim(0, "a", 60))  # the submit task is mid-create
    rig.provider.tasks["t9"] = Task("t9", TaskStatus.PROCESSING, external_task_id="kc-c1-0")
    assert rig.runner.refresh(cid, 0) is None  # no 0.5 s wait
    step = rig.store.get(cid).step(0)
    assert (step.status, step.task_id) == (StepStatus.SUBMITTED, "t9")
    assert rig.provider.creates == []
