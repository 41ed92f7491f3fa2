"""Provider slots (KLING_CONCURRENCY): the pure rules, the Redis scripts on fakeredis, and
the runner's acquire, wait, release and hand-over with a scripted provider."""

from __future__ import annotations

import threading
from pathlib import Path

import fakeredis
import pytest

from kling.errors import AmbiguousCreate, RetryableError
from kling.models import Task, TaskStatus, Video
from worker.core import slots
from worker.core.chain import AwaitSlot, Chain, ChainStatus, Spec, StepStatus, apply, new_chain
from worker.core.metrics import TURNAROUND, CallbackOutcome
from worker.state.metrics import Metrics
from worker.state.slots import Acquired, Slots
from worker.tasknames import SUBMIT_STEP

from .test_runner import NOW, Rig, ScriptedProvider, make_rig


# -- the pure rules -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rank", "in_use", "limit", "expected"),
    [
        (0, 0, 3, True),
        (2, 0, 3, True),
        (3, 0, 3, False),
        (0, 2, 3, True),
        (1, 2, 3, False),
        (0, 3, 3, False),
        (0, 4, 3, False),  # over the limit (a lower limit configured since): nobody takes
    ],
)
def test_the_first_in_line_take_the_free_slots(
    rank: int, in_use: int, limit: int, expected: bool
) -> None:
    assert slots.may_take(rank, in_use, limit) is expected


@pytest.mark.parametrize(
    ("status", "holds"),
    [
        (StepStatus.PENDING, False),
        (StepStatus.SUBMITTING, True),
        (StepStatus.SUBMITTED, True),
        (StepStatus.PROCESSING, True),
        (StepStatus.SUCCEED, False),
        (StepStatus.FAILED, False),
        (StepStatus.ATTENTION, False),
    ],
)
def test_a_step_holds_a_slot_from_its_create_until_its_task_ends(
    status: StepStatus, holds: bool
) -> None:
    assert slots.holds(status) is holds
    chain = _chain("c")
    chain.step(0).status = status
    assert slots.holder_stale(chain, 0) is not holds


def _chain(chain_id: str) -> Chain:
    return new_chain(chain_id, Spec(video_id="v0", task_id="p0", steps=2), NOW)


def test_stale_holders_and_waiters() -> None:
    chain = _chain("c")
    assert slots.holder_stale(None, 0)  # the chain is gone
    assert slots.holder_stale(chain, 5)  # no such step
    assert not slots.waiter_stale(chain, 0)  # pending: waits
    chain.step(0).status = StepStatus.SUBMITTED
    assert slots.waiter_stale(chain, 0)  # it got its slot: no longer in line
    chain.step(0).status = StepStatus.PENDING
    chain.cancelled_at = NOW
    assert slots.waiter_stale(chain, 0)  # a cancelled chain sends nothing
    assert slots.waiter_stale(None, 0)


def test_await_slot_gives_the_claim_back_only_to_its_claimant() -> None:
    chain = _chain("c")
    step = chain.step(0)
    step.status, step.owner, step.claimed_at, step.first_try_at = (
        StepStatus.SUBMITTING,
        "w1",
        NOW,
        NOW,
    )
    text = slots.waiting_text(3, 3)
    assert apply(chain, AwaitSlot(0, "w2", text), NOW).chain == chain  # not its claim
    after = apply(chain, AwaitSlot(0, "w1", text), NOW).chain
    assert after.step(0).status is StepStatus.PENDING
    assert (after.step(0).owner, after.step(0).first_try_at) == (None, None)
    assert after.waiting == text


def test_names_and_the_waiting_text() -> None:
    assert slots.parse(slots.member("ab:c", 4)) == ("ab:c", 4)
    assert slots.waiting_text(3, 3) == "waiting for a provider slot, 3 of 3 in use"


# -- the Redis scripts --------------------------------------------------------------------------
@pytest.fixture
def gate() -> Slots:
    return Slots(fakeredis.FakeRedis(), prefix="t:", limit=2)


