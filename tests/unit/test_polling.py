"""The adaptive polling rules (``worker.core.polling``): pure, table-driven."""

from __future__ import annotations

import random

import pytest

from worker.core.polling import (
    MIN_DELAY,
    MIN_SAMPLES,
    Curve,
    Durations,
    Mode,
    callback_health,
    is_loopback_url,
    next_poll,
    rate_limit_backoff,
)

CURVE = Curve(poll_after=120.0, max_gap=4.0, min_gap=1.0, gap_fraction=0.25)
# Tasks of 4-6 minutes, evenly spread: p1 = 241.2 s, p50 = 300 s, p95 = 354 s; gap 4 s.
MINUTES = Durations.of(240 + 120 * i / 100 for i in range(101))
# The same shape in seconds (the benchmark's 4-6 s): gap a quarter of 5 s = 1.25 s.
SECONDS = Durations.of(4 + 2 * i / 100 for i in range(101))


def poll(age: float, durations: Durations | None = MINUTES, **kw: object) -> float:
    options: dict[str, object] = {"callbacks_healthy": False, "curve": CURVE, **kw}
    return next_poll(age, durations, **options)  # type: ignore[arg-type]


# -- the duration model --------------------------------------------------------------------------
def test_quantiles_interpolate_between_samples() -> None:
    d = Durations.of([4.0, 6.0, 5.0])
    assert d.seconds == (4.0, 5.0, 6.0)
    assert d.quantile(0) == 4.0
    assert d.quantile(0.5) == 5.0
    assert d.quantile(0.75) == pytest.approx(5.5)
    assert d.quantile(1) == 6.0


def test_non_positive_durations_are_not_samples() -> None:
    assert Durations.of([0.0, -1.0, 3.0]).seconds == (3.0,)


def test_a_model_needs_min_samples() -> None:
    assert not Durations.of([5.0] * (MIN_SAMPLES - 1)).known
    assert Durations.of([5.0] * MIN_SAMPLES).known


def test_the_gap_is_a_fraction_of_the_median_within_bounds() -> None:
    assert CURVE.gap(SECONDS) == pytest.approx(1.25)
    assert CURVE.gap(MINUTES) == 4.0  # capped at max_gap
    assert CURVE.gap(Durations.of([1.0] * 5)) == 1.0  # at least min_gap
    assert Curve(poll_after=2.0, max_gap=4.0).gap(MINUTES) == 2.0  # never past the ceiling


# -- without callbacks: sparse while young, dense around the end, widening after ----------------
@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0.0, 120.0),  # young: the first look (p1 + gap = 245.2 s) is past the ceiling
        (100.0, 120.0),
        (200.0, 45.2),  # young: wait for p1 + gap
        (243.0, 2.2),
        (243.3, 4.0),  # within half a gap of the first look: it is the first look
        (245.2, 4.0),  # around the expected end: every gap
        (300.0, 4.0),
        (358.0, 4.0),  # up to p95 + gap
    ],
)
def test_minutes_long_tasks_without_callbacks(age: float, expected: float) -> None:
    assert poll(age) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("healthy", [False, True])
def test_a_poll_that_runs_a_moment_early_is_not_followed_by_another_at_once(
    healthy: bool,
) -> None:
    planned = poll(0.0, SECONDS, callbacks_healthy=healthy)
    assert poll(planned - 0.01, SECONDS, callbacks_healthy=healthy) >= 1.25


def test_after_the_expected_end_the_gap_widens_with_the_overrun() -> None:
    late = [poll(age) for age in (360.0, 500.0, 708.0, 2000.0)]
    assert late == sorted(late)
    assert late[0] == pytest.approx(4.0, abs=0.1)
    assert late[2] == pytest.approx(8.0, abs=0.1)  # one expected length late: twice the gap
    assert late[3] <= CURVE.poll_after


def test_seconds_long_tasks_first_look_after_the_shortest_then_every_gap() -> None:
    assert poll(0.0, SECONDS) == pytest.approx(4.02 + 1.25)
    assert poll(5.27, SECONDS) == pytest.approx(1.25)
    assert poll(7.0, SECONDS) == pytest.approx(1.25)


