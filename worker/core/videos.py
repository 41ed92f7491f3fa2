"""The archive's record of every known video: what it is, its deadline, whether it is safe.

A video is known when a chain made it, when a callback from any of the account's tasks named
it, or when someone asked for its task to be archived. Each record carries ``expires_at``
(the provider deletes videos 30 days after they were made) and moves, only forward, from
``pending`` to ``archived`` or ``lost``; with ``ARCHIVE_KEEP=final`` an archived video that a
chain's final video contains moves on to ``superseding`` (its file is being deleted) and
``superseded`` (deleted; the record stays, with its sha256, as the proof of what was made).
The record is the only archive state there is: a
chain names its videos by id, is told when each one settles, and shows each record as one of
its archive entries (``archive_entry``).

The record and its rules are pure; ``worker.state.videos`` keeps them in Redis.
"""

from __future__ import annotations

import builtins
import json
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from kling.models import VIDEO_LIFETIME_SECONDS

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""Provider ids that may become a file name or a key: the same rule for chains and the rest."""


def unsafe_id(video_id: str) -> str | None:
    """Why ``video_id`` may not become a file name or a key, or None when it may."""
    return None if SAFE_ID.match(video_id) else f"video id {video_id!r} is not a safe file name"


class VideoState(StrEnum):
    PENDING = "pending"
    ARCHIVED = "archived"
    LOST = "lost"
    SUPERSEDING = "superseding"  # archived, and its file is being deleted (ARCHIVE_KEEP=final)
    SUPERSEDED = "superseded"  # its file was deleted: the chain's final video contains it


class ArchiveStatus(StrEnum):
    """An archive entry's status in the chain view (an API contract): its record's state."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


ARCHIVE_STATUS = {
    VideoState.PENDING: ArchiveStatus.PENDING,
    VideoState.ARCHIVED: ArchiveStatus.DONE,
    VideoState.LOST: ArchiveStatus.FAILED,
    VideoState.SUPERSEDING: ArchiveStatus.SUPERSEDED,
    VideoState.SUPERSEDED: ArchiveStatus.SUPERSEDED,
}


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    task_id: str
    kind: str
    url: str
    created_at: float
    known_at: float
    duration: float | None = None
    parent_video_id: str | None = None
    prompt: str | None = None
    chain_id: str | None = None
    step: int | None = None  # the chain's step that made it
    parent_task_id: str | None = None
    origin: str = "callback"  # chain | callback | request
    state: VideoState = VideoState.PENDING
    location: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    source_host: str | None = None
    archived_at: float | None = None
    error: str | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    owner: str | None = None
    claimed_at: float | None = None
    queued_at: float | None = None
    warned: bool = False
    superseded_by: str | None = None  # the chain's final video, which contains this one
    superseded_at: float | None = None  # when its file was deleted

    @property
    def expires_at(self) -> float:
        return self.created_at + VIDEO_LIFETIME_SECONDS

    @property
    def settled(self) -> bool:
        return self.state is not VideoState.PENDING

    def sidecar(self) -> dict[str, Any]:
        """What the ``.json`` beside the archived file says of the video's origin."""
        about: dict[str, Any] = {
            "task_id": self.task_id,
            "kind": self.kind,
            "parent_video_id": self.parent_video_id,
            "prompt": self.prompt,
            "duration": self.duration,
            "origin": self.origin,
        }
        if self.chain_id is not None:
            about |= {
                "chain_id": self.chain_id,
                "step": self.step,
                "parent_task_id": self.parent_task_id,
            }
        return about

    def to_json(self) -> str:
        # vars, not dataclasses.asdict (which deep-copies, twice the cost): the fields are flat.
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | builtins.bytes) -> VideoRecord:
        data = json.loads(raw)
        return cls(**{**data, "state": VideoState(data["state"])})

    def view(self, now: float, warn_window: float) -> dict[str, Any]:
        """The record as the HTTP API and the JSON-lines export show it."""
        return {
            "video_id": self.video_id,
            "task_id": self.task_id,
            "kind": self.kind,
            "state": self.state.value,
            "parent_video_id": self.parent_video_id,
            "prompt": self.prompt,
            "duration": self.duration,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "location": self.location,
            "source_host": self.source_host,
            "chain_id": self.chain_id,
            "origin": self.origin,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "archived_at": self.archived_at,
            "at_risk": at_risk(self, now, warn_window),
            "error": self.error,
            "superseded_by": self.superseded_by,
            "superseded_at": self.superseded_at,
        }


