"""The runner's decisions around money and files, with fakeredis and a scripted provider.

The same paths run against the real gateway, Redis and worker in tests/integration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from kling.errors import (
    AccountError,
    AmbiguousCreate,
    KlingError,
    NotFound,
    PermanentError,
    RetryableError,
)
from kling.models import ExtendRequest, Task, TaskKind, TaskStatus, Text2VideoRequest, Video
from worker.archiver import Archiver
from worker.core.chain import Claim, Event, Outcome, Spec, StepStatus, Submitted, new_chain
from worker.core.retry import POLICIES, Kind
from worker.core.videos import VideoRecord, archived
from worker.outbound.download import Downloaded
from worker.runner import Runner
from worker.settings import Settings
from worker.state.chains import Store, Timing
from worker.state.videos import Videos
from worker.storage import Upload
from worker.storage.local import LocalStorage
from worker.tasknames import ARCHIVE_VIDEO, NOTIFY, SUBMIT_STEP

NOW = 2_000_000_000.0


class NotBilled(AmbiguousCreate):
    """A create whose reply was lost before it reached the provider: nothing was made."""


@dataclass
class ScriptedProvider:
    """Answers creates from a script; remembers what it was asked.

    ``keeps_external_ids=False`` is a relay that accepts ``external_task_id`` and drops it;
    ``lists=False`` one without the task list.
    """

    script: list[KlingError | None] = field(default_factory=list)
    creates: list[dict[str, Any]] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    lookups: int = 0
    listings: int = 0
    land_before_error: bool = False
    keeps_external_ids: bool = True
    lists: bool = True
    base_url: str = "https://gw.example/kling"

    def create(self, kind: TaskKind, request: ExtendRequest | Text2VideoRequest) -> Task:
        outcome = self.script.pop(0) if self.script else None
        lost = isinstance(outcome, AmbiguousCreate) and not isinstance(outcome, NotBilled)
        billed = outcome is None or lost or self.land_before_error
        if billed:
            parent = (
                Video(request.video_id, f"https://cdn.example/{request.video_id}.mp4", 5.0)
                if isinstance(request, ExtendRequest)
                else None
            )
            task = Task(
                f"t{len(self.tasks)}",
                TaskStatus.SUBMITTED,
                created_at_ms=int(NOW * 1000),
                external_task_id=request.external_task_id if self.keeps_external_ids else None,
                parent_video=parent,
            )
            self.tasks[task.task_id] = task
            self.creates.append({"kind": kind, "external": request.external_task_id})
        if outcome is not None:
            raise outcome
        return task

    def get(self, kind: TaskKind, task_id: str) -> Task:
        if task_id not in self.tasks:
            raise NotFound(f"task {task_id} not found", code=1203)
        return self.tasks[task_id]

    def find_by_external_id(self, kind: TaskKind, external_task_id: str) -> Task | None:
        self.lookups += 1
        for task in self.tasks.values():
            if task.external_task_id == external_task_id:
                return task
        return None

    def list_tasks(self, kind: TaskKind, *, page: int = 1, page_size: int = 100) -> list[Task]:
        self.listings += 1
        if not self.lists:
            raise NotFound("no such route", http_status=404)
        newest_first = list(reversed(self.tasks.values()))
        return newest_first[(page - 1) * page_size : page * page_size]


@dataclass
class Rig:
    runner: Runner
    store: Store
    provider: ScriptedProvider
    queued: list[tuple[str, tuple[Any, ...]]]

    def chain(self, **spec: Any) -> str:
        c = new_chain("c1", Spec(**{"video_id": "v0", "task_id": "p0", "steps": 2, **spec}), NOW)
        self.store.create(c)
        return c.id

    def entry(self, chain_id: str, video_id: str) -> dict[str, Any]:
        """The chain view's archive entry for ``video_id``, as the API shows it."""
        chain = self.store.get(chain_id)
        view = chain.view(self.runner.archiver.videos.of([chain]))
        [entry] = [e for e in view["archive"] if e["video_id"] == video_id]
        return entry  # type: ignore[no-any-return]


