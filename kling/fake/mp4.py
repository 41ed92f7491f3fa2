"""Real, playable MP4 files for the fake gateway: a test pattern with the time drawn on it.

Each frame is the video id's colour with the elapsed time (``12.3``) in big seven-segment
digits and a bar that crosses the frame once a second: H.264 (yuv420p), 320x180 at 10 frames
a second, so a file lasts exactly its stated duration (durations come in tenths of a second),
with the ``moov`` box at the front (``+faststart``) so a browser plays it while it downloads.

Encoding needs PyAV (the ``demo`` extra: ``pip install 'kling-chain[demo]'``), imported only
when a file is made. A file depends only on its duration and its colour, and the encoder is
run bit-exact, so a file made again after leaving the cache has the same bytes: a download
resumed with a byte range continues the same file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

WIDTH, HEIGHT = 320, 180
FPS = 10
MAX_SECONDS = 600.0
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024

Colour = tuple[int, int, int]

# Seven segments, each (top, left, height, width) in a digit box of 40x76 with strokes of 8.
_DIGIT_W, _DIGIT_H, _STROKE = 40, 76, 8
_HALF = (_DIGIT_H - _STROKE) // 2
_SEGMENTS = {
    "a": (0, 0, _STROKE, _DIGIT_W),
    "b": (0, _DIGIT_W - _STROKE, _HALF + _STROKE, _STROKE),
    "c": (_HALF, _DIGIT_W - _STROKE, _HALF + _STROKE, _STROKE),
    "d": (_DIGIT_H - _STROKE, 0, _STROKE, _DIGIT_W),
    "e": (_HALF, 0, _HALF + _STROKE, _STROKE),
    "f": (0, 0, _HALF + _STROKE, _STROKE),
    "g": (_HALF, 0, _STROKE, _DIGIT_W),
}
_LIT = {
    "0": "abcdef",
    "1": "bc",
    "2": "abdeg",
    "3": "abcdg",
    "4": "bcfg",
    "5": "acdfg",
    "6": "acdefg",
    "7": "abc",
    "8": "abcdefg",
    "9": "abcdfg",
}
_GAP = 10  # between digits
_TOP = (HEIGHT - _DIGIT_H) // 2 - 10
_BAR_TOP, _BAR_HEIGHT, _BAR_WIDTH = HEIGHT - 24, 10, 32


class EncoderMissing(RuntimeError):
    """MP4 files need PyAV: pip install 'kling-chain[demo]' (or use the random video format)."""


def encoder_available() -> bool:
    """Whether PyAV and numpy can be imported here (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("av", "numpy"))


def frame_count(duration: float) -> int:
    """Frames in a video of ``duration`` seconds (at least one)."""
    return max(1, round(duration * FPS))


def colour_of(video_id: str) -> Colour:
    """A mid-dark colour of the video id, so white digits stay readable on it."""
    digest = hashlib.sha256(b"kling-fake-colour\0" + video_id.encode()).digest()
    return (40 + digest[0] % 120, 40 + digest[1] % 120, 40 + digest[2] % 120)


def timestamp_text(frame: int) -> str:
    """What frame ``frame`` shows: the seconds elapsed at its start, e.g. ``12.3``."""
    seconds, tenths = divmod(frame * 10 // FPS, 10)
    return f"{seconds}.{tenths}"


def draw_frame(frame: int, colour: Colour) -> npt.NDArray[np.uint8]:
    """Frame ``frame`` as an RGB array of HEIGHTxWIDTHx3."""
    import numpy as np

    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:, :] = colour
    text = timestamp_text(frame)
    seconds, tenths = text.split(".")
    # Seconds right-aligned before the point, so the digits do not move as they grow.
    point_w = _STROKE + _GAP
    width = 3 * (_DIGIT_W + _GAP) + point_w + _DIGIT_W
    left = (WIDTH - width) // 2
    for index, char in enumerate(seconds.rjust(3)):
        if char != " ":
            _digit(image, char, _TOP, left + index * (_DIGIT_W + _GAP))
    point_left = left + 3 * (_DIGIT_W + _GAP)
    image[_TOP + _DIGIT_H - _STROKE : _TOP + _DIGIT_H, point_left : point_left + _STROKE] = 255
    _digit(image, tenths, _TOP, point_left + point_w)
    # A bar that crosses the frame once a second: motion a viewer can see.
    position = (frame % FPS) * (WIDTH - _BAR_WIDTH) // max(1, FPS - 1)
    bar = image[_BAR_TOP : _BAR_TOP + _BAR_HEIGHT]
    bar[:, position : position + _BAR_WIDTH] = (255, 220, 0)
    return image


def _digit(image: npt.NDArray[np.uint8], char: str, top: int, left: int) -> None:
    for name in _LIT[char]:
        y, x, h, w = _SEGMENTS[name]
        image[top + y : top + y + h, left + x : left + x + w] = 255


def frames(duration: float, colour: Colour) -> Iterator[npt.NDArray[np.uint8]]:
    for index in range(frame_count(duration)):
        yield draw_frame(index, colour)


def encode(duration: float, colour: Colour) -> bytes:
    """The MP4 file of a video of ``duration`` seconds in ``colour``.

    Written to a temporary file, because moving ``moov`` to the front re-reads the file.
    """
    if not 0 < duration <= MAX_SECONDS:
        raise ValueError(f"duration must be > 0 and at most {MAX_SECONDS:g} s")
    try:
        import av
    except ImportError:
        raise EncoderMissing(EncoderMissing.__doc__) from None
    handle, path = tempfile.mkstemp(prefix="kling-fake-", suffix=".mp4")
    os.close(handle)
    try:
        with av.open(
            path,
            "w",
            format="mp4",
            options={"movflags": "+faststart"},
            container_options={"fflags": "+bitexact"},
        ) as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            stream.time_base = Fraction(1, FPS)
            stream.codec_context.gop_size = FPS  # a key frame a second: quick seeking
            stream.codec_context.options = {"preset": "veryfast", "tune": "animation"}
            for index, image in enumerate(frames(duration, colour)):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, FPS)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


class Mp4Files:
    """Encoded files by (duration, colour), most recently used kept, up to ``max_bytes``.

    Thread-safe: a file asked for by several threads at once is encoded once.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.max_bytes = max_bytes
        self.encoded = 0  # files encoded so far (cache misses)
        self._files: OrderedDict[tuple[float, Colour], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._making: dict[tuple[float, Colour], threading.Lock] = {}

    def get(self, video_id: str, duration: float) -> bytes:
        """The file of video ``video_id`` lasting ``duration`` seconds."""
        key = (round(duration, 1), colour_of(video_id))
        with self._lock:
            found = self._lookup(key)
            if found is not None:
                return found
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                found = self._lookup(key)
            if found is not None:
                return found
            try:
                data = encode(*key)
            finally:
                with self._lock:
                    self._making.pop(key, None)
            with self._lock:
                self.encoded += 1
                self._store(key, data)
        return data

    def _lookup(self, key: tuple[float, Colour]) -> bytes | None:
        data = self._files.get(key)
        if data is not None:
            self._files.move_to_end(key)
        return data

    def _store(self, key: tuple[float, Colour], data: bytes) -> None:
        if len(data) > self.max_bytes:
            return  # served, not kept
        self._files[key] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, dropped = self._files.popitem(last=False)
            self._size -= len(dropped)

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return self._size
