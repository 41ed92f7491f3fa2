"""The metric store in Redis (fakeredis) and what the collector renders from it."""

from __future__ import annotations

import math
from typing import Any

import fakeredis
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from chainctl.devstack import free_port
from kling.errors import (
    AmbiguousCreate,
    AuthError,
    KlingError,
    MalformedReply,
    NotFound,
    PermanentError,
    RetryableError,
)
from kling.models import VIDEO_LIFETIME_SECONDS, Task, TaskStatus, Video
from webhook import metrics as rendering
from worker.core.chain import Cancel, Claim, Spec, Submitted, TaskUpdate, new_chain
from worker.core.metrics import (
    TASK_SECONDS,
    TURNAROUND,
    CallbackOutcome,
    CreateOutcome,
    Histogram,
    QueryOutcome,
    create_outcome,
    query_outcome,
    task_seconds,
)
from worker.core.videos import VideoRecord, VideoState
from worker.state.chains import Store, Timing
from worker.state.keys import Keys
from worker.state.metrics import Metrics, Snapshot
from worker.state.videos import Videos, write

NOW = 1_800_000_000.0
PREFIX = "t:"
KEYS = Keys(PREFIX)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def figures(client: fakeredis.FakeRedis, clock: Clock) -> Metrics:
    return Metrics(client, KEYS, clock=clock)


def read(figures: Metrics, **kw: Any) -> Snapshot:
    return figures.read(queues=kw.get("queues", ("q",)), warn_window=kw.get("warn", 3600.0))


def scrape(snap: Snapshot, total: str = "0", today: str = "0") -> dict[str, Any]:
    """The rendered text, parsed back: family name -> family."""
    built = rendering.registry(lambda: (snap, total, today))
    text = rendering.render(built).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(family: Any, name: str, **labels: str) -> float:
    for s in family.samples:
        if s.name == name and s.labels == labels:
            return float(s.value)
    raise AssertionError(f"no {name}{labels} in {family.samples}")


# -- the pure rules ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (AmbiguousCreate("lost"), CreateOutcome.AMBIGUOUS),
        (MalformedReply("garbled"), CreateOutcome.AMBIGUOUS),
        (RetryableError("busy", code=1303, http_status=429), CreateOutcome.REFUSED),
        (RetryableError("too fast", code=1302, http_status=429), CreateOutcome.REFUSED),
        (RetryableError("could not connect"), CreateOutcome.REFUSED),
        (PermanentError("exhausted", code=1102, http_status=429), CreateOutcome.REFUSED),
        (AuthError("bad key", code=1001), CreateOutcome.REFUSED),
    ],
)
def test_a_failed_create_counts_as_refused_or_ambiguous(
    exc: KlingError, outcome: CreateOutcome
) -> None:
    assert create_outcome(exc) is outcome


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (NotFound("gone", code=1203), QueryOutcome.NOT_FOUND),
        (AuthError("bad key", code=1001), QueryOutcome.REFUSED),
        (RetryableError("busy", code=5000), QueryOutcome.ERROR),
        (MalformedReply("garbled"), QueryOutcome.ERROR),
    ],
)
def test_a_failed_query_counts_by_what_it_was(exc: KlingError, outcome: QueryOutcome) -> None:
    assert query_outcome(exc) is outcome


@pytest.mark.parametrize(
    ("value", "field"),
    [(0.0, "1.0"), (1.0, "1.0"), (1.5, "2.0"), (2.0, "2.0"), (2.1, "+Inf"), (1e9, "+Inf")],
)
def test_a_value_falls_in_the_smallest_bucket_that_holds_it(value: float, field: str) -> None:
    assert Histogram("h", "", (1.0, 2.0)).bucket(value) == field


def test_buckets_are_rendered_cumulative_with_inf_the_count() -> None:
    h = Histogram("h", "", (1.0, 2.0, 5.0))
    assert h.cumulative({"1.0": 2, "5.0": 1}, 4) == [
        ("1.0", 2),
        ("2.0", 2),
        ("5.0", 3),
        ("+Inf", 4),
    ]


