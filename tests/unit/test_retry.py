"""The one retry policy (worker.core.retry): its table, the jitter, Retry-After, the limits."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from worker.core.retry import POLICIES, Kind, Policy, after, ceiling, delay, exhausted

# -- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "base", "cap", "max_attempts"),
    [
        (Kind.CREATE, 1.0, 60.0, None),
        (Kind.QUERY, 1.0, 60.0, 6),
        (Kind.CANDIDATE, 1.0, 60.0, 4),
        (Kind.LOOKUP, 2.0, 120.0, None),
        (Kind.DOWNLOAD, 1.0, 60.0, None),
        (Kind.ARCHIVE, 2.0, 600.0, None),
        (Kind.TASK_QUERY, 1.0, 600.0, 60),
        (Kind.NOTIFY, 5.0, 3000.0, 12),
        (Kind.REDIS, 1.0, 30.0, None),
    ],
)
def test_each_kind_has_its_row(
    kind: Kind, base: float, cap: float, max_attempts: int | None
) -> None:
    assert POLICIES[kind] == Policy(base, cap, max_attempts)


def test_every_kind_is_in_the_table() -> None:
    assert set(POLICIES) == set(Kind)


@pytest.mark.parametrize(
    ("kind", "attempt", "top"),
    [
        (Kind.DOWNLOAD, 1, 1.0),
        (Kind.DOWNLOAD, 2, 2.0),
        (Kind.DOWNLOAD, 3, 4.0),
        (Kind.DOWNLOAD, 6, 32.0),
        (Kind.DOWNLOAD, 7, 60.0),
        (Kind.DOWNLOAD, 50, 60.0),
        (Kind.DOWNLOAD, 10_000, 60.0),
        (Kind.CREATE, 1, 1.0),
        (Kind.CREATE, 7, 60.0),
        (Kind.QUERY, 5, 16.0),
        (Kind.CANDIDATE, 3, 4.0),
        (Kind.LOOKUP, 1, 2.0),
        (Kind.LOOKUP, 6, 64.0),
        (Kind.LOOKUP, 7, 120.0),
        (Kind.ARCHIVE, 1, 2.0),
        (Kind.ARCHIVE, 9, 512.0),
        (Kind.ARCHIVE, 10, 600.0),
        (Kind.TASK_QUERY, 1, 1.0),
        (Kind.TASK_QUERY, 10, 512.0),
        (Kind.TASK_QUERY, 11, 600.0),
        (Kind.NOTIFY, 1, 5.0),
        (Kind.NOTIFY, 2, 10.0),
        (Kind.NOTIFY, 3, 20.0),
        (Kind.NOTIFY, 6, 160.0),
        (Kind.NOTIFY, 10, 2560.0),
        (Kind.NOTIFY, 11, 3000.0),
        (Kind.NOTIFY, 10_000, 3000.0),
        (Kind.REDIS, 1, 1.0),
        (Kind.REDIS, 5, 16.0),
        (Kind.REDIS, 6, 30.0),
    ],
)
def test_the_ceiling_doubles_from_base_up_to_the_cap(kind: Kind, attempt: int, top: float) -> None:
    assert ceiling(kind, attempt) == top


# -- the jitter --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 13, 100, 10_000])
def test_delays_spread_over_zero_to_the_ceiling(kind: Kind, attempt: int) -> None:
    rng = random.Random(attempt)
    delays = [delay(kind, attempt, rng=rng) for _ in range(200)]
    top = ceiling(kind, attempt)

    assert all(0.0 <= d <= top <= POLICIES[kind].cap for d in delays)
    # Full jitter: the delays use the whole interval.
    assert min(delays) < 0.25 * top
    assert max(delays) > 0.75 * top


class _Highest(random.Random):
    """A Random that always draws the top of the interval."""

    def random(self) -> float:
        return 1.0


@pytest.mark.parametrize("kind", list(Kind))
def test_delays_grow_with_the_attempt_until_the_cap(kind: Kind) -> None:
    rng = _Highest()
    waits = [delay(kind, n, rng=rng) for n in range(1, 30)]

    assert waits == sorted(waits)
    assert waits[0] == POLICIES[kind].base
    assert waits[-1] == POLICIES[kind].cap


@pytest.mark.parametrize("seed", [0, 7, 2024])
def test_a_seed_gives_the_same_delay(seed: int) -> None:
    assert delay(Kind.NOTIFY, 4, rng=random.Random(seed)) == delay(
        Kind.NOTIFY, 4, rng=random.Random(seed)
    )


@pytest.mark.parametrize("attempt", [0, -1])
@pytest.mark.parametrize("ask", [ceiling, delay, after])
def test_attempts_count_from_one(ask: Callable[[Kind, int], object], attempt: int) -> None:
    with pytest.raises(ValueError, match="from 1"):
        ask(Kind.NOTIFY, attempt)


@pytest.mark.parametrize(
    ("base", "cap", "max_attempts", "problem"),
    [
        (0.0, 1.0, None, "0 < base <= cap"),
        (2.0, 1.0, None, "0 < base <= cap"),
        (1.0, 2.0, 0, "max_attempts must be at least 1"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(
    base: float, cap: float, max_attempts: int | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Policy(base, cap, max_attempts)


# -- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "attempt", "retry_after", "low", "high"),
    [
        (Kind.NOTIFY, 1, None, 0.0, 5.0),
        (Kind.NOTIFY, 1, 0.0, 0.0, 5.0),  # asks for nothing: the jitter decides
        (Kind.NOTIFY, 1, 30.0, 30.0, 30.0),  # no sooner than asked
        (Kind.NOTIFY, 1, 2999.5, 2999.5, 2999.5),
        (Kind.NOTIFY, 1, 86400.0, 3000.0, 3000.0),  # but never past the cap
        (Kind.NOTIFY, 12, 86400.0, 3000.0, 3000.0),
        (Kind.ARCHIVE, 1, 1000.0, 600.0, 600.0),
    ],
)
def test_retry_after_is_a_floor_below_the_cap(
    kind: Kind, attempt: int, retry_after: float | None, low: float, high: float
) -> None:
    rng = random.Random(3)
    waits = [delay(kind, attempt, rng=rng, retry_after=retry_after) for _ in range(50)]

    assert all(low <= w <= high for w in waits)


# -- when to stop ------------------------------------------------------------------------------

# For each kind, the rule its caller applied to Celery's request.retries (0 on the first run)
# before the table existed: True while another attempt may follow.
RULES: dict[Kind, Callable[[int], bool]] = {
    Kind.CREATE: lambda retries: True,  # until the runner's retry deadline
    Kind.QUERY: lambda retries: retries < 5,  # then the sweep polls again
    Kind.CANDIDATE: lambda retries: retries < 3,
    Kind.LOOKUP: lambda retries: True,  # until the runner's retry deadline
    Kind.DOWNLOAD: lambda retries: True,  # until the download's deadline or max_attempts
    Kind.ARCHIVE: lambda retries: True,  # until the video's deadline
    Kind.TASK_QUERY: lambda retries: retries + 1 < 60,  # MAX_TASK_QUERIES
    Kind.NOTIFY: lambda retries: retries + 1 < 12,  # MAX_ATTEMPTS
    Kind.REDIS: lambda retries: True,
}


@pytest.mark.parametrize("kind", list(Kind))
def test_the_attempt_limits_are_the_ones_of_before(kind: Kind) -> None:
    for retries in range(100):
        attempt = retries + 1
        again = RULES[kind](retries)
        assert exhausted(kind, attempt) is not again, (kind, retries)
        assert (after(kind, attempt, rng=random.Random(1)) is not None) is again, (kind, retries)


def test_after_is_the_delay_while_attempts_are_left() -> None:
    assert after(Kind.QUERY, 5, rng=random.Random(9)) == delay(Kind.QUERY, 5, rng=random.Random(9))
    assert after(Kind.QUERY, 6, rng=random.Random(9)) is None
    assert after(Kind.NOTIFY, 11, retry_after=60.0, rng=random.Random(9)) == pytest.approx(
        max(60.0, delay(Kind.NOTIFY, 11, rng=random.Random(9)))
    )


def test_a_notification_is_tried_for_at_most_the_sum_of_its_waits() -> None:
    waits = [ceiling(Kind.NOTIFY, n) for n in range(1, 12)]

    assert POLICIES[Kind.NOTIFY].max_attempts == 12
    assert len(waits) == 11
    assert sum(waits) == 8115.0


# -- the broker --------------------------------------------------------------------------------


def test_every_cap_stays_below_the_brokers_visibility_timeout() -> None:
    # A countdown past the Redis transport's visibility timeout gets the task delivered twice.
    from worker.celery import app

    timeout = app.conf.broker_transport_options["visibility_timeout"]

    assert all(policy.cap < timeout for policy in POLICIES.values())