def archive_entry(
    video_id: str, duration: float | None, record: VideoRecord | None
) -> dict[str, Any]:
    """A chain's video as the chain view lists it (an API contract), from its record."""
    if record is None:  # not recorded yet, or never: an unsafe id is lost at once
        unsafe = unsafe_id(video_id)
        return {
            "video_id": video_id,
            "status": (ArchiveStatus.PENDING if unsafe is None else ArchiveStatus.FAILED).value,
            "path": None,
            "bytes": None,
            "sha256": None,
            "duration": duration,
            "error": unsafe,
        }
    return {
        "video_id": video_id,
        "status": ARCHIVE_STATUS[record.state].value,
        "path": record.location,
        "bytes": record.bytes,
        "sha256": record.sha256,
        "duration": record.duration,
        "error": record.error,
    }


# -- pure rules --------------------------------------------------------------------------------
def at_risk(record: VideoRecord, now: float, warn_window: float) -> bool:
    return record.state is VideoState.PENDING and record.expires_at - now <= warn_window


def adopt(record: VideoRecord, mine: VideoRecord) -> VideoRecord:
    """``record``, known before its chain recorded it (``POST /archive`` of the chain's own
    task), as the chain's video ``mine``: its chain is then told when it settles."""
    if record.chain_id is not None:
        return record
    return replace(
        record,
        chain_id=mine.chain_id,
        step=mine.step,
        parent_task_id=mine.parent_task_id,
        prompt=record.prompt or mine.prompt,
        origin=mine.origin,
    )


def claim(record: VideoRecord, owner: str, now: float, lease: float) -> VideoRecord | None:
    """The record with ``owner`` holding it, or None when it is not this worker's to take."""
    if record.state is not VideoState.PENDING or record.next_attempt_at > now:
        return None
    live = record.claimed_at is not None and now - record.claimed_at < lease
    if live and record.owner != owner:
        return None
    return replace(record, owner=owner, claimed_at=now, attempts=record.attempts + 1)


def queue(record: VideoRecord, now: float, hold: float) -> VideoRecord | None:
    """Mark a pending video as handed to the queue, unless that happened within ``hold``."""
    if record.state is not VideoState.PENDING or record.next_attempt_at > now:
        return None
    if record.queued_at is not None and now - record.queued_at < hold:
        return None
    return replace(record, queued_at=now)


def archived(
    record: VideoRecord, *, location: str, size: int, sha256: str, host: str | None, now: float
) -> VideoRecord:
    if record.state is not VideoState.PENDING:
        return record
    return replace(
        record,
        state=VideoState.ARCHIVED,
        location=location,
        bytes=size,
        sha256=sha256,
        source_host=host,
        archived_at=now,
        error=None,
        owner=None,
        claimed_at=None,
    )


def retry_at(record: VideoRecord, reason: str, when: float) -> VideoRecord:
    if record.state is not VideoState.PENDING:
        return record
    return replace(record, error=reason, next_attempt_at=when, owner=None, claimed_at=None)


def lost(record: VideoRecord, reason: str) -> VideoRecord:
    if record.state is not VideoState.PENDING:
        return record
    return replace(record, state=VideoState.LOST, error=reason, owner=None, claimed_at=None)


def superseding(record: VideoRecord, final_id: str) -> VideoRecord:
    """An archived video about to have its file deleted because ``final_id`` contains it.

    Marked before the deletion, so no record ever names a file that may be gone as archived;
    a deletion cut short is finished by running it again."""
    if record.state is not VideoState.ARCHIVED:
        return record
    return replace(record, state=VideoState.SUPERSEDING, superseded_by=final_id)


def superseded(record: VideoRecord, now: float) -> VideoRecord:
    """The file is deleted: the record stays (id, bytes, sha256, what superseded it, when)."""
    if record.state is not VideoState.SUPERSEDING:
        return record
    return replace(record, state=VideoState.SUPERSEDED, location=None, superseded_at=now)