def test_task_seconds_come_from_the_providers_own_timestamps() -> None:
    assert (
        task_seconds(Task("t", TaskStatus.SUCCEED, created_at_ms=1000, updated_at_ms=91500)) == 90.5
    )
    assert task_seconds(Task("t", TaskStatus.SUCCEED, created_at_ms=1000)) is None
    assert task_seconds(Task("t", TaskStatus.SUCCEED, created_at_ms=5000, updated_at_ms=1)) is None


# -- the store -----------------------------------------------------------------------------------
def test_creates_are_counted_by_kind_and_outcome(figures: Metrics) -> None:
    for outcome in (CreateOutcome.ACCEPTED, CreateOutcome.ACCEPTED, CreateOutcome.REFUSED):
        figures.created("video-extend", outcome, chain_id="c", index=0)
    figures.created("text2video", CreateOutcome.AMBIGUOUS, chain_id="d", index=0)
    counted = read(figures).counters["kc_creates_total"]
    assert counted == {
        ("video-extend", "accepted"): 2.0,
        ("video-extend", "refused"): 1.0,
        ("text2video", "ambiguous"): 1.0,
    }


def test_refused_creates_are_summed_over_the_last_hour_and_in_all(
    figures: Metrics, clock: Clock
) -> None:
    figures.created("video-extend", CreateOutcome.REFUSED, chain_id="c", index=0)
    clock.now += 30 * 60
    figures.created("video-extend", CreateOutcome.REFUSED, chain_id="c", index=0)
    figures.created("text2video", CreateOutcome.REFUSED, chain_id="d", index=0)
    figures.created("text2video", CreateOutcome.ACCEPTED, chain_id="d", index=0)
    assert (figures.refused().last_hour, figures.refused().total) == (3, 3)
    clock.now += 45 * 60  # the first is now 75 minutes old
    assert (figures.refused().last_hour, figures.refused().total) == (2, 3)


def test_steps_announced_are_those_a_success_callback_named_lately(
    figures: Metrics, client: fakeredis.FakeRedis, clock: Clock
) -> None:
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("c", 0))
    clock.now += 10
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("c", 2))
    client.set(KEYS.callback_arrived("c", 3), "not a time")
    steps = [("c", 0), ("c", 1), ("c", 2), ("c", 3)]
    assert figures.announced(steps, within=30) == {("c", 0), ("c", 2)}
    assert figures.announced(steps, within=5) == {("c", 2)}
    assert figures.announced([], within=30) == set()


def test_an_announcement_lasts_as_much_longer_as_the_latest_refresh_waited(
    figures: Metrics, client: fakeredis.FakeRedis, clock: Clock
) -> None:
    # Given a backlog: the refresh of a success callback waited 40 s to create the next step
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("busy", 0))
    clock.now += 40
    figures.created("video-extend", CreateOutcome.ACCEPTED, chain_id="busy", index=1)
    assert float(client.get(KEYS.refresh_wait_last) or 0) == pytest.approx(40)
    assert 0 < client.ttl(KEYS.refresh_wait_last) <= 3600
    # When another step's success callback is 50 s old
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("c", 0))
    clock.now += 50
    # Then it still counts as announced within 30 s (its refresh may wait 40 s more), not 10
    assert figures.announced([("c", 0)], within=30) == {("c", 0)}
    assert figures.announced([("c", 0)], within=9) == set()
    # and a value that is not a time adds nothing
    for junk in ("not a time", "-5", "inf", "nan"):
        client.set(KEYS.refresh_wait_last, junk)
        assert figures.announced([("c", 0)], within=30) == set()


