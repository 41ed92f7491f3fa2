"""The fake gateway's ``task_seconds`` knob: a spread of task durations."""

from __future__ import annotations

import random

import pytest

from kling.fake.app import Gateway
from kling.fake.engine import Engine, EngineSettings
from kling.fake.faults import Faults
from kling.fake.server import build_parser, config_from_args


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def engine(clock: Clock, **faults: object) -> Engine:
    return Engine(
        EngineSettings(delay=3.0), clock=clock, faults=Faults().merged(faults), rng=random.Random(7)
    )


def test_without_the_knob_every_task_takes_the_delay() -> None:
    clock = Clock()
    fake = engine(clock)
    fake.seed_video(5.0, video_id="V", task_id="T")
    tasks = [fake.create("video-extend", {"video_id": "V"}) for _ in range(5)]
    assert {t.finished_at - t.created_at for t in tasks} == {3.0}


def test_task_seconds_draws_each_duration_from_the_spread() -> None:
    clock = Clock()
    fake = engine(clock, task_seconds=[4, 6])
    fake.seed_video(5.0, video_id="V", task_id="T")
    took = [
        t.finished_at - t.created_at
        for t in (fake.create("video-extend", {"video_id": "V"}) for _ in range(200))
    ]
    assert all(4.0 <= s <= 6.0 for s in took)
    assert min(took) < 4.2  # spread over the range, not one value
    assert max(took) > 5.8
    assert len(set(took)) > 150


def test_a_task_ends_when_its_own_duration_is_over() -> None:
    clock = Clock()
    fake = engine(clock, task_seconds=[4, 6])
    fake.seed_video(5.0, video_id="V", task_id="T")
    task = fake.create("video-extend", {"video_id": "V"})
    took = task.finished_at - task.created_at
    clock.now += took - 0.01
    fake.tick()
    assert task.status != "succeed"
    clock.now += 0.02
    fake.tick()
    assert task.status == "succeed"
    assert task.updated_at == task.finished_at


def test_the_knob_changes_only_tasks_created_after_it() -> None:
    clock = Clock()
    fake = engine(clock)
    fake.seed_video(5.0, video_id="V", task_id="T")
    before = fake.create("video-extend", {"video_id": "V"})
    fake.set_faults({"task_seconds": [10, 10]})
    after = fake.create("video-extend", {"video_id": "V"})
    assert before.finished_at - before.created_at == 3.0
    assert after.finished_at - after.created_at == 10.0
    fake.set_faults({"task_seconds": None})
    assert fake.faults.task_seconds is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([6, 4], "low"),
        ([4], r"\[low, high\]"),
        ("4-6", r"\[low, high\]"),
        ([-1, 2], ">= 0"),
        ([1, "2"], "number"),
        ([1, True], "number"),
    ],
)
def test_a_bad_spread_is_refused_and_changes_nothing(value: object, message: str) -> None:
    faults = Faults()
    with pytest.raises(ValueError, match=message):
        faults.merged({"task_seconds": value})
    assert faults.task_seconds is None


def gateway(seed: int | None) -> Gateway:
    """A gateway started with ``--random-seed seed`` and tasks of 4-6 s."""
    config = config_from_args(
        build_parser().parse_args(
            ["--faults", '{"task_seconds": [4, 6]}', "--video-format", "random"]
            + ([] if seed is None else ["--random-seed", str(seed)])
        ),
        {},
    )
    return Gateway(config)


def durations(seed: int | None, count: int = 20, made: Gateway | None = None) -> list[float]:
    """The task durations a gateway started with ``--random-seed seed`` draws, in order."""
    fake = (made or gateway(seed)).engine
    fake.seed_video(5.0, video_id="V", task_id="T")
    tasks = [fake.create("video-extend", {"video_id": "V"}) for _ in range(count)]
    return [t.finished_at - t.created_at for t in tasks]


def test_gateways_started_with_one_random_seed_draw_the_same_durations() -> None:
    # What lets a benchmark give its two arms one workload (bench/polling.py)
    assert durations(1) == durations(1)
    assert durations(1) != durations(2)
    assert durations(None) != durations(None)  # unseeded: fresh draws each time
    assert all(4.0 <= s <= 6.0 for s in durations(1))


def test_a_reset_starts_a_seeded_gateways_draws_again() -> None:
    made = gateway(1)
    first = durations(1, made=made)
    made.reset()
    assert durations(1, made=made) == first
