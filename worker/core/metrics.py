"""The service's Prometheus families and the pure rules behind them.

What each counter and histogram is called, its labels or buckets, which outcome a provider
error counts as, which bucket a value falls in, and a histogram's cumulative buckets. The
figures themselves live in Redis (``worker.state.metrics``), so they add up across every web
and worker process and host; the web process renders them at ``GET /metrics``
(``webhook.metrics``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from enum import StrEnum

from kling.errors import AmbiguousCreate, KlingError, MalformedReply, NotFound, PermanentError
from kling.models import Task


class CreateOutcome(StrEnum):
    """``kc_creates_total{outcome}``: what a create request came to."""

    ACCEPTED = "accepted"  # the provider made the task (and bills it)
    REFUSED = "refused"  # the provider refused it (1303 and 429s included), or it never left
    AMBIGUOUS = "ambiguous"  # the reply was lost or unreadable: the task may exist


class CallbackOutcome(StrEnum):
    """``kc_callbacks_total{outcome}``: what became of a provider callback."""

    ACCEPTED = "accepted"  # a valid token and a task object: its refresh (or import) is queued
    FORBIDDEN = "forbidden"  # a wrong token (403)
    MALFORMED = "malformed"  # not a task object, or an unsafe task id (400)
    TOO_LARGE = "too_large"  # a body past the callback size limit (413)


class QueryOutcome(StrEnum):
    """``kc_queries_total{outcome}``: what a task query (``GET .../{task_id}``) came to."""

    OK = "ok"  # the provider answered with the task
    NOT_FOUND = "not_found"  # the provider has no such task
    REFUSED = "refused"  # another permanent refusal (auth, account, bad parameter)
    ERROR = "error"  # no usable answer (rate limit, 5xx, timeout, unreadable reply): asked again


def create_outcome(exc: KlingError) -> CreateOutcome:
    """The outcome of a create that raised ``exc`` (``kling.client.KlingClient.create``)."""
    if isinstance(exc, AmbiguousCreate | MalformedReply):
        return CreateOutcome.AMBIGUOUS
    return CreateOutcome.REFUSED


def query_outcome(exc: KlingError) -> QueryOutcome:
    if isinstance(exc, NotFound):
        return QueryOutcome.NOT_FOUND
    if isinstance(exc, PermanentError):
        return QueryOutcome.REFUSED
    return QueryOutcome.ERROR


@dataclass(frozen=True)
class Counter:
    """A counter family: its exposed name (``..._total``) and its labels, in order."""

    name: str
    help: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Histogram:
    """A histogram family with fixed upper bounds (``+Inf`` is implied)."""

    name: str
    help: str
    buckets: tuple[float, ...]

    def bucket(self, value: float) -> str:
        """The field counting ``value``: its smallest bound at or above it, or ``+Inf``."""
        at = bisect.bisect_left(self.buckets, value)
        return "+Inf" if at == len(self.buckets) else bound(self.buckets[at])

    def cumulative(self, counts: dict[str, int], total: int) -> list[tuple[str, int]]:
        """Prometheus buckets (``le``, observations at or below it) from the per-bucket
        counts ``bucket`` wrote; ``+Inf`` holds ``total``."""
        out: list[tuple[str, int]] = []
        running = 0
        for upper in self.buckets:
            running += counts.get(bound(upper), 0)
            out.append((bound(upper), running))
        out.append(("+Inf", max(total, running)))
        return out


def bound(value: float) -> str:
    """A bucket bound as Prometheus writes ``le`` (``0.5``, ``60.0``)."""
    return repr(float(value))


CREATES = Counter(
    "kc_creates_total",
    "Create requests sent to the provider, by task kind and outcome (accepted, refused, ambiguous)",
    ("kind", "outcome"),
)
CALLBACKS = Counter(
    "kc_callbacks_total",
    "Provider callbacks received, by outcome (accepted, forbidden, malformed, too_large)",
    ("outcome",),
)
QUERIES = Counter(
    "kc_queries_total",
    "Task queries sent to the provider, by outcome (ok, not_found, refused, error)",
    ("outcome",),
)
DOWNLOAD_BYTES = Counter(
    "kc_download_bytes_total", "Bytes of the videos downloaded into the archive"
)
COUNTERS = (CREATES, CALLBACKS, QUERIES, DOWNLOAD_BYTES)

TURNAROUND = Histogram(
    "kc_step_turnaround_seconds",
    "From the arrival of the callback that ended a step to the next step's accepted create",
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
TASK_SECONDS = Histogram(
    "kc_task_seconds",
    "The provider's time for a task, from its created_at to its end (updated_at)",
    (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 240.0, 300.0, 420.0, 600.0, 900.0, 1800.0, 3600.0),
)
DOWNLOAD_SECONDS = Histogram(
    "kc_download_seconds",
    "Time to download and store one video in the archive",
    (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
HISTOGRAMS = (TURNAROUND, TASK_SECONDS, DOWNLOAD_SECONDS)


def label_field(values: tuple[str, ...]) -> str:
    """A counter's Redis hash field: its label values joined by ``|`` (none: ``""``)."""
    return "|".join(values)


def label_values(counter: Counter, field: str) -> tuple[str, ...] | None:
    """The label values a field stands for; None for a field of another shape."""
    values = tuple(field.split("|")) if counter.labels else ()
    if counter.labels and len(values) != len(counter.labels):
        return None
    if not counter.labels and field != "":
        return None
    return values


def task_seconds(task: Task) -> float | None:
    """The provider's time for an ended task, from its own timestamps; None when unknown."""
    if task.created_at_ms is None or task.updated_at_ms is None:
        return None
    spent = (task.updated_at_ms - task.created_at_ms) / 1000
    return spent if spent >= 0 else None