def make_rig(tmp_path: Path, provider: ScriptedProvider, **settings: Any) -> Rig:
    s = Settings(
        callback_secret="s" * 32,
        kling_api_key="k",
        archive_dir=tmp_path,
        **settings,
    )
    store = Store(
        fakeredis.FakeRedis(),
        prefix="t:",
        timing=Timing(poll_after=120, submit_lease=60),
        clock=lambda: NOW,
    )
    queued: list[tuple[str, tuple[Any, ...]]] = []

    def enqueue(name: str, args: tuple[Any, ...]) -> None:
        queued.append((name, args))

    videos = Videos(store.redis, prefix="t:")
    archiver = Archiver(s, LocalStorage(tmp_path), store, videos, provider, enqueue)  # type: ignore[arg-type]
    runner = Runner(s, store, provider, enqueue, archiver, clock=lambda: NOW)  # type: ignore[arg-type]
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


def test_a_created_task_and_its_owner_are_recorded_in_one_commit(rig: Rig) -> None:
    cid = rig.chain()
    transition = rig.store.transition

    def crash_at_the_record(chain_id: str, event: Event, **kwargs: Any) -> Outcome:
        if isinstance(event, Submitted):
            raise ConnectionError("the worker died before the commit")
        return transition(chain_id, event, **kwargs)

    # When the worker dies between the create's reply and recording it
    rig.store.transition = crash_at_the_record  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        rig.runner.submit(cid, 0, owner="a")
    # Then neither the step nor the owner binding has the task (a lookup finds it later)
    assert rig.store.task_owners(["t0"]) == {}
    assert rig.store.get(cid).step(0).task_id is None
    # And once recorded, both have it
    rig.store.transition = transition  # type: ignore[method-assign]
    rig.runner.submit(cid, 0, owner="a", attempt=1)
    assert rig.store.get(cid).step(0).task_id == "t0"
    assert rig.store.task_owners(["t0"]) == {"t0": f"{cid}:0"}
    assert len(rig.provider.creates) == 1


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


def test_without_external_ids_a_lost_reply_is_found_in_the_task_list(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(), kling_external_task_id=False)
    cid = rig.chain()
    rig.provider.script = [AmbiguousCreate("connection reset")]
    rig.runner.submit(cid, 0, owner="a")
    rig.runner.submit(cid, 0, owner="a", attempt=1)
    step = rig.store.get(cid).step(0)
    assert (step.status, step.task_id) == (StepStatus.SUBMITTED, "t0")
    assert rig.provider.lookups == 0
    assert len(rig.provider.creates) == 1


def test_without_external_ids_or_a_task_list_a_lost_reply_needs_attention(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(lists=False), kling_external_task_id=False)
    cid = rig.chain()
    rig.provider.script = [AmbiguousCreate("connection reset")]
    rig.runner.submit(cid, 0, owner="a")
    rig.runner.submit(cid, 0, owner="a", attempt=1)
    chain = rig.store.get(cid)
    assert chain.step(0).status is StepStatus.ATTENTION
    assert chain.status.value == "failed"
    assert "billed" in (chain.error or "")
    assert "kc-c1-0" in (chain.error or "")  # what to look for in the account's task list
    assert len(rig.provider.creates) == 1


def lose_a_create(rig: Rig, cid: str, index: int, error: KlingError) -> None:
    rig.provider.script = [error]
    assert rig.runner.submit(cid, index, owner="a") is not None  # comes back to reconcile
    rig.runner.submit(cid, index, owner="a", attempt=1)


def learn_the_provider(rig: Rig) -> None:
    """One create whose reply came home: the runner checks what the provider can be asked."""
    other = new_chain("c0", Spec(video_id="v9", task_id="p9", steps=1), NOW)
    rig.store.create(other)
    rig.runner.submit("c0", 0, owner="z")


def test_a_relay_that_drops_external_ids_never_gets_paid_twice(tmp_path: Path) -> None:
    # Given a relay that accepts external_task_id, drops it and answers lookups with 404
    rig = make_rig(tmp_path, ScriptedProvider(keeps_external_ids=False))
    learn_the_provider(rig)
    cid = rig.chain()
    # When the first create's reply is lost (the task was made and billed)
    lose_a_create(rig, cid, 0, AmbiguousCreate("connection reset"))
    # Then the task list finds it: recorded, not sent again
    step = rig.store.get(cid).step(0)
    assert (step.status, step.task_id) == (StepStatus.SUBMITTED, "t1")
    assert [c["external"] for c in rig.provider.creates] == ["kc-c0-0", "kc-c1-0"]


