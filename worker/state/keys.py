"""Every Redis key this service writes, in one place. All start with ``KEY_PREFIX``.

Nothing grows without bound: each key has a TTL or a bound, listed in ``RETENTION`` at the
end. Finished chains expire after ``CHAIN_RETENTION_DAYS``; the video records stay, as the
archive's proof (README, "Retention").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Keys:
    prefix: str

    # -- chains ----------------------------------------------------------------------------
    def chain(self, chain_id: str) -> str:
        """The chain document (``worker.core.chain.Chain`` as JSON)."""
        return f"{self.prefix}chain:{chain_id}"

    @property
    def chains(self) -> str:
        """Sorted set of chain ids by creation time (listing, newest first)."""
        return f"{self.prefix}chains"

    @property
    def chains_expiring(self) -> str:
        """Sorted set of finished chains by when their document expires: the sweep takes the
        expired ones out of ``chains`` (``Store.trim_expired``)."""
        return f"{self.prefix}chains:expiring"

    @property
    def prune(self) -> str:
        """Sorted set of succeeded chains owed the deletion of the videos their final video
        supersedes (``ARCHIVE_KEEP=final``), by when the sweep hands them out."""
        return f"{self.prefix}prune"

    @property
    def due(self) -> str:
        """Sorted set of owed work (``worker.core.schedule``) by due time."""
        return f"{self.prefix}due"

    @property
    def sweep_lock(self) -> str:
        """Held for most of a sweep interval: one beat's sweep at a time."""
        return f"{self.prefix}sweep-lock"

    def idempotency(self, digest: str) -> str:
        """An Idempotency-Key (its sha256) bound to the chain it started."""
        return f"{self.prefix}idem:{digest}"

    def webhook_delivery(self, digest: str) -> str:
        """A signed provider callback's ``webhook-id`` (its sha256) already taken: a repeat
        delivery is answered without enqueueing (``worker.state.deliveries``)."""
        return f"{self.prefix}webhook-id:{digest}"

    def task_owner(self, task_id: str) -> str:
        """Which step (``chain:index``) recorded a provider task: never two."""
        return f"{self.prefix}task:{task_id}"

    def provider(self, base_url: str) -> str:
        """What a provider has been seen to do (``worker.core.reconcile.Capability``)."""
        return f"{self.prefix}provider:{hashlib.sha256(base_url.encode()).hexdigest()[:16]}"

    # -- provider slots (``worker.state.slots``) -------------------------------------------
    @property
    def slot_holders(self) -> str:
        """Hash of the steps (``chain:index``) holding a provider slot -> when they took it."""
        return f"{self.prefix}slots:holders"

    @property
    def slot_waiters(self) -> str:
        """Sorted set of the steps waiting for a slot, by the time they first asked."""
        return f"{self.prefix}slots:waiters"

    # -- spend -----------------------------------------------------------------------------
    def spend_day(self, day: str) -> str:
        """Hash of one UTC day's reported costs (``worker.state.spend``): micro-units in all
        (``units``) and per chain (``chain:{id}``), steps without a cost (``unpriced``), the
        latest cost per task kind (``latest:{kind}``)."""
        return f"{self.prefix}spend:{day}"

    @property
    def spend_latest(self) -> str:
        """Hash of the latest reported cost per task kind, whatever the day: budgets estimate
        a step from it (``worker.core.budget``)."""
        return f"{self.prefix}spend:latest"

    @property
    def spend_total(self) -> str:
        """Micro-units reported since the start: only ever grows (``kc_units_spent_total``)."""
        return f"{self.prefix}spend:total"

    # -- budgets (``worker.state.budget``) -------------------------------------------------
    @property
    def budget_daily(self) -> str:
        """The daily unit budget set through the API (micro-units); it wins over
        ``DAILY_UNIT_BUDGET``. Absent: the environment's."""
        return f"{self.prefix}budget:daily"

    @property
    def budget_reserved(self) -> str:
        """Hash of the steps (``chain:index``) admitted under the daily budget that have not
        settled -> the micro-units reserved (-1: reserved before any cost was known)."""
        return f"{self.prefix}budget:reserved"

    # -- videos ----------------------------------------------------------------------------
    def video(self, video_id: str) -> str:
        """The video record (``worker.core.videos.VideoRecord`` as JSON)."""
        return f"{self.prefix}video:{video_id}"

    @property
    def videos(self) -> str:
        """Every video by time known."""
        return f"{self.prefix}videos"

    def videos_in(self, state: str) -> str:
        """The videos in one state by time known."""
        return f"{self.prefix}videos:{state}"

    @property
    def videos_by_deadline(self) -> str:
        """Pending videos by ``expires_at``."""
        return f"{self.prefix}videos:deadline"

    def archive_asked(self, kind: str, task_id: str) -> str:
        """A task of the account asked for archiving (a day at most: one query a day)."""
        return f"{self.prefix}archive-asked:{kind}:{task_id}"

    # -- metrics (``worker.state.metrics``) ------------------------------------------------
    def metric(self, family: str) -> str:
        """Hash of one counter or histogram family (``worker.core.metrics``): a counter's
        label values (``|``-joined) -> count; a histogram's bounds -> the observations in
        that bucket alone, with ``sum`` and ``count``."""
        return f"{self.prefix}metrics:{family}"

    @property
    def chain_counts(self) -> str:
        """Hash of chains per status (``kc_chains``), kept by the chain transitions."""
        return f"{self.prefix}metrics:chains"

    @property
    def chain_counts_ready(self) -> str:
        """Set once ``chain_counts`` was counted from the chain documents themselves (chains
        stored before the counts were kept); delete it to have them counted again."""
        return f"{self.prefix}metrics:chains:counted"

    def refused_minute(self, minute: int) -> str:
        """Refused creates in one minute (Unix time // 60), kept two hours (``/account``)."""
        return f"{self.prefix}metrics:refused:{minute}"

    def callback_arrived(self, chain_id: str, index: int) -> str:
        """When the first callback saying step ``index`` succeeded arrived: the start of the
        next step's turnaround (``kc_step_turnaround_seconds``), and what tells the sweep not
        to poll the step while that callback's refresh is queued (``Runner.sweep``)."""
        return f"{self.prefix}metrics:arrived:{chain_id}:{index}"

    @property
    def refresh_wait_last(self) -> str:
        """Seconds from the latest measured turnaround's start (``callback_arrived``) to the
        commit that recorded the step's end: how long a success callback's refresh waits to
        run now, which is how long the sweep holds a poll of its step back beyond
        POLL_AFTER_SECONDS (``Runner.sweep``). A wait for a slot or the budget comes after
        that commit: a step held back by one does not hold the sweep back too."""
        return f"{self.prefix}metrics:refresh-wait-last"

    # -- adaptive polling (worker.core.polling) ----------------------------------------------
    def task_durations(self, kind: str) -> str:
        """List of the latest seconds tasks of ``kind`` took, newest first (the polling
        curve's sample; ``worker.state.polling``)."""
        return f"{self.prefix}poll:durations:{kind}"

    @property
    def callback_seen(self) -> str:
        """When a provider callback last passed its token check (``/healthz``, polling)."""
        return f"{self.prefix}poll:callback-seen"


