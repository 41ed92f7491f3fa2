"""Which queue each kind of work waits in, so that paid work never waits behind a download.

The names derive from ``CELERY_QUEUE`` (README, "Processes"); the steps keep the bare name,
so messages queued before the queues were split are still consumed by the step workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker import tasknames


@dataclass(frozen=True)
class Queues:
    """The queues of one deployment, one per kind of work."""

    steps: str  # paid: step submits and refreshes, and the sweep that hands out owed steps
    archive: str  # downloads into the archive: big files, slow hosts
    imports: str  # outside tasks to confirm (a query each) before their videos are queued
    notify: str  # events to POST to NOTIFY_URL

    @classmethod
    def named(cls, base: str) -> Queues:
        return cls(
            steps=base,
            archive=f"{base}.archive",
            imports=f"{base}.import",
            notify=f"{base}.notify",
        )

    def all(self) -> tuple[str, ...]:
        """Every queue, paid work first: what a worker started without ``--queues`` takes."""
        return (self.steps, self.archive, self.imports, self.notify)

    def routes(self) -> dict[str, dict[str, str]]:
        """Celery's ``task_routes``: every task name to its queue."""
        queue_of = {
            tasknames.SUBMIT_STEP: self.steps,
            tasknames.REFRESH_STEP: self.steps,
            # Light (Redis reads and publishes), and it is what re-sends a stalled step and
            # polls a quiet one: it must not wait behind downloads either.
            tasknames.SWEEP: self.steps,
            tasknames.ARCHIVE_VIDEO: self.archive,
            tasknames.SUPERSEDE: self.archive,  # storage work, after the downloads it follows
            tasknames.IMPORT_TASK: self.imports,
            tasknames.NOTIFY: self.notify,
            tasknames.ANNOUNCE_END: self.notify,
        }
        return {name: {"queue": queue} for name, queue in queue_of.items()}