def test_a_404_from_a_provider_proven_to_answer_lookups_means_not_created(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider())
    learn_the_provider(rig)
    cid = rig.chain()
    lose_a_create(rig, cid, 0, NotBilled("connection reset"))
    step = rig.store.get(cid).step(0)
    assert step.status is StepStatus.SUBMITTED
    assert len(rig.provider.creates) == 2  # c0's step and this one, each once
    assert rig.provider.listings == 2  # once while learning, once to cross-check the 404


def test_a_provider_that_stops_keeping_external_ids_is_caught_by_the_list(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider())
    learn_the_provider(rig)  # external-id lookups proven to work
    rig.provider.keeps_external_ids = False  # the gateway changed its upstream since
    cid = rig.chain()
    lose_a_create(rig, cid, 0, AmbiguousCreate("connection reset"))
    step = rig.store.get(cid).step(0)
    assert (step.status, step.task_id) == (StepStatus.SUBMITTED, "t1")
    assert len(rig.provider.creates) == 2


def test_a_404_from_an_unproven_provider_proves_nothing(tmp_path: Path) -> None:
    # No create of ours has come home yet: neither lookups nor the list are proven.
    rig = make_rig(tmp_path, ScriptedProvider())
    cid = rig.chain()
    lose_a_create(rig, cid, 0, NotBilled("connection reset"))
    chain = rig.store.get(cid)
    assert chain.step(0).status is StepStatus.ATTENTION
    assert "has not yet been seen to list" in (chain.error or "")
    assert rig.provider.creates == []


def test_a_proven_task_list_read_past_the_window_means_not_created(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(keeps_external_ids=False))
    learn_the_provider(rig)
    cid = rig.chain()
    lose_a_create(rig, cid, 0, NotBilled("502 from the gateway"))
    assert rig.store.get(cid).step(0).status is StepStatus.SUBMITTED
    assert len(rig.provider.creates) == 2


def test_two_candidates_in_the_list_need_a_person(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(keeps_external_ids=False))
    learn_the_provider(rig)
    cid = rig.chain()
    # Someone else extended the same parent video meanwhile
    rig.provider.tasks["x1"] = Task(
        "x1",
        TaskStatus.PROCESSING,
        created_at_ms=int(NOW * 1000),
        parent_video=Video("v0", "https://cdn.example/v0.mp4", 5.0),
    )
    lose_a_create(rig, cid, 0, AmbiguousCreate("read timed out"))
    chain = rig.store.get(cid)
    assert chain.step(0).status is StepStatus.ATTENTION
    assert "2 tasks that could be this step's" in (chain.error or "")
    assert len(rig.provider.creates) == 2


def test_a_task_another_step_recorded_is_never_taken(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(keeps_external_ids=False))
    learn_the_provider(rig)
    cid = rig.chain()
    rig.provider.script = [NotBilled("reset")]
    rig.runner.submit(cid, 0, owner="a")
    # A second chain on the same parent video records its own task meanwhile
    twin = new_chain("c2", Spec(video_id="v0", task_id="p0", steps=1), NOW)
    rig.store.create(twin)
    rig.runner.submit("c2", 0, owner="b")
    rig.runner.submit(cid, 0, owner="a", attempt=1)
    assert rig.store.get("c2").step(0).task_id == "t1"
    mine = rig.store.get(cid).step(0)
    assert mine.task_id == "t2"  # the list showed only c2's task: not created, sent again
    assert len(rig.provider.creates) == 3


def test_a_lookup_that_keeps_failing_ends_in_attention_not_a_resend(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedProvider(), retry_deadline_seconds=600)
    cid = rig.chain()
    rig.provider.script = [AmbiguousCreate("reset")]
    rig.runner.submit(cid, 0, owner="a")

    def broken(kind: TaskKind, external_task_id: str) -> Task | None:
        raise RetryableError("gateway busy", code=5001)

    rig.provider.find_by_external_id = broken  # type: ignore[method-assign]
    assert rig.runner.submit(cid, 0, owner="a", attempt=1) is not None  # asks again later
    assert rig.store.get(cid).step(0).status is StepStatus.SUBMITTING
    rig.runner.clock = lambda: NOW + 601
    assert rig.runner.submit(cid, 0, owner="a", attempt=2) is None
    chain = rig.store.get(cid)
    assert chain.step(0).status is StepStatus.ATTENTION
    assert "kept failing" in (chain.error or "")
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


