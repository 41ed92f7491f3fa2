"""How long state is kept, and which archived files a chain's final video makes redundant.

- ``CHAIN_RETENTION_DAYS``: a chain's document expires that long after it finished
  (``expires``: succeeded, failed or cancelled, and owing no work). A resume takes it on again
  and clears the expiry. Its video records stay: they are the archive's proof.
- ``ARCHIVE_KEEP=final``: once a chain has succeeded and its final video is archived, the
  videos that final one contains (``supersedes``: its ancestors, made by this chain) have
  their files deleted and their records marked ``superseded`` (``prune_plan``).

Pure rules; ``worker.state.chains`` applies the expiry, ``worker.archiver`` the deletions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from worker.core.chain import Chain, ChainStatus, StepStatus
from worker.core.schedule import schedule
from worker.core.videos import VideoRecord, VideoState

DAY = 24 * 3600.0
FINISHED = frozenset({ChainStatus.SUCCEEDED, ChainStatus.FAILED, ChainStatus.CANCELLED})


class Keep(StrEnum):
    """``ARCHIVE_KEEP``: which of a succeeded chain's archived videos keep their files."""

    ALL = "all"
    FINAL = "final"


@dataclass(frozen=True)
class Retention:
    """``chain_seconds``: how long a finished chain's document is kept (None: for ever)."""

    chain_seconds: float | None = None
    keep: Keep = Keep.ALL

    @classmethod
    def of(cls, chain_retention_days: float, archive_keep: str) -> Retention:
        return cls(chain_retention_days * DAY, Keep(archive_keep))

    @property
    def chain_ms(self) -> int | None:
        """The expiry in Redis's milliseconds (at least 1), or None."""
        if self.chain_seconds is None:
            return None
        return max(1, round(self.chain_seconds * 1000))


def expires(chain: Chain) -> bool:
    """True when ``chain`` is finished and owes no work: its document may expire.

    A chain owing work (a paid step still followed after a late failure) is polled through
    its document, so it is kept until that work is done.
    """
    if chain.status not in FINISHED:
        return False
    return not schedule(chain, poll_after=0.0, submit_lease=0.0)


def newly_succeeded(old: Chain, new: Chain) -> bool:
    """True when the change from ``old`` to ``new`` is the one that made the chain succeed."""
    return old.status is not ChainStatus.SUCCEEDED and new.status is ChainStatus.SUCCEEDED


def final_video(chain: Chain) -> str | None:
    """The chain's final video: the newest one of a step that succeeded."""
    for step in reversed(chain.steps):
        if step.status is StepStatus.SUCCEED and step.video_id is not None:
            return step.video_id
    return None


def supersedes(chain: Chain) -> list[str]:
    """The videos this chain made that its final video contains, newest first.

    An extension contains its parent, so these are the final video's ancestors, followed
    through ``parent_video_id`` while the parent is a video this chain made. Its source video
    is not (another chain's, or the provider's), nor a video on a branch the final does not
    descend from (a step whose reported length was doubted, then resumed from before it).
    """
    final = final_video(chain)
    made = {s.video_id: s for s in chain.steps if s.video_id is not None}
    found: list[str] = []
    parent = made[final].parent_video_id if final is not None else None
    while parent is not None and parent in made and parent != final and parent not in found:
        found.append(parent)
        parent = made[parent].parent_video_id
    return found


@dataclass(frozen=True)
class Prune:
    """Delete the files of ``videos``, all contained in the chain's ``final`` video."""

    final: str
    videos: list[str]


def prune_plan(chain: Chain, records: Mapping[str, VideoRecord]) -> Prune | str:
    """What ``ARCHIVE_KEEP=final`` may delete for ``chain`` now, or why nothing may be.

    Nothing is deleted unless the chain succeeded and its final video's record is archived
    (a verified object in storage). Only records of this chain's own videos in ``supersedes``
    that are archived (or whose deletion was cut short: ``superseding``) are chosen; the
    final video never is.
    """
    if chain.status is not ChainStatus.SUCCEEDED:
        return f"the chain is {chain.status.value}, not succeeded"
    final = final_video(chain)
    if final is None:
        return "the chain has no final video"
    record = records.get(final)
    if record is None or record.state is not VideoState.ARCHIVED:
        state = "unknown" if record is None else record.state.value
        return f"its final video {final} is not archived ({state})"
    prunable = (VideoState.ARCHIVED, VideoState.SUPERSEDING)
    chosen = [
        v
        for v in supersedes(chain)
        if v != final
        and (r := records.get(v)) is not None
        and r.chain_id == chain.id
        and r.state in prunable
    ]
    return Prune(final, chosen)


def unfinished_plan(
    chain_id: str, marked: list[VideoRecord], records: Mapping[str, VideoRecord]
) -> Prune | str:
    """For a chain whose document expired before its prune was done: finish what its records
    ``marked`` (``superseding``) show was decided, once their final video is still archived.

    Nothing else of the chain is deleted: without its document there is no telling what its
    final video contains.
    """
    finals = sorted({r.superseded_by for r in marked if r.chain_id == chain_id and r.superseded_by})
    if not finals:
        return "the chain is gone (expired) and left no deletion half done: its files are kept"
    final = finals[0]  # one: a chain has one final video
    record = records.get(final)
    if record is None or record.state is not VideoState.ARCHIVED or record.chain_id != chain_id:
        state = "unknown" if record is None else record.state.value
        return f"its final video {final} is not archived ({state})"
    chosen = [
        r.video_id
        for r in marked
        if r.chain_id == chain_id
        and r.superseded_by == final
        and r.state is VideoState.SUPERSEDING
        and r.video_id != final
    ]
    return Prune(final, chosen)
