"""How fast a download must go: a time limit per attempt and a minimum throughput.

Without these, only the read timeout applies, and a file host that sends a byte now and then
(never quiet for a whole read timeout) holds a worker for as long as it likes. `pace_problem`
is the pure decision; `Meter` keeps one attempt's counts on an injected monotonic clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "AttemptLimits", "Meter", "pace_problem"]


@dataclass(frozen=True)
class AttemptLimits:
    """How long one attempt may take, and how slowly its body may arrive.

    A body slower than `min_bytes_per_second`, measured over each `window_seconds`, or an
    attempt running past `seconds`, ends the attempt as retryable; the next one resumes with
    a Range request where the server allows it. 0 bytes per second turns the rate check off.
    The checks run as data arrives, so a transfer can overrun them by up to the read timeout.
    """

    seconds: float = 1800.0
    min_bytes_per_second: float = 64 * 1024
    window_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not self.seconds > 0 or not self.window_seconds > 0 or self.min_bytes_per_second < 0:
            raise ValueError(f"attempt limits must be positive, got {self}")


DEFAULT_LIMITS = AttemptLimits()


def pace_problem(
    limits: AttemptLimits, *, elapsed: float, window: float, window_bytes: int
) -> str | None:
    """Why an attempt must stop now, or None.

    `elapsed` seconds since the attempt started; `window_bytes` received in the last
    `window` seconds (the rate is judged once a window is complete).
    """
    if elapsed >= limits.seconds:
        return f"attempt took {elapsed:.0f} s, past its limit of {limits.seconds:g} s"
    floor = limits.min_bytes_per_second
    if floor > 0 and window >= limits.window_seconds and window_bytes < floor * window:
        return (
            f"too slow: {window_bytes / window:.0f} bytes/s over {window:.0f} s, "
            f"below the minimum of {floor:.0f} bytes/s"
        )
    return None


class Meter:
    """Elapsed time and bytes per window of one attempt, on a monotonic clock."""

    def __init__(self, limits: AttemptLimits, monotonic: Callable[[], float]) -> None:
        self.limits, self.monotonic = limits, monotonic
        self.started = self.window_started = monotonic()
        self.window_bytes = 0

    def add(self, size: int) -> str | None:
        """Count `size` more bytes; why the attempt must stop, or None."""
        now = self.monotonic()
        self.window_bytes += size
        window = now - self.window_started
        problem = pace_problem(
            self.limits, elapsed=now - self.started, window=window, window_bytes=self.window_bytes
        )
        if problem is None and window >= self.limits.window_seconds:
            self.window_started, self.window_bytes = now, 0
        return problem
