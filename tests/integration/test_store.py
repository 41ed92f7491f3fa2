"""Atomic transitions under contention, against fakeredis and a real Redis."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import fakeredis
import pytest
import redis

from kling.models import Task, TaskStatus, Video
from worker.core.chain import (
    Claim,
    Release,
    Spec,
    SubmitStep,
    Submitted,
    TaskUpdate,
    Verdict,
    new_chain,
)
from worker.core.videos import archived, claim
from worker.state import optimistic
from worker.state.chains import Settled, Store, Timing, UnknownChain
from worker.state.spend import DAY_TTL, Spend, utc_day
from worker.state.videos import Videos

TIMING = Timing(poll_after=120, submit_lease=60)


@pytest.fixture(params=["fakeredis", "redis"])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    if request.param == "fakeredis":
        return fakeredis.FakeRedis()
    return redis.Redis.from_url(request.getfixturevalue("redis_url"))


@pytest.fixture
def store(client: redis.Redis) -> Iterator[Store]:
    prefix = f"test-store-{secrets.token_hex(4)}:"
    yield Store(client, prefix=prefix, timing=TIMING)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


@contextmanager
def counted_gets(store: Store) -> Iterator[list[str]]:
    """The keys the store GETs meanwhile, in order."""
    reads: list[str] = []
    real_get = store.redis.get

    def counted_get(name: Any) -> Any:
        reads.append(str(name))
        return real_get(name)

    store.redis.get = counted_get  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        store.redis.get = real_get  # type: ignore[method-assign]


def hammer(n: int, work: object) -> list[object]:
    results: list[object] = []
    barrier = threading.Barrier(n)

    def run() -> None:
        barrier.wait()
        results.append(work())  # type: ignore[operator]

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_only_one_of_many_concurrent_claims_wins(store: Store) -> None:
    chain = new_chain("c", Spec(video_id="v", steps=1), 1.0)
    store.create(chain)
    verdicts = hammer(12, lambda: store.transition("c", Claim(0, secrets.token_hex(4), 60)).verdict)
    assert verdicts.count(Verdict.GO) == 1


def test_many_concurrent_successes_yield_one_next_step(store: Store) -> None:
    chain = new_chain("c", Spec(video_id="v", steps=3), 1.0)
    store.create(chain)
    store.transition("c", Claim(0, "w", 60))
    store.transition("c", Submitted(0, Task("t0", TaskStatus.SUBMITTED)))
    done = Task("t0", TaskStatus.SUCCEED, videos=(Video("v1", "https://x/v1.mp4", 9.0),))
    actions = hammer(12, lambda: store.transition("c", TaskUpdate(0, done)).actions)
    submits = [a for batch in actions for a in batch if isinstance(a, SubmitStep)]  # type: ignore[attr-defined]
    assert submits == [SubmitStep(1)]
    assert len(store.get("c").steps) == 2


def succeeded_one_step_chain(store: Store) -> Videos:
    """Chain "c", one step, succeeded with video "v1": its record registered, not settled."""
    store.create(new_chain("c", Spec(video_id="v", steps=1), 1.0))
    store.transition("c", Claim(0, "w", 60))
    store.transition("c", Submitted(0, Task("t0", TaskStatus.SUBMITTED)))
    done = Task("t0", TaskStatus.SUCCEED, videos=(Video("v1", "https://x/v1.mp4", 9.0),))
    store.transition("c", TaskUpdate(0, done))
    return Videos(store.redis, prefix=store.keys.prefix)


def test_a_chain_video_settles_its_chain_once_across_concurrent_workers(store: Store) -> None:
    # Given a one-step chain whose step succeeded: its video's record registered with it
    videos = succeeded_one_step_chain(store)
    assert [r.chain_id for r in videos.by_deadline(10)] == ["c"]

    # When twelve workers mark it archived at once
    def settle() -> Settled:
        return store.settle(
            "v1", lambda r: archived(r, location="/a/v1.mp4", size=1, sha256="x", host="x", now=2.0)
        )

    results = [r for r in hammer(12, settle) if isinstance(r, Settled)]
    # Then one of them did, and that one ended the chain, in the same transaction
    assert [r.changed for r in results].count(True) == 1
    assert [r.chain is not None and r.chain.ended for r in results].count(True) == 1
    chain = store.get("c")
    assert (chain.status.value, chain.settled) == ("succeeded", ["v1"])
    assert videos.by_deadline(10) == []


def test_a_settle_on_the_record_its_claim_wrote_reads_it_only_when_it_changed(
    store: Store,
) -> None:
    # Given a chain's video record, claimed by an archive (what the claim wrote is the hint)
    videos = succeeded_one_step_chain(store)
    claimed, _ = videos.update("v1", lambda r: claim(r, "archiver", 2.0, 60))
    assert claimed is not None

    def done_at(now: float) -> Any:
        return lambda r: archived(r, location="/a/v1.mp4", size=1, sha256="x", host="h", now=now)

    with counted_gets(store) as reads:
        # When the download ends: the settle decides on the hint, reading only the chain
        out = store.settle("v1", done_at(3.0), hint=claimed)
    assert out.changed
    assert out.chain is not None
    assert out.chain.ended
    assert [r.rsplit(":", 2)[-2] for r in reads] == ["chain"]
    assert store.get("c").settled == ["v1"]
    # A hint that is no longer what is stored is found out at the commit: nothing settles twice
    again = store.settle("v1", done_at(4.0), hint=claimed)
    assert not again.changed
    record = videos.get("v1")
    assert record is not None
    assert record.archived_at == 3.0


def test_a_step_is_counted_once_in_the_day_however_often_its_end_is_applied(
    store: Store,
) -> None:
    # Given two chains on a step each: one provider task reports 2.5 units, one no cost
    for chain_id in ("c", "d"):
        store.create(new_chain(chain_id, Spec(video_id="v", steps=1), 1.0))
        store.transition(chain_id, Claim(0, "w", 60))
        store.transition(chain_id, Submitted(0, Task(f"t-{chain_id}", TaskStatus.SUBMITTED)))
    priced = Task(
        "t-c",
        TaskStatus.SUCCEED,
        videos=(Video("v1", "https://x/v1.mp4", 9.0),),
        units=Decimal("2.5"),
    )
    unpriced = Task("t-d", TaskStatus.SUCCEED, videos=(Video("v2", "https://x/v2.mp4", 9.0),))
    # When each end is applied twelve times at once, and once more afterwards
    hammer(12, lambda: store.transition("c", TaskUpdate(0, priced)))
    hammer(12, lambda: store.transition("d", TaskUpdate(0, unpriced)))
    store.transition("c", TaskUpdate(0, priced))
    # Then the day and the all-time counter hold it once, per chain and per kind
    spend = Spend(store.redis, store.keys)
    today = spend.days(1)[0]
    assert today.date == utc_day(store.clock())
    assert (today.units, today.unpriced, spend.total()) == ("2.5", 1, "2.5")
    assert today.chains == [("c", "2.5")]
    assert today.latest == {"video-extend": "2.5"}
    assert store.get("c").steps[0].units == "2.5"
    assert store.get("d").steps[0].units is None
    assert 0 < store.redis.ttl(store.keys.spend_day(today.date)) <= DAY_TTL


def test_due_work_is_handed_out_once_across_concurrent_sweeps(store: Store) -> None:
    for i in range(50):
        store.create(new_chain(f"c{i}", Spec(video_id="v", steps=1), 1.0))
    batches = hammer(6, lambda: store.take_due(now=10_000.0, hold=60))
    items = [i for batch in batches for i in batch]  # type: ignore[attr-defined]
    assert len(items) == 50
    assert len(set(items)) == 50
    assert store.take_due(now=10_000.0, hold=60) == []


def test_unknown_chain(store: Store) -> None:
    with pytest.raises(UnknownChain):
        store.get("nope")
    with pytest.raises(UnknownChain):
        store.transition("nope", Claim(0, "w", 60))


def test_optimistic_counts_every_increment_under_contention(client: redis.Redis) -> None:
    key, other = f"test-opt-{secrets.token_hex(4)}", f"test-opt-{secrets.token_hex(4)}"
    client.set(other, b"7")

    def bump() -> int:
        def decide(raw: bytes | None, read: Any) -> tuple[Any, int]:
            n = int(raw or 0) + int(read(other) or 0) - 7  # reads a second document too
            return (lambda pipe: pipe.set(key, n + 1).hincrby(f"{key}:h", "n", 1)), n + 1

        return optimistic(client, key, decide)

    threads = 12
    per = 25
    results = hammer(threads, lambda: [bump() for _ in range(per)])
    assert int(client.get(key) or 0) == threads * per
    assert int(client.hget(f"{key}:h", "n") or 0) == threads * per
    seen = sorted(n for batch in results for n in batch)  # type: ignore[attr-defined]
    assert seen == list(range(1, threads * per + 1))  # one linear history
    client.delete(key, other, f"{key}:h")


def test_optimistic_decides_again_when_a_read_document_changed(client: redis.Redis) -> None:
    key, other = f"test-opt-{secrets.token_hex(4)}", f"test-opt-{secrets.token_hex(4)}"
    calls: list[tuple[bytes | None, bytes | None]] = []

    def decide(raw: bytes | None, read: Any) -> tuple[Any, str]:
        seen = read(other)
        calls.append((raw, seen))
        if len(calls) == 1:
            client.set(other, b"changed")  # another client, between the read and the commit
        return (lambda pipe: pipe.set(key, b"written from " + (seen or b"nothing"))), "ok"

    assert optimistic(client, key, decide) == "ok"
    assert calls == [(None, None), (None, b"changed")]
    assert client.get(key) == b"written from changed"
    client.delete(key, other)


def test_a_stale_hint_is_never_committed_on(client: redis.Redis) -> None:
    key = f"test-opt-{secrets.token_hex(4)}"
    client.set(key, b"2")
    calls: list[bytes | None] = []

    def double(raw: bytes | None, read: Any) -> tuple[Any, int]:
        calls.append(raw)
        n = int(raw or 0) * 2
        return (lambda pipe: pipe.set(key, n)), n

    # A hint that is right saves the read; one that is wrong is found out at the commit
    assert optimistic(client, key, double, hint=b"2") == 4
    assert optimistic(client, key, double, hint=b"2") == 8
    assert calls == [b"2", b"2", b"4"]
    assert client.get(key) == b"8"
    client.delete(key)


def test_a_transition_after_a_read_takes_that_read_as_its_first(store: Store) -> None:
    chain = new_chain("c", Spec(video_id="v", steps=2), 1.0)
    store.create(chain)
    store.get("c")
    with counted_gets(store) as reads:
        store.transition("c", Claim(0, "w1", 60))  # on the document get() read
        store.transition("c", Release(0, "w1"))  # on the one the claim wrote
    assert [r for r in reads if r.endswith(":chain:c")] == []
    assert store.get("c").step(0).owner is None
    # Another writer in between: the transition finds out and decides on what is there
    store.get("c")
    other = Store(store.redis, prefix=store.keys.prefix, timing=TIMING)
    other.transition("c", Claim(0, "w2", 60))
    out = store.transition("c", Claim(0, "w1", 60))
    assert out.verdict is Verdict.SKIP  # w2 holds it
    assert store.get("c").step(0).owner == "w2"


@pytest.mark.parametrize("on_a_wrong_hint", ["writes nothing", "raises"])
def test_what_no_commit_checks_is_decided_again_on_a_real_read(
    client: redis.Redis, on_a_wrong_hint: str
) -> None:
    """A decision to write nothing, or an error, has no commit to check the hint it was made
    on: it is made again on what is really there."""
    key = f"test-opt-{secrets.token_hex(4)}"
    client.set(key, b"due")
    calls: list[bytes | None] = []

    def claim(raw: bytes | None, read: Any) -> tuple[Any, str]:
        calls.append(raw)
        if raw != b"due":
            if on_a_wrong_hint == "raises":
                raise KeyError("no such step")  # what the stale document lacks
            return None, "skip"
        return (lambda pipe: pipe.set(key, b"claimed")), "claimed"

    assert optimistic(client, key, claim, hint=b"not due yet") == "claimed"
    assert calls == [b"not due yet", b"due"]
    assert client.get(key) == b"claimed"
    if on_a_wrong_hint == "raises":
        with pytest.raises(KeyError):  # on a real read, the error stands
            optimistic(client, key, claim)
    client.delete(key)
