"""Every Redis key this service writes, in one place. All start with ``KEY_PREFIX``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


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
    def spend_total(self) -> str:
        """Micro-units reported since the start: only ever grows (``kc_units_spent_total``)."""
        return f"{self.prefix}spend:total"

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