def test_a_callback_without_a_task_id_for_a_step_mid_submit_changes_nothing(rig: Rig) -> None:
    cid = rig.chain()
    rig.store.transition(cid, Claim(0, "a", 60))
    assert rig.runner.refresh(cid, 0) is None
    assert rig.store.get(cid).step(0).status is StepStatus.SUBMITTING


def succeed_step(rig: Rig, cid: str, video_id: str, url: str, created: float = 1000.0) -> None:
    rig.runner.submit(cid, 0, owner="a")
    done = Task(
        "t0",
        TaskStatus.SUCCEED,
        created_at_ms=int(created * 1000),
        videos=(Video(video_id, url, 9.5),),
    )
    rig.provider.tasks["t0"] = done
    rig.runner.refresh(cid, 0)


def test_success_queues_one_archive_and_one_next_step(rig: Rig) -> None:
    cid = rig.chain()
    succeed_step(rig, cid, "v1", "https://cdn.example/v1.mp4")
    assert rig.queued == [(SUBMIT_STEP, (cid, 1)), (ARCHIVE_VIDEO, ("v1",))]
    rig.runner.refresh(cid, 0)  # a duplicate callback, confirmed again
    assert len(rig.queued) == 2


def test_the_task_that_learns_of_a_success_submits_the_next_step_itself(rig: Rig) -> None:
    cid = rig.chain()
    rig.runner.submit(cid, 0, owner="a")
    rig.provider.tasks["t0"] = Task(
        "t0", TaskStatus.SUCCEED, videos=(Video("v1", "https://cdn.example/v1.mp4", 9.5),)
    )
    rig.runner.refresh(cid, 0, owner="refresh-1")
    assert rig.queued == [(ARCHIVE_VIDEO, ("v1",))]  # the download is queued; no submit task
    assert len(rig.provider.creates) == 2  # step 1's create went out from this task
    step = rig.store.get(cid).step(1)
    assert step.status is StepStatus.SUBMITTED
    # A redelivered refresh (the same task again) finds step 0 done: nothing more is sent.
    rig.runner.refresh(cid, 0, owner="refresh-1")
    assert len(rig.provider.creates) == 2


def succeed_in_flight(rig: Rig) -> str:
    """A chain whose step 0 was created as task t0, which has now succeeded."""
    cid = rig.chain()
    rig.runner.submit(cid, 0, owner="a")
    rig.provider.tasks["t0"] = Task(
        "t0", TaskStatus.SUCCEED, videos=(Video("v1", "https://cdn.example/v1.mp4", 9.5),)
    )
    return cid


def test_the_archive_is_queued_after_the_inline_create(rig: Rig) -> None:
    creates_when_queued: list[int] = []
    enqueue = rig.runner.enqueue

    def noting(name: str, args: tuple[Any, ...]) -> None:
        creates_when_queued.append(len(rig.provider.creates))
        enqueue(name, args)

    rig.runner.enqueue = noting
    cid = succeed_in_flight(rig)
    rig.runner.refresh(cid, 0, owner="refresh-1")
    assert rig.queued == [(ARCHIVE_VIDEO, ("v1",))]
    assert creates_when_queued == [2]  # step 1's paid create went out first


def test_the_archive_is_queued_when_the_inline_submit_fails(rig: Rig) -> None:
    cid = succeed_in_flight(rig)

    def broken(*_: Any, **__: Any) -> float | None:
        raise redis.ConnectionError("Connection refused")  # Redis went away mid-task

    rig.runner.submit = broken  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        rig.runner.refresh(cid, 0, owner="refresh-1")
    assert rig.queued == [(ARCHIVE_VIDEO, ("v1",))]


