"""Planned polls in the runner: one per step, named by its news, learning task durations.

fakeredis and a scripted provider (``tests.unit.test_runner``); the same paths run against
the real worker and gateway in ``tests/integration/test_adaptive_polling.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import fakeredis
import pytest

from kling.errors import RetryableError
from kling.models import Task, TaskKind, TaskStatus, Video
from tests.unit.test_runner import NOW, ScriptedProvider
from worker.archiver import Archiver
from worker.core.chain import Spec, StepStatus, new_chain
from worker.core.metrics import CallbackOutcome
from worker.core.polling import MIN_SAMPLES
from worker.runner import Runner
from worker.settings import Settings
from worker.state.chains import Store, Timing
from worker.state.metrics import Metrics
from worker.state.polling import CallbackSeen, TaskDurations
from worker.state.videos import Videos
from worker.storage.local import LocalStorage
from worker.tasknames import REFRESH_STEP


@dataclass
class CountingProvider(ScriptedProvider):
    queries: int = 0
    query_errors: list[RetryableError] = field(default_factory=list)

    def get(self, kind: TaskKind, task_id: str) -> Task:
        self.queries += 1
        if self.query_errors:
            raise self.query_errors.pop(0)
        return super().get(kind, task_id)


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    runner: Runner
    store: Store
    provider: CountingProvider
    clock: Clock
    planned: list[tuple[tuple[Any, ...], float]]

    def start(self) -> str:
        c = new_chain("c1", Spec(video_id="v0", task_id="p0", steps=2), self.clock.now)
        self.store.create(c)
        assert self.runner.submit(c.id, 0, owner="a") is None
        return c.id

    def take_plan(self) -> tuple[float, float]:
        """The one poll planned since the last take: (its token, its countdown)."""
        [(args, countdown)] = self.planned
        self.planned.clear()
        chain_id, index, candidate, token = args
        assert (chain_id, index, candidate) == ("c1", 0, None)
        return token, countdown

    def task_becomes(self, status: TaskStatus, **fields: Any) -> None:
        task = self.provider.tasks["t0"]
        self.provider.tasks["t0"] = dataclasses.replace(task, status=status, **fields)


def make_rig(tmp_path: Path, client: Any, prefix: str = "t:") -> Rig:
    """The runner over ``client`` (fakeredis here; a real Redis in the integration tests)."""
    s = Settings(
        callback_secret="s" * 32,
        kling_api_key="k",
        archive_dir=tmp_path,
        poll_after_seconds=120,
    )
    clock = Clock()
    store = Store(
        client,
        prefix=prefix,
        timing=Timing(poll_after=120, submit_lease=60),
        clock=clock,
    )
    planned: list[tuple[tuple[Any, ...], float]] = []

    def later(name: str, args: tuple[Any, ...], countdown: float) -> None:
        assert name == REFRESH_STEP
        planned.append((args, countdown))

    provider = CountingProvider()
    videos = Videos(store.redis, prefix=prefix)
    archiver = Archiver(s, LocalStorage(tmp_path), store, videos, provider, lambda *a: None)  # type: ignore[arg-type]
    runner = Runner(s, store, provider, lambda *a: None, archiver, later=later, clock=clock)  # type: ignore[arg-type]
    return Rig(runner, store, provider, clock, planned)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path, fakeredis.FakeRedis())


def test_a_create_plans_the_first_poll_named_by_the_steps_news(rig: Rig) -> None:
    cid = rig.start()
    token, countdown = rig.take_plan()
    assert token == rig.store.get(cid).step(0).news_at
    assert countdown == 1.0  # no model, no callbacks: a second at first


def test_the_planned_poll_queries_and_plans_the_next(rig: Rig) -> None:
    cid = rig.start()
    token, countdown = rig.take_plan()
    rig.clock.now += countdown
    rig.task_becomes(TaskStatus.PROCESSING)
    assert rig.runner.refresh(cid, 0, planned=token) is None
    assert rig.provider.queries == 1
    step = rig.store.get(cid).step(0)
    assert step.status is StepStatus.PROCESSING
    nxt, _ = rig.take_plan()
    assert nxt == step.news_at != token


def test_a_superseded_plan_neither_queries_nor_plans(rig: Rig) -> None:
    cid = rig.start()
    token, _ = rig.take_plan()
    rig.clock.now += 0.5
    # Given a callback's refresh that queried first (and planned its own next poll)
    rig.runner.refresh(cid, 0)
    assert rig.provider.queries == 1
    rig.take_plan()
    # When the older plan comes due
    rig.clock.now += 0.5
    assert rig.runner.refresh(cid, 0, planned=token) is None
    # Then it is dropped: no query, no second line of polls
    assert rig.provider.queries == 1
    assert rig.planned == []


def test_many_refreshes_at_once_leave_one_line_of_polls(rig: Rig) -> None:
    cid = rig.start()
    tokens = [rig.take_plan()[0]]
    for _ in range(3):  # the sweep, two callbacks: each queries and plans
        rig.clock.now += 0.1
        rig.runner.refresh(cid, 0)
        tokens.append(rig.take_plan()[0])
    rig.clock.now += 5
    for token in tokens:
        rig.runner.refresh(cid, 0, planned=token)
    assert rig.provider.queries == 3 + 1  # only the newest plan queried
    assert len(rig.planned) == 1


def test_a_finished_task_plans_nothing_and_teaches_its_duration(rig: Rig) -> None:
    cid = rig.start()
    token, _ = rig.take_plan()
    rig.clock.now += 7
    video = Video("v1", "https://cdn.example/v1.mp4", 10.0)
    created = rig.provider.tasks["t0"].created_at_ms
    assert created is not None
    rig.task_becomes(TaskStatus.SUCCEED, videos=(video,), updated_at_ms=created + 5_250)
    assert rig.runner.refresh(cid, 0, planned=token) is None
    assert rig.store.get(cid).step(0).status is StepStatus.SUCCEED
    assert rig.planned == []
    durations = TaskDurations(rig.store.redis, rig.store.keys).of("video-extend")
    assert durations.seconds == (5.25,)  # the provider's own times, not when we asked


def test_with_a_model_the_first_look_waits_for_the_shortest_tasks(rig: Rig) -> None:
    learnt = TaskDurations(rig.store.redis, rig.store.keys)
    for seconds in (4.0, 4.5, 5.0, 5.5, 6.0) * (MIN_SAMPLES // 5 + 1):
        learnt.add("video-extend", seconds)
    rig.start()
    _, countdown = rig.take_plan()
    assert countdown == pytest.approx(4.0 + 0.25 * 5.0)  # p5 + a quarter of the median


def test_a_process_plans_by_the_samples_another_just_completed(rig: Rig) -> None:
    """Too few samples are not cached: once another process (another pool child) adds the
    one that completes them, the next plan here uses the curve, not the default a moment
    longer (the first plan a second after the create, and a query for nothing)."""
    here = rig.runner.durations
    elsewhere = TaskDurations(rig.store.redis, rig.store.keys)
    for seconds in (4.0, 4.5, 5.0, 5.5):
        elsewhere.add("video-extend", seconds)
    assert not here.of("video-extend").known  # read while one sample short
    elsewhere.add("video-extend", 6.0)
    rig.start()
    _, countdown = rig.take_plan()
    assert countdown == pytest.approx(4.02 + 0.25 * 5.0)  # p1 of the five + a quarter: not 1 s


def callbacks_arriving_and_tasks_of_5_s(rig: Rig) -> None:
    CallbackSeen(rig.store.redis, rig.store.keys).saw(NOW - 1)
    learnt = TaskDurations(rig.store.redis, rig.store.keys)
    for _ in range(MIN_SAMPLES):
        learnt.add("video-extend", 5.0)


def test_with_callbacks_arriving_the_plan_is_one_late_look(rig: Rig) -> None:
    # The late look rides in the step and the chain's schedule (the sweep runs it): no task
    # is queued for it.
    callbacks_arriving_and_tasks_of_5_s(rig)
    cid = rig.start()
    assert rig.planned == []
    step = rig.store.get(cid).step(0)
    assert step.look_at == pytest.approx(NOW + 5.0 + 1.25)
    due = rig.store.redis.zrange(rig.store.keys.due, 0, -1, withscores=True)
    assert due == [(b"poll|c1|0", pytest.approx(NOW + 5.0 + 1.25))]


def test_the_late_look_is_taken_by_the_sweep_and_then_the_ceiling_rules(rig: Rig) -> None:
    callbacks_arriving_and_tasks_of_5_s(rig)
    cid = rig.start()
    rig.clock.now += 7.0  # past the look; the callback was lost
    CallbackSeen(rig.store.redis, rig.store.keys).saw(rig.clock.now - 1)
    taken = rig.store.take_due(now=rig.clock.now, hold=60)
    assert [(d.work.value, d.chain_id, d.index) for d in taken] == [("poll", cid, 0)]
    rig.task_becomes(TaskStatus.PROCESSING)
    assert rig.runner.refresh(cid, 0) is None  # what the sweep's refresh_step runs
    step = rig.store.get(cid).step(0)
    assert step.look_at is None
    assert step.news_at == rig.clock.now
    due = rig.store.redis.zrange(rig.store.keys.due, 0, -1, withscores=True)
    assert due == [(b"poll|c1|0", rig.clock.now + 120)]
    assert rig.planned == []


def test_a_step_that_ends_takes_its_late_look_off_the_schedule(rig: Rig) -> None:
    callbacks_arriving_and_tasks_of_5_s(rig)
    cid = rig.start()
    rig.task_becomes(TaskStatus.SUCCEED, videos=(Video("v1", "https://cdn.example/v1.mp4", 10.0),))
    rig.runner.refresh(cid, 0)
    assert rig.store.get(cid).step(0).status is StepStatus.SUCCEED
    scored = rig.store.redis.zrange(rig.store.keys.due, 0, -1, withscores=True)
    due = [m for m, _ in cast("list[tuple[bytes, float]]", scored)]  # member, score
    assert b"poll|c1|0" not in due


def test_a_1302_backs_off_and_keeps_the_plan(rig: Rig) -> None:
    cid = rig.start()
    token, _ = rig.take_plan()
    rig.provider.query_errors = [RetryableError("too fast", code=1302, http_status=429)] * 3
    waits = [rig.runner.refresh(cid, 0, planned=token, attempt=n) for n in range(3)]
    assert all(w is not None for w in waits)
    tops = [8.0, 16.0, 32.0]  # twice max_gap (no model yet), doubling
    for wait, top in zip(waits, tops, strict=True):
        assert wait is not None
        assert top / 2 <= wait <= top
    assert rig.store.get(cid).step(0).news_at == token  # still this plan's to follow
    assert rig.planned == []
    assert rig.runner.refresh(cid, 0, planned=token, attempt=3) is None
    assert len(rig.planned) == 1


def test_fixed_mode_polls_every_poll_after(tmp_path: Path, rig: Rig) -> None:
    fixed = rig.runner.settings.model_copy(update={"polling": "fixed", "poll_after_seconds": 5})
    rig.runner.settings = fixed
    rig.start()
    _, countdown = rig.take_plan()
    assert countdown == 5.0


def test_a_plan_at_the_ceiling_is_left_to_the_sweep(rig: Rig) -> None:
    # Callbacks arriving and no durations known: the next query is the sweep's, as before
    CallbackSeen(rig.store.redis, rig.store.keys).saw(NOW - 1)
    cid = rig.start()
    assert rig.planned == []
    due = rig.store.redis.zrange(rig.store.keys.due, 0, -1, withscores=True)
    news_at = rig.store.get(cid).step(0).news_at
    assert news_at is not None
    assert due == [(b"poll|c1|0", news_at + 120)]


@pytest.mark.parametrize("announced", [False, True])
def test_the_sweep_sends_no_poll_behind_the_refresh_of_a_success_callback(
    rig: Rig, announced: bool
) -> None:
    sweep_behind_a_success_callback(rig, announced=announced)


def sweep_behind_a_success_callback(rig: Rig, *, announced: bool) -> None:
    """Under a backlog, the refresh a callback queued waits longer than POLL_AFTER_SECONDS:
    the step then looks quiet to the sweep, which would queue a poll behind that refresh."""
    sent: list[tuple[str, tuple[Any, ...]]] = []
    rig.runner.enqueue = lambda name, args: sent.append((name, args))
    cid = rig.start()
    rig.clock.now += 100
    if announced:  # what the web process counts as it queues the callback's refresh
        web = Metrics(rig.store.redis, rig.store.keys, clock=rig.clock)
        web.callback(CallbackOutcome.ACCEPTED, succeeded=(cid, 0))
    rig.clock.now += 21  # the step has had no news for POLL_AFTER_SECONDS (120)
    assert rig.runner.sweep() == (0 if announced else 1)
    assert sent == ([] if announced else [(REFRESH_STEP, (cid, 0))])

    # Should that refresh be lost, the step is polled once POLL_AFTER_SECONDS have passed
    # since the callback, as the sweep holds an item back for them (take_due).
    sent.clear()
    rig.store.redis.delete(rig.store.keys.sweep_lock)
    rig.clock.now += 120
    assert rig.runner.sweep() == 1
    assert sent == [(REFRESH_STEP, (cid, 0))]


@pytest.mark.parametrize("announced", [False, True])
def test_under_a_backlog_longer_than_the_ceiling_the_sweep_waits_as_long_as_refreshes_do(
    rig: Rig, announced: bool
) -> None:
    sweep_behind_a_long_backlog(rig, announced=announced)


def sweep_behind_a_long_backlog(rig: Rig, *, announced: bool) -> None:
    """A backlog in which a success callback's refresh waits 300 s to run, longer than
    POLL_AFTER_SECONDS (120): a poll the sweep queued at 120 s would run behind that
    refresh and find its step ended. Held back until the ceiling plus that wait."""
    sent: list[tuple[str, tuple[Any, ...]]] = []
    rig.runner.enqueue = lambda name, args: sent.append((name, args))
    cid = rig.start()
    rig.store.redis.set(rig.store.keys.refresh_wait_last, "300")  # the latest refresh waited
    if announced:
        web = Metrics(rig.store.redis, rig.store.keys, clock=rig.clock)
        web.callback(CallbackOutcome.ACCEPTED, succeeded=(cid, 0))
    for at in (121, 242, 363):  # the sweep looks again each POLL_AFTER_SECONDS (take_due)
        rig.store.redis.delete(rig.store.keys.sweep_lock)
        rig.clock.now += 121
        assert rig.runner.sweep() == (0 if announced else 1), at
        if not announced:  # no callback said the step ended: polled at the ceiling, as ever
            assert sent == [(REFRESH_STEP, (cid, 0))]
            return
    # 484 s after the callback, past 120 + 300: that refresh is late, so the step is polled
    rig.store.redis.delete(rig.store.keys.sweep_lock)
    rig.clock.now += 121
    assert rig.runner.sweep() == 1
    assert sent == [(REFRESH_STEP, (cid, 0))]