def test_acquire_up_to_the_limit_then_wait_in_arrival_order(gate: Slots) -> None:
    assert gate.acquire("a", 0, now=1).taken
    assert gate.acquire("b", 0, now=2).taken
    assert gate.acquire("a", 0, now=2.5).taken  # a holder keeps its slot
    assert gate.acquire("c", 0, now=3) == Acquired(False, 2)
    assert not gate.acquire("d", 0, now=4).taken
    assert gate.waiters() == ["c:0", "d:0"]
    # A release hands the free slot to the first in line, which alone may take it.
    assert gate.release("a", 0, leave_line=True) == [("c", 0)]
    assert not gate.acquire("d", 0, now=5).taken
    assert gate.acquire("c", 0, now=6).taken
    assert gate.waiters() == ["d:0"]
    assert gate.release("a", 0, leave_line=True) == []  # repeated: nothing handed over


def test_a_waiter_keeps_its_place_when_it_asks_again(gate: Slots) -> None:
    gate.acquire("a", 0, now=1)
    gate.acquire("b", 0, now=2)
    gate.acquire("c", 0, now=3)
    gate.acquire("d", 0, now=4)
    gate.acquire("c", 0, now=10)  # polls again: still first
    assert gate.waiters() == ["c:0", "d:0"]


def test_reclaim_takes_a_stale_holder_unless_it_took_its_slot_again(gate: Slots) -> None:
    gate.acquire("a", 0, now=1)
    seen = gate.holders()["a:0"]
    gate.release("a", 0, leave_line=True)
    gate.acquire("a", 0, now=9)  # took it again since the sweep looked
    assert not gate.reclaim("a:0", seen)
    assert gate.reclaim("a:0", gate.holders()["a:0"])
    assert gate.holders() == {}