def test_a_wait_the_inline_submit_asks_for_becomes_a_submit_task_later(
    tmp_path: Path, rig: Rig
) -> None:
    later: list[tuple[str, tuple[Any, ...], float]] = []
    rig.runner.later = lambda name, args, countdown: later.append((name, args, countdown))
    cid = rig.chain()
    rig.runner.submit(cid, 0, owner="a")
    rig.provider.tasks["t0"] = Task(
        "t0", TaskStatus.SUCCEED, videos=(Video("v1", "https://cdn.example/v1.mp4", 9.5),)
    )
    rig.provider.script = [RetryableError("server busy", code=5001, http_status=500)]
    rig.runner.refresh(cid, 0, owner="refresh-1")
    [(args, countdown)] = [(a, c) for name, a, c in later if name == SUBMIT_STEP]
    assert args == (cid, 1)
    assert countdown > 0
    step = rig.store.get(cid).step(1)
    assert step.status is StepStatus.PENDING  # given back, with its retry time
    assert step.retry_at is not None


def fake_download(body: bytes) -> Any:
    """``download_into`` without a network: writes ``body`` and commits it."""

    def download_into(url: str, upload: Upload, **_: Any) -> Downloaded:
        upload.write(body)
        location = upload.commit(size=len(body))
        return Downloaded(location, len(body), upload.sha256)

    return download_into


def notified(rig: Rig, kind: str) -> list[dict[str, Any]]:
    return [args[0] for name, args in rig.queued if name == NOTIFY and args[0]["type"] == kind]


def test_a_chain_video_is_recorded_in_the_transition_that_made_it(rig: Rig) -> None:
    # Given a step that succeeds, and the process dying before it enqueues anything
    cid = rig.chain(steps=1)
    succeed_step(rig, cid, "v1", "https://cdn.example/v1.mp4", created=NOW)
    rig.queued.clear()
    # Then the video's record is already there, pending, where the deadline sweep looks
    videos = rig.runner.archiver.videos
    record = videos.get("v1")
    assert record is not None
    assert (record.state, record.origin, record.chain_id, record.step) == (
        "pending",
        "chain",
        cid,
        0,
    )
    assert [r.video_id for r in videos.by_deadline(10)] == ["v1"]
    # and the sweep hands it out once the fast path's hold is over
    rig.runner.archiver.clock = lambda: NOW + 600
    assert rig.runner.archiver.sweep() == 1
    assert rig.queued == [(ARCHIVE_VIDEO, ("v1",))]