def test_a_wait_for_a_slot_or_the_budget_after_the_refresh_is_no_refresh_wait(
    figures: Metrics, client: fakeredis.FakeRedis, clock: Clock
) -> None:
    # Given a success callback whose refresh recorded the step's end 2 s later, and the next
    # step then waited 10 minutes for a slot (or the budget) before its create was accepted
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("held", 0))
    ran = clock.now + 2
    clock.now += 600
    figures.created("video-extend", CreateOutcome.ACCEPTED, chain_id="held", index=1, refreshed=ran)
    # Then the turnaround, as users see it, is the 10 minutes; the refresh waited 2 s
    assert read(figures).histograms[TURNAROUND.name].sum == pytest.approx(600)
    assert float(client.get(KEYS.refresh_wait_last) or 0) == pytest.approx(2)
    # and another step's success callback is no longer announced 2 minutes on (2 + 60 s)
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("c", 0))
    clock.now += 120
    assert figures.announced([("c", 0)], within=60) == set()
    # An end recorded before the callback arrived (a poll learnt of it first) waited 0 s
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("early", 0))
    clock.now += 5
    early = clock.now - 9
    figures.created(
        "video-extend", CreateOutcome.ACCEPTED, chain_id="early", index=1, refreshed=early
    )
    assert float(client.get(KEYS.refresh_wait_last) or 0) == 0


def test_turnaround_runs_from_the_first_success_callback_to_the_next_accepted_create(
    figures: Metrics, clock: Clock
) -> None:
    # Given a callback saying step 0 succeeded, and a repeat of it a little later
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("c", 0))
    clock.now += 0.05
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("c", 0))
    # When step 1's create is refused once, then accepted 0.2 s after the first callback
    clock.now += 0.1
    figures.created("video-extend", CreateOutcome.REFUSED, chain_id="c", index=1)
    clock.now += 0.05
    figures.created("video-extend", CreateOutcome.ACCEPTED, chain_id="c", index=1)
    # and another step's create is accepted with no callback before it
    figures.created("video-extend", CreateOutcome.ACCEPTED, chain_id="other", index=3)
    # Then one turnaround was observed, of 0.2 s
    seen = read(figures).histograms[TURNAROUND.name]
    assert seen.count == 1
    assert seen.sum == pytest.approx(0.2)
    assert dict(seen.buckets)["0.1"] == 0
    assert dict(seen.buckets)["0.25"] == 1
    # and a create of the same step again (a resumed chain) observes nothing more
    figures.created("video-extend", CreateOutcome.ACCEPTED, chain_id="c", index=1)
    assert read(figures).histograms[TURNAROUND.name].count == 1
    assert read(figures).counters["kc_callbacks_total"] == {("accepted",): 2.0}


def test_queries_are_counted_by_outcome_and_errors_raised_on(figures: Metrics) -> None:
    assert figures.query(lambda: "task") == "task"

    def fails(exc: KlingError) -> Any:
        def ask() -> Any:
            raise exc

        return ask

    for exc in (NotFound("no"), RetryableError("busy"), RetryableError("busy"), AuthError("x")):
        with pytest.raises(type(exc)):
            figures.query(fails(exc))
    assert read(figures).counters["kc_queries_total"] == {
        ("ok",): 1.0,
        ("not_found",): 1.0,
        ("error",): 2.0,
        ("refused",): 1.0,
    }


def test_downloads_add_bytes_and_seconds(figures: Metrics) -> None:
    figures.downloaded(1000, 0.3)
    figures.downloaded(500, 12.0)
    snap = read(figures)
    assert snap.counters["kc_download_bytes_total"] == {(): 1500.0}
    seen = snap.histograms["kc_download_seconds"]
    assert seen.count == 2
    assert seen.sum == pytest.approx(12.3)


def test_two_processes_add_to_the_same_counters(client: fakeredis.FakeRedis) -> None:
    web1, web2 = Metrics(client, KEYS), Metrics(client, KEYS)
    web1.callback(CallbackOutcome.ACCEPTED)
    web2.callback(CallbackOutcome.ACCEPTED)
    web2.callback(CallbackOutcome.FORBIDDEN)
    assert read(web1).counters["kc_callbacks_total"] == {("accepted",): 2.0, ("forbidden",): 1.0}


