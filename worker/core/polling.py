"""When to query a running task next: adaptive polling, learnt from the tasks seen.

Callbacks are the fast path, but a service the provider cannot reach (NAT, a laptop, a
firewall) learns every step by querying. A fixed poller either wastes queries or learns late;
this module spends its queries where the task is likely to end:

- ``Durations``: how long the provider's tasks of one kind took (created -> finished, the
  provider's own timestamps), from a bounded sample of recent ones;
- ``next_poll``: seconds until the next query of a task of age ``age``. No query while the
  task is young (before the shortest durations seen, plus one gap), then one every ``gap``
  around its expected end, then gaps that widen the longer it overruns; exponential, jittered
  backoff after the provider's rate limit (1302); never later than ``poll_after`` (the
  ``POLL_AFTER_SECONDS`` ceiling). With callbacks arriving, a single look just after the
  expected end stands in for a lost final callback, then ``poll_after`` as before;
- ``callback_health``: whether callbacks are reaching the service (``/healthz``).

Pure: no clock, no Redis. ``worker.state.polling`` keeps the samples and the last callback.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

__all__ = [
    "RATE_LIMITED",
    "Curve",
    "Durations",
    "Health",
    "Mode",
    "callback_health",
    "is_loopback_url",
    "next_poll",
    "rate_limit_backoff",
]

RATE_LIMITED = 1302  # the provider's "requests too fast"
MIN_DELAY = 0.25  # never re-query a task sooner than this
SAMPLE_SIZE = 200  # durations kept per task kind
MIN_SAMPLES = 5  # fewer than this: the default curve


class Mode(StrEnum):
    ADAPTIVE = "adaptive"  # the curve below
    FIXED = "fixed"  # every POLL_AFTER_SECONDS, whatever the task (a plain poller)


@dataclass(frozen=True)
class Durations:
    """Seconds tasks of one kind took, sorted; a quantile sketch small enough to read often."""

    seconds: tuple[float, ...]

    @classmethod
    def of(cls, samples: Iterable[float]) -> Durations:
        return cls(tuple(sorted(s for s in samples if s > 0)))

    @property
    def known(self) -> bool:
        """Enough samples to plan by (``MIN_SAMPLES``)."""
        return len(self.seconds) >= MIN_SAMPLES

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1), by linear interpolation between closest ranks."""
        if not self.seconds:
            raise ValueError("no durations")
        rank = q * (len(self.seconds) - 1)
        low = int(rank)
        high = min(low + 1, len(self.seconds) - 1)
        return self.seconds[low] + (self.seconds[high] - self.seconds[low]) * (rank - low)


@dataclass(frozen=True)
class Curve:
    """The numbers of the polling curve (``POLL_*`` settings)."""

    poll_after: float = 120.0  # the ceiling: never longer than this without a query
    max_gap: float = 4.0  # the widest gap between queries around the expected end
    min_gap: float = 1.0  # the narrowest
    gap_fraction: float = 0.25  # the gap as a fraction of the median duration, within those
    early: float = 0.01  # the quantile taken as "the shortest durations"
    late: float = 0.95  # the quantile taken as "the longest"

    def gap(self, durations: Durations) -> float:
        """Seconds between queries around the expected end: a fraction of the typical task,
        so a task is learnt of within a small fraction of its length, and within
        ``max_gap`` seconds however long tasks are."""
        wanted = self.gap_fraction * durations.quantile(0.5)
        return min(self.max_gap, max(self.min_gap, wanted), self.poll_after)


def next_poll(
    age: float,
    durations: Durations | None,
    *,
    callbacks_healthy: bool,
    curve: Curve,
    mode: Mode = Mode.ADAPTIVE,
    last_error: int | None = None,
    attempt: int = 1,
    rng: random.Random | None = None,
) -> float:
    """Seconds from now until the next query of a task submitted ``age`` seconds ago.

    ``last_error``: the provider code of the query that just failed (1302: back off,
    ``attempt`` counting the failures in a row, from 1); None after a good reply.
    """
    if last_error == RATE_LIMITED:
        return rate_limit_backoff(attempt, durations, curve, rng=rng)
    if mode is Mode.FIXED:
        return curve.poll_after
    age = max(0.0, age)
    if durations is None or not durations.known:
        return _default(age, callbacks_healthy, curve)
    gap = curve.gap(durations)
    shortest, longest = durations.quantile(curve.early), durations.quantile(curve.late)
    # A planned query runs a moment early or late: within half a gap of a look, it is that
    # look (never a second query a fraction of a second after the first).
    near = gap / 2
    if callbacks_healthy:
        # The callback will say; one look just after the expected end covers a lost one.
        look = longest + gap
        wait = look - age if age < look - near else curve.poll_after
    elif age < shortest + gap - near:
        wait = shortest + gap - age  # young: nothing can have ended yet
    elif age <= longest + gap:
        wait = gap  # around the expected end: densely
    else:
        # Overrunning what was seen: still dense, widening by how far past it the task is.
        wait = gap * (1.0 + (age - longest) / max(longest, 1.0))
    return _bounded(wait, curve)


