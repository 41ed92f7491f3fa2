"""The video record's pure rules: the one archive state, for chains' videos and the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from worker.core.videos import (
    VideoRecord,
    VideoState,
    adopt,
    archived,
    claim,
    lost,
    queue,
    retry_at,
    unsafe_id,
)

NOW = 1_000_000.0
LEASE = 60.0


def record(**fields: object) -> VideoRecord:
    base: dict[str, object] = {
        "video_id": "v1",
        "task_id": "t1",
        "kind": "video-extend",
        "url": "https://cdn.example/v1.mp4",
        "created_at": NOW,
        "known_at": NOW,
        "duration": 9.5,
        "parent_video_id": "v0",
    }
    return VideoRecord(**{**base, **fields})  # type: ignore[arg-type]


def done(r: VideoRecord) -> VideoRecord:
    return archived(r, location="/a/v1.mp4", size=10, sha256="ab", host="cdn.example", now=NOW)


def test_a_claim_is_exclusive_until_its_lease_ends() -> None:
    first = claim(record(), "a", NOW, LEASE)
    assert first is not None
    assert (first.owner, first.attempts) == ("a", 1)
    assert claim(first, "b", NOW + 1, LEASE) is None  # someone else, while the lease is live
    assert claim(first, "a", NOW + 1, LEASE) is not None  # the holder, redelivered
    assert claim(first, "b", NOW + LEASE, LEASE) is not None  # the holder died
    assert claim(done(first), "b", NOW + LEASE, LEASE) is None  # settled: nothing to do


def test_a_retry_backs_off_and_keeps_the_reason() -> None:
    held = claim(record(), "a", NOW, LEASE)
    assert held is not None
    waiting = retry_at(held, "connection reset", NOW + 30)
    assert (waiting.error, waiting.owner, waiting.state) == (
        "connection reset",
        None,
        VideoState.PENDING,
    )
    assert claim(waiting, "a", NOW + 10, LEASE) is None
    assert claim(waiting, "a", NOW + 30, LEASE) is not None
    assert queue(waiting, NOW + 10, hold=5) is None  # not handed out before its time either


@pytest.mark.parametrize(
    ("settle", "state", "error"),
    [
        (done, VideoState.ARCHIVED, None),
        (lambda r: lost(r, "HTTP 404"), VideoState.LOST, "HTTP 404"),
    ],
)
def test_records_settle_once_and_only_forward(
    settle: Callable[[VideoRecord], VideoRecord], state: VideoState, error: str | None
) -> None:
    after = settle(retry_at(record(), "reset", NOW))
    assert (after.state, after.error, after.settled) == (state, error, True)
    assert done(after) == after
    assert lost(after, "late") == after
    assert retry_at(after, "late", NOW + 1) == after


def test_a_record_known_before_its_chain_recorded_it_becomes_the_chains() -> None:
    mine = record(chain_id="c1", step=2, parent_task_id="t0", prompt="a fox", origin="chain")
    known = record(origin="request")
    adopted = adopt(known, mine)
    assert (adopted.chain_id, adopted.step, adopted.parent_task_id) == ("c1", 2, "t0")
    assert (adopted.origin, adopted.prompt, adopted.known_at) == ("chain", "a fox", NOW)
    assert adopt(adopted, replace(mine, chain_id="c2")) == adopted  # never another chain's


@pytest.mark.parametrize(
    ("fields", "extra"),
    [
        ({"origin": "request"}, set()),
        (
            {"origin": "chain", "chain_id": "c1", "step": 1, "parent_task_id": "t0"},
            {"chain_id", "step", "parent_task_id"},
        ),
    ],
)
def test_the_sidecar_says_where_the_video_came_from(
    fields: dict[str, object], extra: set[str]
) -> None:
    sidecar = record(**fields).sidecar()
    assert (
        set(sidecar)
        == {"task_id", "kind", "parent_video_id", "prompt", "duration", "origin"} | extra
    )
    assert all(sidecar[k] == fields[k] for k in extra)


@pytest.mark.parametrize(
    ("video_id", "safe"),
    [
        ("vid_bNd6X0", True),
        ("a.b-c_1", True),
        ("../x", False),
        (".hidden", False),
        ("x" * 129, False),
    ],
)
def test_unsafe_ids_are_named(video_id: str, safe: bool) -> None:
    problem = unsafe_id(video_id)
    assert (problem is None) is safe
    assert safe or "not a safe file name" in (problem or "")