def test_archiving_the_newest_video_ends_the_chain_and_announces_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = make_rig(
        tmp_path,
        ScriptedProvider(),
        notify_url="https://hooks.example/kc",
        notify_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    monkeypatch.setattr("worker.archiver.download_into", fake_download(b"mp4 bytes"))
    rig.runner.archiver.clock = lambda: NOW
    cid = rig.chain(steps=1)
    succeed_step(rig, cid, "v1", "https://cdn.example/v1.mp4", created=NOW)
    assert rig.store.get(cid).status.value == "running"  # until its video is archived
    # When the archive task runs, twice (a redelivery)
    assert rig.runner.archiver.archive_video("v1", owner="x") is None
    assert rig.runner.archiver.archive_video("v1", owner="y") is None
    # Then the chain succeeded, its view shows the archived file, and each event went out once
    chain = rig.store.get(cid)
    assert (chain.status.value, chain.settled) == ("succeeded", ["v1"])
    entry = rig.entry(cid, "v1")
    assert (entry["status"], entry["bytes"], entry["path"]) == ("done", 9, str(tmp_path / "v1.mp4"))
    [end] = notified(rig, "chain.succeeded")
    assert end["data"]["archive"] == [entry]
    assert len(notified(rig, "video.archived")) == 1
    sidecar = json.loads((tmp_path / "v1.json").read_text())
    assert {k: sidecar[k] for k in ("chain_id", "step", "kind", "task_id", "parent_task_id")} == {
        "chain_id": cid,
        "step": 0,
        "kind": "video-extend",
        "task_id": "t0",
        "parent_task_id": "p0",
    }
    assert (sidecar["parent_video_id"], sidecar["duration"], sidecar["origin"]) == (
        "v0",
        9.5,
        "chain",
    )


def test_a_video_archived_before_its_chain_learned_of_it_settles_the_chain_at_once(
    rig: Rig,
) -> None:
    # Given the step's task asked for by POST /archive, and its video archived already
    videos = rig.runner.archiver.videos
    known = VideoRecord(
        video_id="v1",
        task_id="t0",
        kind="video-extend",
        url="https://cdn.example/v1.mp4",
        created_at=NOW,
        known_at=NOW - 5,
        origin="request",
    )
    videos.register(
        archived(known, location="/a/v1.mp4", size=9, sha256="ab", host="cdn.example", now=NOW)
    )
    # When the chain's step succeeds with that video
    cid = rig.chain(steps=1)
    succeed_step(rig, cid, "v1", "https://cdn.example/v1.mp4", created=NOW)
    # Then the record becomes the chain's, and the chain is done without waiting for it
    record = videos.get("v1")
    assert record is not None
    assert (record.chain_id, record.origin, record.state) == (cid, "chain", "archived")
    assert rig.store.get(cid).status.value == "succeeded"
    assert videos.counts() == {
        "pending": 0,
        "archived": 1,
        "lost": 0,
        "superseding": 0,
        "superseded": 0,
    }


def test_owed_work_of_a_kind_no_longer_owed_is_dropped(rig: Rig) -> None:
    rig.store.redis.zadd(rig.store.keys.due, {"archive|c9|v1": 1.0})
    assert rig.store.take_due(now=NOW, hold=60) == []
    assert rig.store.redis.zcard(rig.store.keys.due) == 0


@pytest.mark.parametrize("video_id", ["../../etc/passwd", ".hidden", "a/b", "x" * 200])
def test_unsafe_video_id_never_becomes_a_path(rig: Rig, tmp_path: Path, video_id: str) -> None:
    cid = rig.chain(steps=1)
    succeed_step(rig, cid, video_id, "https://cdn.example/v.mp4")
    assert rig.runner.archiver.archive_video(video_id, owner="a") is None
    entry = rig.entry(cid, video_id)
    assert entry["status"] == "failed"
    assert "not a safe file name" in (entry["error"] or "")
    assert list(tmp_path.iterdir()) == []


def test_video_past_its_deletion_is_marked_failed_without_downloading(
    rig: Rig, tmp_path: Path
) -> None:
    cid = rig.chain(steps=1)
    succeed_step(rig, cid, "v1", "https://cdn.example/v1.mp4")  # created at t=1000 s (1970)
    assert rig.runner.archiver.archive_video("v1", owner="a") is None
    chain = rig.store.get(cid)
    assert "30 days" in (rig.entry(cid, "v1")["error"] or "")
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
    assert rig.runner.archiver.archive_video("v1", owner="a") is None
    entry = rig.entry(cid, "v1")
    assert entry["status"] == "failed"
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
        tasks.import_task,
        tasks.notify,
    ):
        assert task.max_retries is None, task.name


def candidate(task_id: str, parent: str = "v0", **fields: Any) -> Task:
    return Task(
        task_id,
        TaskStatus.PROCESSING,
        created_at_ms=int(NOW * 1000),
        parent_video=Video(parent, f"https://cdn.example/{parent}.mp4", 5.0),
        **fields,
    )


def test_callback_racing_the_create_reply_records_the_task_it_names(rig: Rig) -> None:
    cid = rig.chain()
    rig.store.transition(cid, Claim(0, "a", 60))  # the submit task is mid-create
    rig.provider.tasks["t9"] = candidate("t9")
    assert rig.runner.refresh(cid, 0, candidate="t9") is None  # no wait for the reply
    step = rig.store.get(cid).step(0)
    assert (step.status, step.task_id) == (StepStatus.SUBMITTED, "t9")
    assert rig.provider.creates == []