def _default(age: float, callbacks_healthy: bool, curve: Curve) -> float:
    """Before ``MIN_SAMPLES`` tasks of the kind were seen: with callbacks, the ceiling as
    always; without, a gap of a quarter of the task's age so far, from ``min_gap`` to
    ``max_gap`` (a short task is learnt of within a second or so, a long one within
    ``max_gap``, like a fixed poller of that period)."""
    if callbacks_healthy:
        return curve.poll_after
    return _bounded(min(curve.max_gap, max(curve.min_gap, age * curve.gap_fraction)), curve)


def took(
    provider_seconds: float | None, submitted_at: float | None, ended_at: float | None
) -> float | None:
    """How long a succeeded task took, as a duration sample: the provider's own created ->
    updated time when it gives one (unbiased by when we asked), else ours from accepted to
    learnt ended. None when neither is known and positive."""
    if provider_seconds is not None and provider_seconds > 0:
        return provider_seconds
    if submitted_at and ended_at and ended_at > submitted_at:
        return ended_at - submitted_at
    return None


def rate_limit_backoff(
    attempt: int, durations: Durations | None, curve: Curve, *, rng: random.Random | None = None
) -> float:
    """After the ``attempt``-th 1302 in a row: uniform in [half, all] of a ceiling that
    doubles from twice the gap (or ``max_gap`` before any task was seen) up to
    ``poll_after``. Half at least, so retries of many tasks spread out but keep backing off."""
    base = 2.0 * (
        curve.gap(durations) if durations is not None and durations.known else curve.max_gap
    )
    top = min(curve.poll_after, base * 2.0 ** min(max(attempt, 1) - 1, 32))
    draw = (rng or random).uniform(top / 2, top)
    return _bounded(draw, curve)


def _bounded(wait: float, curve: Curve) -> float:
    return min(curve.poll_after, max(MIN_DELAY, wait))


# -- are callbacks reaching us? ------------------------------------------------------------------
@dataclass(frozen=True)
class Health:
    """``/healthz``'s ``callbacks``: whether provider callbacks arrive, and why not."""

    reachable: bool
    reason: str
    last_seen_at: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "reachable": self.reachable,
            "reason": self.reason,
            "last_seen_at": self.last_seen_at,
        }


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine only (``localhost``, 127.0.0.0/8, ``::1``,
    an unspecified address): a provider elsewhere cannot call it."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if not host or host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def callback_health(
    public_url: str, last_seen_at: float | None, *, now: float, silence: float
) -> Health:
    """Callbacks are taken as arriving when one came within ``silence`` seconds (a gateway
    on this machine can call a loopback ``PUBLIC_URL``); otherwise the service relies on
    polling, and the reason says why."""
    if last_seen_at is not None and now - last_seen_at <= silence:
        return Health(
            True, f"a provider callback arrived {now - last_seen_at:.0f} s ago", last_seen_at
        )
    rely = "the service relies on polling (see POLLING)"
    if is_loopback_url(public_url):
        reason = (
            f"PUBLIC_URL {public_url} is a loopback address (the default when unset): a "
            f"provider elsewhere cannot call back; {rely}"
        )
    elif last_seen_at is None:
        reason = f"no provider callback has arrived yet; {rely}"
    else:
        reason = (
            f"no provider callback for {now - last_seen_at:.0f} s (CALLBACK_SILENCE_SECONDS "
            f"{silence:g}): is PUBLIC_URL {public_url} reachable from the provider? {rely}"
        )
    return Health(False, reason, last_seen_at)
