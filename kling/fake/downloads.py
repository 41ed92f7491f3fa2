"""Serving video files: byte ranges, throttling, and connections cut on purpose.

The responses are ASGI callables (Starlette ``Response`` subclasses) because the faults
need what a plain response cannot do: send headers promising a body and then break the
connection, which a client sees as a broken download.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from kling.fake.content import BLOCK_SIZE, RangeNotSatisfiable, parse_range, video_bytes
from kling.fake.engine import Engine
from kling.fake.errors import ConnectionCut
from kling.fake.tasks import Video

VIDEO_MEDIA_TYPE = "video/mp4"


class VideoFileResponse(Response):
    """A video's bytes: the whole file, a single range (206), or 416.

    The bytes are ``content`` when given (an encoded file of ``size`` bytes), else the video's
    random bytes (``video_bytes``).
    """

    def __init__(
        self,
        engine: Engine,
        video: Video,
        size: int,
        range_header: str | None,
        *,
        content: bytes | None = None,
    ) -> None:
        if content is not None and len(content) != size:
            raise ValueError(f"content is {len(content)} bytes, not {size}")
        self._engine = engine
        self._video_id = video.video_id
        self._content = content
        headers = {"content-type": VIDEO_MEDIA_TYPE, "etag": f'"{video.video_id}-{size}"'}
        self._start, self._end = 0, size
        status = 200
        if engine.faults.ranges:
            headers["accept-ranges"] = "bytes"
            try:
                span = parse_range(range_header, size)
            except RangeNotSatisfiable:
                span, status = None, 416
                self._end = 0
                headers["content-range"] = f"bytes */{size}"
            if span is not None:
                status = 206
                self._start, self._end = span.start, span.end
                headers["content-range"] = span.content_range(size)
        headers["content-length"] = str(self._end - self._start)
        super().__init__(status_code=status, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if scope["method"] == "HEAD" or self.status_code == 416:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        engine = self._engine
        engine.stats.downloads_started += 1
        cut = engine.take_download_cut()
        limit = cut.after_bytes if cut is not None else None
        rate = engine.faults.download_bytes_per_second
        piece_size = BLOCK_SIZE if rate is None else max(1024, min(BLOCK_SIZE, int(rate / 20)))
        disconnected = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(_watch(receive, disconnected))
        loop = asyncio.get_running_loop()
        began, sent = loop.time(), 0
        try:
            for piece in _pieces(self._chunks(), piece_size):
                if limit is not None and sent + len(piece) > limit:
                    piece = piece[: limit - sent]
                if piece:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    sent += len(piece)
                    engine.stats.download_bytes += len(piece)
                if limit is not None and sent >= limit:
                    raise ConnectionCut(f"download of {self._video_id} cut after {sent} bytes")
                if disconnected.is_set():
                    return
                wait = sent / rate - (loop.time() - began) if rate else 0.0
                await asyncio.sleep(max(0.0, wait))
            if limit is not None:
                raise ConnectionCut(f"download of {self._video_id} cut at its end ({sent} bytes)")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    def _chunks(self) -> Iterator[bytes]:
        if self._content is None:
            return video_bytes(self._video_id, self._start, self._end)
        view = memoryview(self._content)
        return (
            bytes(view[offset : min(offset + BLOCK_SIZE, self._end)])
            for offset in range(self._start, self._end, BLOCK_SIZE)
        )


class LostReplyResponse(JSONResponse):
    """Sends the status line and headers (with the full Content-Length), then breaks."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        raise ConnectionCut("reply of a create request lost on purpose (drop_next_creates)")


def _pieces(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    for chunk in chunks:
        for offset in range(0, len(chunk), size):
            yield chunk[offset : offset + size] if len(chunk) > size else chunk


async def _watch(receive: Receive, disconnected: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return
