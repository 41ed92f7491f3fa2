"""The fake gateway's pure core: task life cycle, rules, knobs, counters and file content."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest

from kling.fake.content import (
    BLOCK_SIZE,
    DEFAULT_BYTES_PER_SECOND,
    ByteRange,
    RangeNotSatisfiable,
    parse_range,
    video_bytes,
    video_sha256,
    video_size,
)
from kling.fake.engine import Engine, EngineSettings
from kling.fake.errors import KlingError
from kling.fake.faults import Faults
from kling.fake.tasks import extension_seconds

DELAY = 10.0
START = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def sequential_ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}_{next(counter)}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> Engine:
    return Engine(EngineSettings(delay=DELAY), clock=clock, new_id=sequential_ids())


def make_engine(clock: FakeClock, **faults: object) -> Engine:
    return Engine(
        EngineSettings(delay=DELAY),
        clock=clock,
        new_id=sequential_ids(),
        faults=Faults().merged(faults),
    )


def refused(action: Callable[[], object]) -> KlingError:
    with pytest.raises(KlingError) as caught:
        action()
    return caught.value


# -- life cycle -----------------------------------------------------------------------------


def test_extension_goes_submitted_processing_succeed_on_the_clock(
    engine: Engine, clock: FakeClock
) -> None:
    parent = engine.seed_video(5.0)
    task = engine.create("video-extend", {"video_id": parent.video_id}, origin="http://gw")
    assert task.status == "submitted"
    assert engine.next_due(task.task_id) == START + 0.3 * DELAY

    clock.now = START + 0.3 * DELAY - 0.01
    assert engine.tick() == []
    clock.now = START + 0.3 * DELAY
    [change] = engine.tick()
    assert (change.task_id, change.status) == (task.task_id, "processing")
    assert change.body["task_status"] == "processing"
    assert engine.next_due(task.task_id) == START + DELAY

    clock.now = START + DELAY - 0.01
    assert engine.tick() == []
    clock.now = START + DELAY + 5
    [change] = engine.tick()
    assert change.status == "succeed"
    assert engine.next_due(task.task_id) is None
    assert engine.tick() == []

    data = engine.render(engine.find_task("video-extend", task.task_id), "http://gw")
    expected = round(5.0 + extension_seconds(task.task_id), 1)
    [video] = data["task_result"]["videos"]
    assert video["duration"] == f"{expected:.1f}"
    assert video["url"] == f"http://gw/files/{video['id']}.mp4"
    assert data["task_info"]["parent_video"] == {
        "id": parent.video_id,
        "url": f"http://gw/files/{parent.video_id}.mp4",
        "duration": "5.0",
    }
    assert data["created_at"] == round(START * 1000)
    assert data["updated_at"] == round((START + DELAY) * 1000)
    assert change.body == data


def test_zero_delay_goes_straight_through_processing_to_the_end(clock: FakeClock) -> None:
    engine = Engine(EngineSettings(delay=0.0), clock=clock)
    task = engine.create("text2video", {"prompt": "a cat", "callback_url": "http://cb/x"})
    changes = engine.tick()
    assert [(c.status, c.callback_url) for c in changes] == [
        ("processing", "http://cb/x"),
        ("succeed", "http://cb/x"),
    ]
    assert task.video is not None
    assert task.video.duration == 5.0


def test_fail_next_tasks_fails_that_many_tasks_with_the_message(clock: FakeClock) -> None:
    engine = make_engine(clock, fail_next_tasks={"count": 2, "message": "content safety"})
    tasks = [engine.create("text2video", {"prompt": f"p{i}"}) for i in range(3)]
    clock.now += DELAY
    changes = engine.tick()
    assert [c.status for c in changes] == ["processing", "failed"] * 2 + ["processing", "succeed"]
    assert [t.status for t in tasks] == ["failed", "failed", "succeed"]
    assert tasks[0].status_msg == "content safety"
    assert engine.render(tasks[0], "http://gw")["task_result"]["videos"] == []
    assert engine.faults.fail_next_tasks.count == 0
    assert engine.stats_view()["tasks"] == {
        "submitted": 0,
        "processing": 0,
        "succeed": 1,
        "failed": 2,
    }


@pytest.mark.parametrize(
    ("kind", "body", "duration"),
    [
        ("text2video", {"prompt": "x"}, 5.0),
        ("text2video", {"prompt": "x", "duration": "10"}, 10.0),
        ("image2video", {"image": "https://img/a.png", "duration": 10}, 10.0),
    ],
)
def test_generation_tasks_make_videos_of_the_requested_duration(
    engine: Engine, clock: FakeClock, kind: str, body: dict[str, object], duration: float
) -> None:
    task = engine.create(kind, body)
    clock.now += DELAY
    engine.tick()
    assert task.video is not None
    assert task.video.duration == duration


# -- durations and the 3-minute cap ---------------------------------------------------------


@pytest.mark.parametrize(
    ("knob", "extension_shows", "text_shows"),
    [
        ("whole", "whole", "5.0"),
        ("segment", "added", "5.0"),  # a text2video video has no parent: all of it is "added"
        ("missing", None, None),
    ],
)
def test_result_durations_knob_changes_only_what_results_report(
    clock: FakeClock, knob: str, extension_shows: str | None, text_shows: str | None
) -> None:
    # Given a gateway whose results report durations the `knob` way, and two finished tasks
    engine = make_engine(clock, result_durations=knob)
    parent = engine.seed_video(10.0)
    extension = engine.create("video-extend", {"video_id": parent.video_id}, origin="http://gw")
    text = engine.create("text2video", {"prompt": "x"})
    clock.now += DELAY
    changes = engine.tick()
    assert extension.video is not None
    added = extension_seconds(extension.task_id)
    wanted = {"whole": f"{10.0 + added:.1f}", "added": f"{added:.1f}"}
    # When they are queried (or called back: the body is the same object)
    data = engine.render(extension, "http://gw")
    [shown] = data["task_result"]["videos"]
    [text_shown] = engine.render(text, "http://gw")["task_result"]["videos"]
    # Then only the result videos' durations change ...
    assert shown.get("duration") == (wanted[extension_shows] if extension_shows else None)
    assert text_shown.get("duration") == text_shows
    assert data["task_info"]["parent_video"]["duration"] == "10.0"
    assert [c.body for c in changes if c.task_id == extension.task_id][-1] == data
    # ... while the video itself (its file, what it can be extended to) stays whole
    assert extension.video.duration == round(10.0 + added, 1)
    _, size = engine.video_for_download(extension.video.video_id)
    assert size == video_size(extension.video.duration, DEFAULT_BYTES_PER_SECOND)


@pytest.mark.parametrize("task_id", ["a", "task_1", "Zk3-_x", "x" * 100])
def test_extension_seconds_are_fixed_per_task_between_4_and_5(task_id: str) -> None:
    seconds = extension_seconds(task_id)
    assert seconds == extension_seconds(task_id)
    assert 4.0 <= seconds <= 5.0
    assert seconds == round(seconds, 1)


def test_extension_seconds_vary_between_tasks() -> None:
    assert len({extension_seconds(f"task_{i}") for i in range(200)}) == 11


def test_a_chain_adds_the_extensions_until_the_3_minute_cap(
    engine: Engine, clock: FakeClock
) -> None:
    video = engine.seed_video(5.0)
    expected = 5.0
    steps = 0
    error: KlingError | None = None
    while error is None:
        try:
            task = engine.create("video-extend", {"video_id": video.video_id})
        except KlingError as exc:
            error = exc
            continue
        expected = round(expected + extension_seconds(task.task_id), 1)
        clock.now += DELAY
        engine.tick()
        assert task.video is not None
        video = task.video
        assert video.duration == expected
        steps += 1
    assert (error.http_status, error.code) == (400, 1201)
    assert "3 minutes" in error.message
    assert expected <= 180.0
    assert 34 <= steps <= 44
    assert engine.stats.creates_total == steps
    assert engine.stats.rejected_creates == 1


@pytest.mark.parametrize(
    ("parent_seconds", "accepted"),
    [(175.0, True), (175.5, True), (175.6, False), (179.0, False), (180.0, False), (200.0, False)],
)
def test_the_3_minute_cap(engine: Engine, parent_seconds: float, accepted: bool) -> None:
    # Given a parent seeded with explicit ids, the extension is "task_1", which adds 4.5 s.
    assert extension_seconds("task_1") == 4.5
    engine.seed_video(parent_seconds, video_id="V", task_id="T")
    if accepted:
        task = engine.create("video-extend", {"video_id": "V"})
        assert task.task_id == "task_1"
        assert task.output_duration == round(parent_seconds + 4.5, 1) <= 180.0
        return
    error = refused(lambda: engine.create("video-extend", {"video_id": "V"}))
    assert (error.http_status, error.code) == (400, 1201)
    assert "3 minutes" in error.message
    assert engine.stats.creates_total == 0


# -- refusals -------------------------------------------------------------------------------


def test_unknown_video_is_404_1203(engine: Engine) -> None:
    error = refused(lambda: engine.create("video-extend", {"video_id": "nope"}))
    assert (error.http_status, error.code) == (404, 1203)
    assert engine.stats.rejected_creates == 1


def test_expired_video_is_refused_and_no_longer_served(engine: Engine, clock: FakeClock) -> None:
    video = engine.seed_video(5.0)
    clock.now += engine.settings.expire_after - 1
    engine.video_for_download(video.video_id)
    engine.create("video-extend", {"video_id": video.video_id})

    engine.advance_clock(1)
    error = refused(lambda: engine.create("video-extend", {"video_id": video.video_id}))
    assert (error.http_status, error.code) == (400, 1201)
    assert "expired" in error.message
    error = refused(lambda: engine.video_for_download(video.video_id))
    assert (error.http_status, error.code) == (404, 1203)


@pytest.mark.parametrize(
    ("body", "http_status", "code"),
    [
        ([1, 2], 400, 1200),
        (None, 400, 1200),
        ({}, 400, 1201),
        ({"video_id": ""}, 400, 1201),
        ({"video_id": 12}, 400, 1201),
        ({"video_id": "V", "prompt": "x" * 2501}, 400, 1201),
        ({"video_id": "V", "negative_prompt": "x" * 2501}, 400, 1201),
        ({"video_id": "V", "cfg_scale": 1.5}, 400, 1201),
        ({"video_id": "V", "cfg_scale": -0.1}, 400, 1201),
        ({"video_id": "V", "cfg_scale": "0.5"}, 400, 1201),
        ({"video_id": "V", "callback_url": "ftp://x"}, 400, 1201),
    ],
)
def test_bad_extend_parameters(engine: Engine, body: object, http_status: int, code: int) -> None:
    engine.seed_video(5.0, video_id="V")
    error = refused(lambda: engine.create("video-extend", body))
    assert (error.http_status, error.code) == (http_status, code)
    assert engine.stats.creates_total == 0
    assert engine.stats.rejected_creates == 1


def test_good_extend_parameters_at_the_limits(engine: Engine) -> None:
    engine.seed_video(5.0, video_id="V")
    body = {"video_id": "V", "prompt": "x" * 2500, "negative_prompt": "y" * 2500}
    engine.create("video-extend", {**body, "cfg_scale": 0})
    engine.create("video-extend", {**body, "cfg_scale": 1})
    assert engine.stats.creates_total == 2


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("text2video", {}),
        ("text2video", {"prompt": "   "}),
        ("text2video", {"prompt": "x" * 2501}),
        ("text2video", {"prompt": "x", "duration": "7"}),
        ("text2video", {"prompt": "x", "aspect_ratio": "4:3"}),
        ("text2video", {"prompt": "x", "mode": "ultra"}),
        ("image2video", {"prompt": "x"}),
        ("image2video", {"image": "i", "duration": True}),
    ],
)
def test_bad_generation_parameters(engine: Engine, kind: str, body: object) -> None:
    error = refused(lambda: engine.create(kind, body))
    assert (error.http_status, error.code) == (400, 1201)


def test_require_parent_task_id(clock: FakeClock) -> None:
    engine = make_engine(clock, require_parent_task_id=True)
    video = engine.seed_video(5.0, video_id="V", task_id="T")
    engine.seed_video(5.0, video_id="W", task_id="U")

    error = refused(lambda: engine.create("video-extend", {"video_id": "V"}))
    assert (error.http_status, error.code) == (400, 1201)
    assert "task_id" in error.message
    error = refused(lambda: engine.create("video-extend", {"video_id": "V", "task_id": "U"}))
    assert (error.http_status, error.code) == (400, 1201)

    task = engine.create("video-extend", {"video_id": "V", "task_id": "T"})
    assert task.parent is video
    engine.set_faults({"require_parent_task_id": False})
    engine.create("video-extend", {"video_id": "V"})
    assert engine.stats.creates_total == 2
    assert engine.stats.rejected_creates == 2


def test_external_task_id_is_unique_and_finds_the_task(engine: Engine) -> None:
    engine.seed_video(5.0, video_id="V")
    task = engine.create("video-extend", {"video_id": "V", "external_task_id": "chain-1-step-1"})
    assert engine.find_task("video-extend", "chain-1-step-1") is task
    assert engine.render(task, "http://gw")["task_info"]["external_task_id"] == "chain-1-step-1"

    body = {"video_id": "V", "external_task_id": "chain-1-step-1"}
    error = refused(lambda: engine.create("video-extend", body))
    assert (error.http_status, error.code) == (400, 1201)
    assert "external_task_id already exists" in error.message
    assert engine.stats.creates_total == 1
    assert engine.stats.rejected_creates == 1
    assert engine.stats.creates_by_parent == {"V": 1}


def test_external_task_id_ignored_when_not_supported(clock: FakeClock) -> None:
    engine = make_engine(clock, support_external_task_id=False)
    engine.seed_video(5.0, video_id="V")
    body = {"video_id": "V", "external_task_id": "e1"}
    first = engine.create("video-extend", body)
    engine.create("video-extend", body)
    assert "external_task_id" not in engine.render(first, "http://gw")["task_info"]
    error = refused(lambda: engine.find_task("video-extend", "e1"))
    assert (error.http_status, error.code) == (404, 1203)
    assert engine.stats.creates_total == 2


def test_fail_next_creates_refuses_with_the_configured_reply(clock: FakeClock) -> None:
    engine = make_engine(clock, fail_next_creates={"count": 2, "http_status": 429, "code": 1303})
    for _ in range(2):
        error = refused(lambda: engine.create("text2video", {"prompt": "x"}))
        assert (error.http_status, error.code) == (429, 1303)
    engine.create("text2video", {"prompt": "x"})
    assert engine.stats.creates_total == 1
    assert engine.stats.rejected_creates == 2
    assert engine.stats_view()["tasks"]["submitted"] == 1


# -- queries, counters, admin -----------------------------------------------------------------


def test_queries_lists_and_counters(engine: Engine) -> None:
    engine.seed_video(5.0, video_id="V")
    engine.seed_video(7.0, video_id="W")
    ids = [engine.create("video-extend", {"video_id": v}).task_id for v in ("V", "V", "W")]
    engine.create("text2video", {"prompt": "x"})

    page = engine.list_tasks("video-extend", 1, 2)
    assert [t.task_id for t in page] == [ids[2], ids[1]]
    assert [t.task_id for t in engine.list_tasks("video-extend", 2, 2)] == [ids[0]]
    error = refused(lambda: engine.find_task("text2video", ids[0]))
    assert error.http_status == 404
    error = refused(lambda: engine.list_tasks("video-extend", 0, 2))
    assert (error.http_status, error.code) == (400, 1201)

    stats = engine.stats_view()
    assert stats["creates_total"] == 4
    assert stats["creates_by_parent"] == {"V": 2, "W": 1}
    assert stats["creates_by_kind"] == {"video-extend": 3, "text2video": 1}
    assert stats["queries"] == 4
    assert stats["tasks"]["submitted"] == 4
    assert stats["tasks"]["succeed"] == 2  # the seeded tasks

    engine.reset()
    assert engine.stats_view()["creates_total"] == 0
    assert refused(lambda: engine.find_task("video-extend", ids[0])).http_status == 404


def test_seeding_refuses_taken_or_malformed_ids(engine: Engine) -> None:
    engine.seed_video(5.0, video_id="V", task_id="T")
    assert refused(lambda: engine.seed_video(5.0, video_id="V")).http_status == 409
    assert refused(lambda: engine.seed_video(5.0, task_id="T")).http_status == 409
    assert refused(lambda: engine.seed_video(5.0, video_id="a b")).http_status == 400
    assert refused(lambda: engine.seed_video(0.0)).http_status == 400


def test_ids_are_opaque_url_safe_and_unique(clock: FakeClock) -> None:
    engine = Engine(clock=clock)
    ids = {engine.create("text2video", {"prompt": "x"}).task_id for _ in range(200)}
    assert len(ids) == 200
    assert all(
        set(i) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
        for i in ids
    )


# -- file content ---------------------------------------------------------------------------


def whole(video_id: str, size: int) -> bytes:
    return b"".join(video_bytes(video_id, 0, size))


SIZE = 3 * BLOCK_SIZE + 1234


def test_video_bytes_are_deterministic_and_per_video() -> None:
    first = whole("vid_a", SIZE)
    assert len(first) == SIZE
    assert first == whole("vid_a", SIZE)
    assert first != whole("vid_b", SIZE)
    assert first[:BLOCK_SIZE] != first[BLOCK_SIZE : 2 * BLOCK_SIZE]
    assert video_sha256("vid_a", SIZE) == hashlib.sha256(first).hexdigest()


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1),
        (0, BLOCK_SIZE),
        (10, 20),
        (BLOCK_SIZE - 5, BLOCK_SIZE + 5),
        (BLOCK_SIZE, 2 * BLOCK_SIZE),
        (31, 33),
        (1000, 3 * BLOCK_SIZE + 7),
        (SIZE - 1, SIZE),
        (SIZE, SIZE),
    ],
)
def test_video_bytes_ranges_are_slices_of_the_whole(start: int, end: int) -> None:
    chunks = list(video_bytes("vid_a", start, end))
    assert all(len(chunk) <= BLOCK_SIZE for chunk in chunks)
    assert b"".join(chunks) == whole("vid_a", SIZE)[start:end]


def test_video_size_follows_the_duration() -> None:
    assert video_size(5.0) == 1_000_000
    assert video_size(9.3, 200_000) == 1_860_000
    assert video_size(0.5, 3) == 2


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-9", ByteRange(0, 10)),
        ("bytes=5-", ByteRange(5, 100)),
        ("bytes=-10", ByteRange(90, 100)),
        ("bytes=-1000", ByteRange(0, 100)),
        ("bytes=90-500", ByteRange(90, 100)),
        ("bytes=99-99", ByteRange(99, 100)),
        ("bytes=9-3", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=x-1", None),
        ("bytes=100-", RangeNotSatisfiable),
        ("bytes=150-200", RangeNotSatisfiable),
        ("bytes=-0", RangeNotSatisfiable),
    ],
)
def test_parse_range(header: str | None, expected: object) -> None:
    if expected is RangeNotSatisfiable:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 100)
    else:
        assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    ("knobs", "succeeded", "failed"),
    [
        ({}, "1", "0"),
        ({"unit_cost": "2.5", "failed_unit_cost": "1"}, "2.5", "1"),
        ({"unit_cost": None, "failed_unit_cost": None}, None, None),
    ],
)
def test_finished_tasks_report_the_cost_fixed_when_they_were_created(
    clock: FakeClock, knobs: dict[str, object], succeeded: str | None, failed: str | None
) -> None:
    # Given one task bound to succeed and one bound to fail, made under the cost knobs
    engine = make_engine(clock, fail_next_tasks={"count": 1}, **knobs)
    parent = engine.seed_video(10.0)
    doomed = engine.create("video-extend", {"video_id": parent.video_id}, origin="http://gw")
    good = engine.create("video-extend", {"video_id": parent.video_id}, origin="http://gw")
    running = engine.render(good, "http://gw")
    # When the knobs change before they finish
    engine.set_faults({"unit_cost": "9", "failed_unit_cost": "9"})
    clock.now += DELAY
    engine.tick()
    # Then each reports its own cost (or none), and nothing while it ran
    assert "final_unit_deduction" not in running
    assert engine.render(good, "http://gw").get("final_unit_deduction") == succeeded
    assert engine.render(doomed, "http://gw").get("final_unit_deduction") == failed


def test_a_seeded_video_was_not_billed_and_reports_no_cost(clock: FakeClock) -> None:
    engine = make_engine(clock)
    seeded = engine.seed_video(10.0)
    body = engine.render(engine.find_task("text2video", seeded.task_id), "http://gw")
    assert "final_unit_deduction" not in body


# -- account concurrency ----------------------------------------------------------------------


def test_account_concurrency_refuses_creates_past_the_limit_with_1303(clock: FakeClock) -> None:
    engine = make_engine(clock, account_concurrency=2)
    engine.seed_video(5.0, video_id="V", task_id="T")
    for _ in range(2):
        engine.create("video-extend", {"video_id": "V"})
    assert engine.in_flight() == 2
    error = refused(lambda: engine.create("video-extend", {"video_id": "V"}))
    assert (error.http_status, error.code) == (429, 1303)
    assert error.message == "parallel task over resource pack limit"
    assert engine.stats.rejected_creates == engine.stats.concurrency_refusals == 1
    assert engine.stats.creates_total == engine.stats.peak_in_flight == 2
    assert engine.stats_view()["in_flight"] == 2
    # A task holds its slot until it ends (failure included), whether or not ticked yet.
    clock.now += DELAY
    assert engine.in_flight() == 0
    engine.create("video-extend", {"video_id": "V"})
    assert engine.stats.creates_total == 3


def test_account_concurrency_knob_is_checked() -> None:
    assert Faults().account_concurrency is None
    assert Faults().merged({"account_concurrency": 3}).account_concurrency == 3
    assert Faults().merged({"account_concurrency": 3}).merged({"account_concurrency": None}) == (
        Faults()
    )
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(ValueError, match="account_concurrency"):
            Faults().merged({"account_concurrency": bad})