def test_twelve_threads_never_hold_more_than_three_slots() -> None:
    server = fakeredis.FakeServer()
    peak, holding, lock = [0], [0], threading.Lock()
    done: list[str] = []

    def work(n: int) -> None:
        gate = Slots(fakeredis.FakeRedis(server=server), prefix="t:", limit=3)
        for step in range(3):
            while not gate.acquire(f"c{n}", step, now=n + step / 10).taken:
                pass
            with lock:
                holding[0] += 1
                peak[0] = max(peak[0], holding[0])
            with lock:
                holding[0] -= 1
            gate.release(f"c{n}", step, leave_line=True)
        done.append(f"c{n}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(done) == 12
    assert 1 <= peak[0] <= 3
    probe = Slots(fakeredis.FakeRedis(server=server), prefix="t:", limit=3)
    assert probe.holders() == {}
    assert probe.waiters() == []


# -- the runner ---------------------------------------------------------------------------------
def gated(tmp_path: Path, limit: int = 1) -> Rig:
    rig = make_rig(tmp_path, ScriptedProvider())
    rig.runner.slots = Slots(rig.store.redis, prefix="t:", limit=limit)
    return rig


def start(rig: Rig, chain_id: str) -> str:
    rig.store.create(new_chain(chain_id, Spec(video_id="v0", task_id="p0", steps=2), NOW))
    return chain_id


def finish(rig: Rig, chain_id: str, index: int) -> None:
    task_id = rig.store.get(chain_id).step(index).task_id
    assert task_id is not None
    rig.provider.tasks[task_id] = Task(
        task_id, TaskStatus.SUCCEED, videos=(Video(f"v-{task_id}", "https://cdn.example/x", 9.0),)
    )
    rig.runner.refresh(chain_id, index)


def test_a_step_without_a_slot_waits_saying_so_and_gets_it_handed_over(tmp_path: Path) -> None:
    rig = gated(tmp_path)
    a, b = start(rig, "ca"), start(rig, "cb")
    assert rig.runner.submit(a, 0, owner="x") is None
    # Given one slot held, when b asks, then nothing is sent and b waits in line.
    delay = rig.runner.submit(b, 0, owner="y")
    assert delay == rig.runner.settings.slot_poll_seconds
    chain = rig.store.get(b)
    assert chain.step(0).status is StepStatus.PENDING
    assert chain.waiting == "waiting for a provider slot, 1 of 1 in use"
    assert chain.status is ChainStatus.QUEUED  # nothing of it was sent yet
    assert len(rig.provider.creates) == 1
    # When a's task ends, its slot goes to b at once: a submit is enqueued for it.
    rig.queued.clear()
    finish(rig, a, 0)
    assert (SUBMIT_STEP, (b, 0)) in rig.queued
    assert rig.runner.submit(b, 0, owner="y2") is None
    chain = rig.store.get(b)
    assert chain.step(0).status is StepStatus.SUBMITTED
    assert chain.waiting is None
    assert len(rig.provider.creates) == 2
    # a's next step now waits behind b.
    assert rig.runner.submit(a, 1, owner="z") is not None
    assert rig.store.get(a).step(1).status is StepStatus.PENDING


def test_a_refused_create_gives_its_slot_back_a_lost_reply_keeps_it(tmp_path: Path) -> None:
    rig = gated(tmp_path)
    a = start(rig, "ca")
    rig.provider.script = [RetryableError("parallel task over resource pack limit", code=1303)]
    assert rig.runner.submit(a, 0, owner="x") is not None
    assert rig.runner.slots is not None
    assert rig.runner.slots.holders() == {}
    rig.provider.script = [AmbiguousCreate("read timed out")]
    rig.store.redis.flushall()
    a = start(rig, "ca")
    rig.runner.submit(a, 0, owner="x")
    assert list(rig.runner.slots.holders()) == ["ca:0"]  # it may be in flight


def test_the_sweep_reclaims_slots_whose_step_no_longer_holds_one(tmp_path: Path) -> None:
    rig = gated(tmp_path)
    a, b = start(rig, "ca"), start(rig, "cb")
    rig.runner.submit(a, 0, owner="x")
    rig.runner.submit(b, 0, owner="y")  # waits
    gate = rig.runner.slots
    assert gate is not None
    # Given a slot whose release was lost (its holder died), and a's, still submitted ...
    rig.store.redis.hset(rig.store.keys.slot_holders, "gone:0", "1")
    # ... the sweep takes only the dead one.
    assert rig.runner.sweep_slots() == 1
    assert set(gate.holders()) == {"ca:0"}
    assert rig.store.get(a).step(0).status is StepStatus.SUBMITTED
    # And a's settled step: its slot is taken back too, and handed to b.
    chain = rig.store.get(a)
    chain.step(0).status = StepStatus.FAILED
    rig.store.redis.set(rig.store.keys.chain(a), chain.to_json())
    rig.queued.clear()
    assert rig.runner.sweep_slots() == 1
    assert rig.queued == [(SUBMIT_STEP, (b, 0))]
    # A cancelled chain's waiter leaves the line.
    cancelled = rig.store.get(b)
    cancelled.cancelled_at = NOW
    rig.store.redis.set(rig.store.keys.chain(b), cancelled.to_json())
    rig.runner.sweep_slots()
    assert gate.waiters() == []


def test_a_wait_for_a_slot_does_not_count_as_a_refresh_waiting_to_run(tmp_path: Path) -> None:
    """The sweep holds a poll of an announced step back by how long refreshes wait to run
    (``Keys.refresh_wait_last``): a step waiting for a slot after its claim must not stretch
    that, or a lost refresh would be polled up to an hour late."""
    rig = gated(tmp_path)
    now = [NOW]
    rig.runner.clock = rig.store.clock = rig.runner.metrics.clock = lambda: now[0]
    a, c = start(rig, "ca"), start(rig, "cc")
    assert rig.runner.submit(a, 0, owner="x") is None
    assert rig.runner.submit(c, 0, owner="y") is not None  # waits: a holds the one slot
    # Given a's step 0 said to have succeeded by a callback, and its refresh 1 s later
    web = Metrics(rig.store.redis, rig.store.keys, clock=lambda: now[0])
    web.callback(CallbackOutcome.ACCEPTED, succeeded=(a, 0))
    now[0] += 1
    finish(rig, a, 0)
    # When c takes the freed slot first, a's step 1 waits for 10 minutes before its create
    assert rig.runner.submit(c, 0, owner="y2") is None
    assert rig.runner.submit(a, 1, owner="z") is not None
    now[0] += 600
    finish(rig, c, 0)
    assert rig.runner.submit(a, 1, owner="z2") is None
    assert rig.store.get(a).step(1).status is StepStatus.SUBMITTED
    # Then the turnaround is the 601 s a user waited, and the refresh's wait the 1 s
    assert web.read(queues=(), warn_window=3600).histograms[TURNAROUND.name].sum == pytest.approx(
        601
    )
    assert float(rig.store.redis.get(rig.store.keys.refresh_wait_last) or 0) == pytest.approx(1)