def test_redis_down_never_fails_the_work_that_counts(caplog: pytest.LogCaptureFixture) -> None:
    gone = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    figures = Metrics(gone, KEYS)
    figures.created("video-extend", CreateOutcome.ACCEPTED, chain_id="c", index=1)
    figures.callback(CallbackOutcome.ACCEPTED, succeeded=("c", 0))
    figures.downloaded(10, 1.0)
    assert figures.query(lambda: 42) == 42
    assert "not counted" in caplog.text


# -- gauges read from the state ----------------------------------------------------------------
def pending_video(n: int, created_at: float) -> VideoRecord:
    return VideoRecord(f"v{n}", f"t{n}", "video-extend", "https://x/v.mp4", created_at, created_at)


def test_videos_at_risk_are_counted_over_all_of_them_not_the_first_thousand(
    client: fakeredis.FakeRedis, figures: Metrics
) -> None:
    videos = Videos(client, prefix=PREFIX)
    old = NOW - VIDEO_LIFETIME_SECONDS + 600  # deleted in 10 minutes
    with client.pipeline() as pipe:  # 1,500 at risk and 10 safe, written like the store does
        for n in range(1500):
            write(pipe, KEYS, None, pending_video(n, old + n * 0.001))
        for n in range(1500, 1510):
            write(pipe, KEYS, None, pending_video(n, NOW))
        pipe.execute()
    assert videos.counts()["pending"] == 1510
    snap = read(figures, warn=3600.0)
    assert snap.at_risk == 1500
    assert snap.videos == {state.value: 1510 if state == "pending" else 0 for state in VideoState}
    assert snap.oldest_pending_age == pytest.approx(VIDEO_LIFETIME_SECONDS - 600)


def test_queue_depth_adds_kombus_priority_lists(
    client: fakeredis.FakeRedis, figures: Metrics
) -> None:
    client.lpush("q", "a", "b")
    client.lpush("q\x06\x169", "c")
    client.lpush("q.archive\x06\x163", "d")
    snap = read(figures, queues=("q", "q.archive", "q.notify"))
    assert snap.queues == {"q": 3, "q.archive": 1, "q.notify": 0}


def test_slots_in_use_are_the_holders(client: fakeredis.FakeRedis, figures: Metrics) -> None:
    client.hset(KEYS.slot_holders, mapping={"c:0": "1", "d:2": "1"})
    assert read(figures).slots_in_use == 2


# -- chains per status and task seconds, kept by the transitions ---------------------------------
def store(client: fakeredis.FakeRedis, clock: Clock) -> Store:
    return Store(client, prefix=PREFIX, timing=Timing(poll_after=60, submit_lease=60), clock=clock)


def test_chains_are_counted_per_status_as_they_move(
    client: fakeredis.FakeRedis, clock: Clock, figures: Metrics
) -> None:
    chains = store(client, clock)
    for n in range(3):
        chains.create(new_chain(f"c{n}", Spec(video_id="v", steps=1), NOW))
    chains.transition("c0", Cancel())
    chains.transition("c0", Cancel())  # again: changes nothing
    assert read(figures).chains == {"queued": 2, "cancelled": 1}


def test_chains_stored_before_the_counts_were_kept_are_counted_once(
    client: fakeredis.FakeRedis, clock: Clock, figures: Metrics
) -> None:
    chains = store(client, clock)
    for n in range(4):
        chains.create(new_chain(f"c{n}", Spec(video_id="v", steps=1), NOW))
    chains.transition("c1", Cancel())
    client.delete(KEYS.chain_counts, KEYS.chain_counts_ready)  # as an older version left it
    client.hset(KEYS.chain_counts, "queued", 1)  # a transition since the upgrade, say
    assert figures.chain_counts() == {"queued": 3, "cancelled": 1}
    chains.transition("c2", Cancel())
    assert figures.chain_counts() == {"queued": 2, "cancelled": 2}


