"""``GET /metrics``: the figures in Redis (``worker.state.metrics``) in Prometheus's format.

A custom collector in a registry of its own: every scrape reads Redis afresh, so any web
process answers with the figures of every process and host, and nothing is kept in this
process's memory (its restart loses nothing). ``families`` is the pure half: a snapshot in,
the metric families out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from worker.core.metrics import COUNTERS, HISTOGRAMS
from worker.state.metrics import Snapshot

__all__ = ["CONTENT_TYPE_LATEST", "RedisCollector", "families", "registry", "render"]


def _number(units: str) -> float:
    """Units (a decimal string) as a sample value; NaN for what is not a number."""
    try:
        return float(Decimal(units))
    except (InvalidOperation, ValueError):
        return float("nan")


def families(snap: Snapshot, *, units_total: str, units_today: str) -> Iterator[Metric]:
    """Every family of one scrape, from what was read."""
    for counter in COUNTERS:
        family = CounterMetricFamily(counter.name, counter.help, labels=counter.labels)
        for values, n in sorted(snap.counters.get(counter.name, {}).items()):
            family.add_metric(list(values), n)
        if not counter.labels and not snap.counters.get(counter.name):
            family.add_metric([], 0.0)
        yield family
    for histogram in HISTOGRAMS:
        seen = snap.histograms[histogram.name]
        spread = HistogramMetricFamily(histogram.name, histogram.help)
        spread.add_metric([], [(le, float(n)) for le, n in seen.buckets], seen.sum)
        yield spread

    if snap.chains is not None:
        chains = GaugeMetricFamily("kc_chains", "Chains per status", labels=["status"])
        for status, n in sorted(snap.chains.items()):
            chains.add_metric([status], n)
        yield chains
    videos = GaugeMetricFamily(
        "kc_videos", "Videos known to the archive, per state", labels=["state"]
    )
    for state, n in snap.videos.items():
        videos.add_metric([state], n)
    yield videos
    yield GaugeMetricFamily(
        "kc_videos_at_risk",
        "Videos not archived yet within ARCHIVE_WARN_SECONDS of their deletion (or past it)",
        value=snap.at_risk,
    )
    yield GaugeMetricFamily(
        "kc_oldest_unarchived_video_age_seconds",
        "Age (since the provider made it) of the oldest video not archived yet; 0 when none",
        value=snap.oldest_pending_age,
    )
    yield CounterMetricFamily(
        "kc_units_spent_total",
        "Units the provider reported as spent, since the start",
        value=_number(units_total),
    )
    yield GaugeMetricFamily(
        "kc_units_spent_today",
        "Units the provider reported as spent today (UTC)",
        value=_number(units_today),
    )
    yield GaugeMetricFamily(
        "kc_provider_slots_in_use",
        "Provider slots held by steps in flight (KLING_CONCURRENCY)",
        value=snap.slots_in_use,
    )
    depth = GaugeMetricFamily(
        "kc_queue_depth", "Messages waiting in each Celery queue", labels=["queue"]
    )
    for queue, n in snap.queues.items():
        depth.add_metric([queue], n)
    yield depth


class RedisCollector(Collector):
    """Reads the figures at each scrape: ``read`` returns the snapshot and the units."""

    def __init__(self, read: Callable[[], tuple[Snapshot, str, str]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        snap, total, today = self.read()
        return families(snap, units_total=total, units_today=today)


def registry(read: Callable[[], tuple[Snapshot, str, str]]) -> CollectorRegistry:
    """A private registry holding only the service's collector (no process metrics of this
    one web process, which would not add up across processes)."""
    built = CollectorRegistry(auto_describe=False)
    built.register(RedisCollector(read))
    return built


def render(built: CollectorRegistry) -> bytes:
    """One scrape, in the text format (``CONTENT_TYPE_LATEST``); Redis errors raise."""
    return generate_latest(built)
