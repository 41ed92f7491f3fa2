"""The bytes of a fake video: stable per video id, streamed in blocks, and byte ranges.

Byte ``i`` of a video depends only on the video id and ``i``, never on the video's size,
so a range of bytes equals the same slice of the whole file and the content survives a
restart. Each 64 KiB block is a pseudo-random block derived from the video id whose first
32 bytes are replaced by a hash of the id and the block's index, so the file is not
trivially periodic while generating it costs one small hash per block.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

BLOCK_SIZE = 64 * 1024
_HEADER_SIZE = 32
DEFAULT_BYTES_PER_SECOND = 200_000

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def video_size(duration: float, bytes_per_second: int = DEFAULT_BYTES_PER_SECOND) -> int:
    """The size in bytes of a video lasting ``duration`` seconds."""
    if duration < 0 or bytes_per_second < 0:
        raise ValueError("duration and bytes_per_second must not be negative")
    return round(duration * bytes_per_second)


@lru_cache(maxsize=32)
def _base_block(video_id: str) -> bytes:
    return hashlib.shake_256(b"kling-fake-video\0" + video_id.encode()).digest(BLOCK_SIZE)


def _block(video_id: str, index: int) -> bytes:
    head = hashlib.sha256(video_id.encode() + b"\0" + index.to_bytes(8, "big")).digest()
    return head + _base_block(video_id)[_HEADER_SIZE:]


def video_bytes(video_id: str, start: int, end: int) -> Iterator[bytes]:
    """Yield the bytes ``start`` (inclusive) to ``end`` (exclusive) of the video's content.

    Chunks are at most one block (64 KiB) long, so memory stays flat whatever the size.
    """
    if start < 0 or end < start:
        raise ValueError(f"bad byte span {start}..{end}")
    position = start
    while position < end:
        index, offset = divmod(position, BLOCK_SIZE)
        take = min(BLOCK_SIZE - offset, end - position)
        block = _block(video_id, index)
        yield block if offset == 0 and take == BLOCK_SIZE else block[offset : offset + take]
        position += take


def video_sha256(video_id: str, size: int) -> str:
    """The hex sha256 of a whole video of ``size`` bytes."""
    digest = hashlib.sha256()
    for chunk in video_bytes(video_id, 0, size):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ByteRange:
    """A satisfiable byte range: ``start`` inclusive, ``end`` exclusive."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


class RangeNotSatisfiable(Exception):
    """The requested range lies outside the file (answer 416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Read a single-range ``Range`` header against a file of ``size`` bytes.

    Returns None when the whole file should be sent (no header, a header that cannot be
    parsed, or several ranges, which the fake does not serve), a ``ByteRange`` otherwise,
    and raises ``RangeNotSatisfiable`` for a range that starts past the end.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    stop = size - 1 if not last else int(last)
    if last and stop < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, min(stop, size - 1) + 1)