def test_a_tasks_provider_time_is_observed_once_however_often_it_is_reported(
    client: fakeredis.FakeRedis, clock: Clock, figures: Metrics
) -> None:
    chains = store(client, clock)
    chains.create(new_chain("c", Spec(video_id="v", source_duration=5.0, steps=1), NOW))
    chains.transition("c", Claim(0, "w", 60))
    chains.transition("c", Submitted(0, Task("t0", TaskStatus.SUBMITTED, created_at_ms=1_000)))
    running = Task("t0", TaskStatus.PROCESSING, created_at_ms=1_000, updated_at_ms=30_000)
    chains.transition("c", TaskUpdate(0, running))
    done = Task(
        "t0",
        TaskStatus.SUCCEED,
        created_at_ms=1_000,
        updated_at_ms=241_000,
        videos=(Video("v1", "https://x/v1.mp4", 9.8),),
    )
    chains.transition("c", TaskUpdate(0, done))
    chains.transition("c", TaskUpdate(0, done))  # the callback's repeat, queried again
    seen = read(figures).histograms[TASK_SECONDS.name]
    assert (seen.count, seen.sum) == (1, 240.0)
    assert dict(seen.buckets)["240.0"] == 1
    assert dict(seen.buckets)["180.0"] == 0


# -- what the collector renders -----------------------------------------------------------------
NAMES = {
    "kc_creates": "counter",
    "kc_callbacks": "counter",
    "kc_queries": "counter",
    "kc_download_bytes": "counter",
    "kc_step_turnaround_seconds": "histogram",
    "kc_task_seconds": "histogram",
    "kc_download_seconds": "histogram",
    "kc_chains": "gauge",
    "kc_videos": "gauge",
    "kc_videos_at_risk": "gauge",
    "kc_units_spent": "counter",
    "kc_units_spent_today": "gauge",
    "kc_provider_slots_in_use": "gauge",
    "kc_queue_depth": "gauge",
    "kc_oldest_unarchived_video_age_seconds": "gauge",
}


def test_every_family_is_rendered_with_its_name_and_type(
    client: fakeredis.FakeRedis, clock: Clock, figures: Metrics
) -> None:
    store(client, clock).create(new_chain("c", Spec(video_id="v", steps=1), NOW))
    figures.created("video-extend", CreateOutcome.ACCEPTED, chain_id="c", index=0)
    figures.callback(CallbackOutcome.TOO_LARGE)
    figures.downloaded(2048, 0.7)
    client.lpush("q", "m")
    found = scrape(read(figures), total="12.5", today="2")
    assert {name: f.type for name, f in found.items()} == NAMES
    assert (
        sample(found["kc_creates"], "kc_creates_total", kind="video-extend", outcome="accepted")
        == 1
    )
    assert sample(found["kc_callbacks"], "kc_callbacks_total", outcome="too_large") == 1
    assert sample(found["kc_download_bytes"], "kc_download_bytes_total") == 2048
    assert sample(found["kc_download_seconds"], "kc_download_seconds_bucket", le="0.5") == 0
    assert sample(found["kc_download_seconds"], "kc_download_seconds_bucket", le="1.0") == 1
    assert sample(found["kc_download_seconds"], "kc_download_seconds_bucket", le="+Inf") == 1
    assert sample(found["kc_download_seconds"], "kc_download_seconds_count") == 1
    assert sample(found["kc_chains"], "kc_chains", status="queued") == 1
    assert sample(found["kc_units_spent"], "kc_units_spent_total") == 12.5
    assert sample(found["kc_units_spent_today"], "kc_units_spent_today") == 2
    assert sample(found["kc_queue_depth"], "kc_queue_depth", queue="q") == 1
    assert sample(found["kc_videos"], "kc_videos", state="pending") == 0
    assert sample(found["kc_task_seconds"], "kc_task_seconds_count") == 0


def test_units_that_are_not_a_number_render_as_nan_not_an_error(figures: Metrics) -> None:
    found = scrape(read(figures), total="garbled")
    assert math.isnan(sample(found["kc_units_spent"], "kc_units_spent_total"))
