"""Atomic transitions under contention, against fakeredis and a real Redis."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from kling.models import Task, TaskStatus, Video
from worker.core.chain import Claim, Spec, SubmitStep, Submitted, TaskUpdate, Verdict, new_chain
from worker.core.videos import archived
from worker.state.chains import Settled, Store, Timing, UnknownChain
from worker.state.videos import Videos

TIMING = Timing(poll_after=120, submit_lease=60)


@pytest.fixture(params=["fakeredis", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "fakeredis":
        client: redis.Redis = fakeredis.FakeRedis()
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    prefix = f"test-store-{secrets.token_hex(4)}:"
    yield Store(client, prefix=prefix, timing=TIMING)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


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


def test_a_chain_video_settles_its_chain_once_across_concurrent_workers(store: Store) -> None:
    # Given a one-step chain whose step succeeded: its video's record registered with it
    store.create(new_chain("c", Spec(video_id="v", steps=1), 1.0))
    store.transition("c", Claim(0, "w", 60))
    store.transition("c", Submitted(0, Task("t0", TaskStatus.SUBMITTED)))
    done = Task("t0", TaskStatus.SUCCEED, videos=(Video("v1", "https://x/v1.mp4", 9.0),))
    store.transition("c", TaskUpdate(0, done))
    videos = Videos(store.redis, prefix=store.keys.prefix)
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