# -- how long each key lives ---------------------------------------------------------------------
class Kept(StrEnum):
    EXPIRES = "expires"  # written with a TTL, every time
    FINISHED = "finished"  # no TTL while its chain runs; CHAIN_RETENTION_DAYS once it finished
    BOUNDED = "bounded"  # no TTL: ``why`` says what bounds it
    ARCHIVE = "archive"  # the archive's proof: one per video stored, growing as storage does


@dataclass(frozen=True)
class Life:
    """How one key (``Keys`` member) lives: ``pattern`` is its names after the prefix (glob)."""

    kept: Kept
    pattern: str
    why: str


RETENTION: dict[str, Life] = {
    "chain": Life(
        Kept.FINISHED,
        "chain:*",
        "a running chain is live work; a finished one (owing nothing) expires "
        "CHAIN_RETENTION_DAYS after its last change, and a resume clears that",
    ),
    "chains": Life(
        Kept.BOUNDED,
        "chains",
        "one member per chain document: the sweep takes expired chains out",
    ),
    "chains_expiring": Life(
        Kept.BOUNDED,
        "chains:expiring",
        "one member per finished chain, taken out with it once its document expired",
    ),
    "prune": Life(
        Kept.BOUNDED,
        "prune",
        "one member per succeeded chain whose superseded files are still to be deleted",
    ),
    "due": Life(
        Kept.BOUNDED,
        "due",
        "owed work of live chains only: the transition that ends the work removes it",
    ),
    "sweep_lock": Life(Kept.EXPIRES, "sweep-lock", "most of one sweep interval"),
    "idempotency": Life(Kept.EXPIRES, "idem:*", "24 hours (IDEMPOTENCY_TTL)"),
    "webhook_delivery": Life(Kept.EXPIRES, "webhook-id:*", "24 hours (DELIVERY_TTL)"),
    "task_owner": Life(Kept.EXPIRES, "task:*", "35 days: the provider deletes tasks in 30"),
    "provider": Life(Kept.EXPIRES, "provider:*", "a day: a gateway may change, so checked daily"),
    "slot_holders": Life(
        Kept.BOUNDED,
        "slots:holders",
        "at most KLING_CONCURRENCY steps; the sweep reclaims those whose step or chain is gone",
    ),
    "slot_waiters": Life(
        Kept.BOUNDED,
        "slots:waiters",
        "one step per live chain at most; the sweep drops those of ended or gone chains",
    ),
    "spend_day": Life(Kept.EXPIRES, "spend:????-??-??", "400 days (DAY_TTL)"),
    "spend_latest": Life(Kept.BOUNDED, "spend:latest", "one field per task kind"),
    "spend_total": Life(Kept.BOUNDED, "spend:total", "one counter"),
    "budget_daily": Life(Kept.BOUNDED, "budget:daily", "one value, set through the API"),
    "budget_reserved": Life(
        Kept.BOUNDED,
        "budget:reserved",
        "steps admitted and not settled: released when they settle, reclaimed by the sweep",
    ),
    "video": Life(Kept.ARCHIVE, "video:*", "the archive's record of each video: its proof"),
    "videos": Life(Kept.ARCHIVE, "videos", "one member per video record"),
    "videos_in": Life(Kept.ARCHIVE, "videos:*", "one member per video record, by state"),
    "videos_by_deadline": Life(
        Kept.BOUNDED,
        "videos:deadline",
        "pending videos only: each is archived or lost by its 30-day deadline",
    ),
    "archive_asked": Life(Kept.EXPIRES, "archive-asked:*", "a day (ARCHIVE_DEDUPE_SECONDS)"),
    "metric": Life(Kept.BOUNDED, "metrics:*", "one field per label value or histogram bucket"),
    "chain_counts": Life(Kept.BOUNDED, "metrics:chains", "one field per chain status"),
    "chain_counts_ready": Life(Kept.BOUNDED, "metrics:chains:counted", "one flag"),
    "refused_minute": Life(Kept.EXPIRES, "metrics:refused:*", "two hours (MINUTE_TTL)"),
    "callback_arrived": Life(Kept.EXPIRES, "metrics:arrived:*", "an hour (ARRIVAL_TTL)"),
    "refresh_wait_last": Life(
        Kept.EXPIRES, "metrics:refresh-wait-last", "an hour after the latest (ARRIVAL_TTL)"
    ),
    "task_durations": Life(
        Kept.EXPIRES,
        "poll:durations:*",
        "the latest 200 per task kind (SAMPLE_SIZE), 30 days after the newest (DURATIONS_TTL)",
    ),
    "callback_seen": Life(Kept.EXPIRES, "poll:callback-seen", "30 days (SEEN_TTL)"),
}
"""Every key ``Keys`` names, with a TTL or a bound (``tests/unit/test_retention.py`` checks
that none is missing). Kombu's own keys (the queues) are Celery's: consumed as they fill."""