@pytest.mark.parametrize(
    ("task", "why"),
    [
        (candidate("t9", parent="v7"), "it extends video v7"),
        (candidate("t9", external_task_id="kc-other-3"), "external_task_id kc-other-3"),
        (
            Task("t9", TaskStatus.PROCESSING, created_at_ms=int((NOW - 86400) * 1000)),
            "not created while",
        ),
    ],
)
def test_a_callback_naming_a_task_that_cannot_be_the_steps_is_not_recorded(
    rig: Rig, task: Task, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    cid = rig.chain()
    rig.store.transition(cid, Claim(0, "a", 60))
    rig.provider.tasks["t9"] = task
    assert rig.runner.refresh(cid, 0, candidate="t9") is None
    assert rig.store.get(cid).step(0).task_id is None
    assert why in caplog.text


def test_a_callback_naming_a_task_another_step_recorded_is_not_recorded(rig: Rig) -> None:
    cid = rig.chain()
    rig.store.transition(cid, Claim(0, "a", 60))
    rig.provider.tasks["t9"] = candidate("t9")
    rig.store.claim_task("t9", "c7:0")
    rig.runner.refresh(cid, 0, candidate="t9")
    assert rig.store.get(cid).step(0).task_id is None


def test_a_callback_naming_an_unknown_task_is_ignored(rig: Rig) -> None:
    cid = rig.chain()
    rig.store.transition(cid, Claim(0, "a", 60))
    assert rig.runner.refresh(cid, 0, candidate="nope") is None
    assert rig.store.get(cid).step(0).status is StepStatus.SUBMITTING


def test_archive_queries_of_an_outside_task_are_bounded(rig: Rig) -> None:
    rig.provider.tasks["x1"] = Task("x1", TaskStatus.PROCESSING)
    videos = rig.runner.archiver.videos
    assert videos.ask("video-extend", "x1", "callback", ttl=60)
    archiver = rig.runner.archiver
    assert archiver.archive_task("video-extend", "x1", "callback", attempt=0) is not None
    last = (POLICIES[Kind.TASK_QUERY].max_attempts or 0) - 1
    assert archiver.archive_task("video-extend", "x1", "callback", attempt=last) is None
    assert videos.ask("video-extend", "x1", "callback", ttl=60)  # it may be asked for again


def test_an_outside_task_with_an_unsafe_video_id_records_nothing(rig: Rig) -> None:
    bad = Video("../etc/passwd", "https://cdn.example/x.mp4", 5.0)
    rig.provider.tasks["x2"] = Task(
        "x2", TaskStatus.SUCCEED, created_at_ms=int(NOW * 1000), videos=(bad,)
    )
    assert rig.runner.archiver.archive_task("text2video", "x2", "request") is None
    assert rig.runner.archiver.videos.get("../etc/passwd") is None
    assert rig.queued == []


def test_a_callback_claiming_an_early_status_costs_no_query(rig: Rig) -> None:
    cid = rig.chain()
    rig.runner.submit(cid, 0, owner="a")
    task_id = rig.store.get(cid).step(0).task_id
    assert task_id is not None
    queried: list[str] = []
    real_get = rig.provider.get

    def counting_get(kind: TaskKind, task_id: str) -> Task:
        queried.append(task_id)
        return real_get(kind, task_id)

    rig.provider.get = counting_get  # type: ignore[method-assign]
    rig.provider.tasks[task_id] = Task(task_id, TaskStatus.PROCESSING)
    # Given callbacks claiming submitted and processing: nothing to act on, nothing queried.
    for early in ("submitted", "processing"):
        assert rig.runner.refresh(cid, 0, candidate=task_id, reported=early) is None
    assert queried == []
    assert rig.store.get(cid).step(0).status is StepStatus.SUBMITTED
    # A terminal claim is confirmed by a query before anything happens.
    rig.provider.tasks[task_id] = Task(
        task_id, TaskStatus.SUCCEED, videos=(Video("v1", "https://cdn.example/v1.mp4", 10.0),)
    )
    rig.runner.refresh(cid, 0, candidate=task_id, reported="succeed")
    assert queried == [task_id]
    assert rig.store.get(cid).step(0).status is StepStatus.SUCCEED


def test_an_early_callback_still_names_the_task_of_a_step_whose_reply_was_lost(rig: Rig) -> None:
    cid = rig.chain()
    rig.provider.script = [AmbiguousCreate("read timed out")]
    rig.runner.submit(cid, 0, owner="a")
    step = rig.store.get(cid).step(0)
    assert step.status is StepStatus.SUBMITTING
    assert step.task_id is None
    [task_id] = list(rig.provider.tasks)  # the create landed; its reply did not come home
    rig.runner.refresh(cid, 0, candidate=task_id, reported="processing")
    assert rig.store.get(cid).step(0).task_id == task_id