def test_minutes_long_tasks_cost_a_fraction_of_a_5_s_pollers_queries() -> None:
    rng = random.Random(4)
    delays, queries = [], []
    for _ in range(1000):
        end, t, n = rng.uniform(240, 360), 0.0, 0
        while t < end:
            t += poll(t)
            n += 1
        delays.append(t - end)
        queries.append(n)
    delays.sort()
    assert delays[len(delays) // 2] <= 2.5
    assert delays[int(len(delays) * 0.99)] <= 5.0
    assert delays[-1] <= 4.0 + 1.2 + 0.01  # the gap, plus p1 - the shortest for the 1% below
    assert sum(queries) / len(queries) < 20  # a 5 s poller: 60 a task


def test_a_simulated_spread_is_learnt_of_quickly_with_few_queries() -> None:
    """Tasks uniform in 4-6 s, polled from submission by the curve alone."""
    rng = random.Random(3)
    delays, queries = [], []
    for _ in range(2000):
        end, t, n = rng.uniform(4, 6), 0.0, 0
        while True:
            t += poll(t, SECONDS)
            n += 1
            if t >= end:
                break
        delays.append(t - end)
        queries.append(n)
    delays.sort()
    assert delays[len(delays) // 2] <= 1.0
    assert delays[int(len(delays) * 0.99)] <= 1.3  # at most gap + (p1 - shortest)
    assert sum(queries) / len(queries) < 1.5  # a 5 s poller: 1.5 per task on these


# -- with callbacks: the ceiling, and one look past the expected end -----------------------------
def test_with_callbacks_one_look_just_after_the_expected_end() -> None:
    assert poll(0.0, SECONDS, callbacks_healthy=True) == pytest.approx(
        5.9 + 1.25, abs=0.01
    )  # p95 + gap
    assert poll(7.5, SECONDS, callbacks_healthy=True) == CURVE.poll_after


def test_with_callbacks_never_longer_than_poll_after() -> None:
    for age in (0.0, 10.0, 300.0, 1e6):
        assert poll(age, MINUTES, callbacks_healthy=True) <= CURVE.poll_after


@pytest.mark.parametrize("healthy", [True, False])
@pytest.mark.parametrize("age", [0.0, 1.0, 249.0, 250.0, 360.0, 1e5])
def test_every_wait_is_within_the_floor_and_the_ceiling(healthy: bool, age: float) -> None:
    for durations in (MINUTES, SECONDS, None):
        wait = poll(age, durations, callbacks_healthy=healthy)
        assert MIN_DELAY <= wait <= CURVE.poll_after


# -- no model yet ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("age", "expected"),
    [(0.0, 1.0), (3.0, 1.0), (8.0, 2.0), (16.0, 4.0), (600.0, 4.0)],
)
def test_no_model_without_callbacks_a_quarter_of_the_age_within_the_gaps(
    age: float, expected: float
) -> None:
    assert poll(age, None) == expected
    assert poll(age, Durations.of([5.0] * (MIN_SAMPLES - 1))) == expected


def test_no_model_with_callbacks_is_the_ceiling_as_before() -> None:
    assert poll(0.0, None, callbacks_healthy=True) == CURVE.poll_after


def test_fixed_mode_is_poll_after_whatever_the_task() -> None:
    for age in (0.0, 5.0, 300.0):
        assert poll(age, MINUTES, mode=Mode.FIXED) == CURVE.poll_after


# -- backoff on 1302 ------------------------------------------------------------------------------
def test_rate_limit_backs_off_exponentially_with_jitter_up_to_the_ceiling() -> None:
    rng = random.Random(1)
    # Seconds-long tasks: the ceiling doubles from twice the gap (2.5 s).
    tops = [2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 120.0, 120.0]
    for attempt, top in enumerate(tops, start=1):
        waits = [rate_limit_backoff(attempt, SECONDS, CURVE, rng=rng) for _ in range(200)]
        assert top / 2 <= min(waits)
        assert max(waits) <= top
        assert max(waits) - min(waits) > top / 10  # jittered, not one value


def test_next_poll_after_a_1302_is_the_backoff_even_in_fixed_mode() -> None:
    a = poll(300.0, MINUTES, last_error=1302, attempt=3, rng=random.Random(5), mode=Mode.FIXED)
    assert 16.0 <= a <= 32.0  # base 2 x max_gap (8 s), doubled twice
    assert poll(300.0, None, last_error=1302, attempt=1, rng=random.Random(5)) >= 4.0


def test_another_error_code_does_not_change_the_curve() -> None:
    assert poll(300.0, last_error=5000) == poll(300.0)


# -- callback health ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://localhost:8000", True),
        ("http://127.0.0.1:8000", True),
        ("http://127.5.5.5", True),
        ("http://[::1]:8000/", True),
        ("http://0.0.0.0:8000", True),
        ("http://app.localhost", True),
        ("https://chains.example.com", False),
        ("http://203.0.113.7:8000", False),
        ("http://10.0.0.5:8000", False),  # private, but a gateway on the same network may call
    ],
)
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_a_recent_callback_means_callbacks_arrive_even_on_loopback() -> None:
    health = callback_health("http://127.0.0.1:8000", 990.0, now=1000.0, silence=900)
    assert health.reachable
    assert "10 s ago" in health.reason


def test_loopback_without_callbacks_says_polling_is_relied_on() -> None:
    health = callback_health("http://localhost:8000", None, now=1000.0, silence=900)
    assert not health.reachable
    assert "PUBLIC_URL http://localhost:8000 is a loopback address" in health.reason
    assert "relies on polling" in health.reason
    assert health.as_dict() == {
        "reachable": False,
        "reason": health.reason,
        "last_seen_at": None,
    }


def test_public_url_with_no_callback_yet_or_a_long_silence() -> None:
    never = callback_health("https://chains.example.com", None, now=1000.0, silence=900)
    assert not never.reachable
    assert "no provider callback has arrived yet" in never.reason
    silent = callback_health("https://chains.example.com", 50.0, now=1000.0, silence=900)
    assert not silent.reachable
    assert "no provider callback for 950 s (CALLBACK_SILENCE_SECONDS 900)" in silent.reason
    assert silent.last_seen_at == 50.0
