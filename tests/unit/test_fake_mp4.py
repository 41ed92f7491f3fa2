"""The fake gateway's MP4 files: a test pattern that decodes back to what was drawn."""

from __future__ import annotations

import io
import struct
import threading
from typing import Any

import av  # the demo extra, which the test extra installs
import numpy as np
import pytest

from kling.fake.config import FakeConfig
from kling.fake.mp4 import (
    FPS,
    HEIGHT,
    WIDTH,
    Mp4Files,
    colour_of,
    draw_frame,
    encode,
    encoder_available,
    frame_count,
    timestamp_text,
)
from kling.fake.server import build_parser, config_from_args


def decoded(data: bytes) -> tuple[Any, list[Any]]:
    """The video stream's facts and its frames as RGB arrays."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        assert stream.duration is not None
        assert stream.time_base is not None
        assert container.duration is not None
        facts = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "duration": float(stream.duration * stream.time_base),
            "container_duration": container.duration / 1_000_000,
        }
        images = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return facts, images


def top_level_boxes(data: bytes) -> list[str]:
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        boxes.append(kind.decode())
        if size < 8:
            break
        offset += size
    return boxes


@pytest.mark.parametrize(
    ("frame", "text"),
    [(0, "0.0"), (1, "0.1"), (9, "0.9"), (10, "1.0"), (93, "9.3"), (1799, "179.9")],
)
def test_each_frame_shows_its_start_time(frame: int, text: str) -> None:
    assert timestamp_text(frame) == text


@pytest.mark.parametrize(("duration", "frames"), [(5.0, 50), (9.3, 93), (180.0, 1800), (0.01, 1)])
def test_frame_count_follows_the_duration(duration: float, frames: int) -> None:
    assert frame_count(duration) == frames


def test_colours_are_stable_per_video_and_differ_between_videos() -> None:
    assert colour_of("vid_a") == colour_of("vid_a")
    assert colour_of("vid_a") != colour_of("vid_b")
    assert all(40 <= channel < 160 for channel in colour_of("vid_a"))


def test_frames_differ_as_time_goes_on() -> None:
    colour = colour_of("vid_a")
    first, second, later = draw_frame(0, colour), draw_frame(1, colour), draw_frame(10, colour)
    assert first.shape == (HEIGHT, WIDTH, 3)
    assert (first[0, 0] == colour).all()
    assert not (first == second).all()
    assert not (first == later).all()


@pytest.mark.parametrize("duration", [5.0, 9.3, 4.7])
def test_a_file_decodes_back_to_its_duration_and_frames(duration: float) -> None:
    colour = colour_of("vid_play")
    data = encode(duration, colour)

    facts, images = decoded(data)

    assert facts["codec"] == "h264"
    assert facts["pix_fmt"] == "yuv420p"
    assert facts["size"] == (WIDTH, HEIGHT)
    assert facts["duration"] == pytest.approx(duration)
    assert facts["container_duration"] == pytest.approx(duration)
    assert len(images) == round(duration * FPS)
    for index in (0, len(images) // 2, len(images) - 1):  # what was drawn, give or take lossy
        error = np.abs(images[index].astype(int) - draw_frame(index, colour).astype(int))
        assert error.mean() < 6, f"frame {index} does not look like what was drawn"
    assert not (images[0] == images[-1]).all()


def test_moov_comes_before_mdat_so_a_browser_can_play_while_downloading() -> None:
    boxes = top_level_boxes(encode(5.0, colour_of("vid_a")))
    assert boxes[0] == "ftyp"
    assert "moov" in boxes
    assert "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")


def test_the_same_file_is_made_again_byte_for_byte() -> None:
    colour = colour_of("vid_a")
    assert encode(4.5, colour) == encode(4.5, colour)
    assert encode(4.5, colour) != encode(4.5, colour_of("vid_b"))


@pytest.mark.parametrize("duration", [0.0, -1.0, 601.0])
def test_impossible_durations_are_refused(duration: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        encode(duration, (0, 0, 0))


def test_the_cache_keeps_files_within_its_bound() -> None:
    files = Mp4Files(max_bytes=30_000)
    first = files.get("vid_a", 5.0)
    assert files.get("vid_a", 5.0) is first
    assert files.encoded == 1
    for name in ("vid_b", "vid_c", "vid_d", "vid_e"):
        files.get(name, 5.0)
    assert files.cached_bytes <= 30_000
    assert files.get("vid_a", 5.0) == first  # made again after eviction: the same bytes
    assert files.encoded == 6


def test_a_file_wanted_by_many_threads_at_once_is_encoded_once() -> None:
    files = Mp4Files()
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(files.get("v", 3.0))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert files.encoded == 1
    assert len(results) == 6
    assert len(set(results)) == 1


def test_a_file_larger_than_the_cache_is_served_not_kept() -> None:
    files = Mp4Files(max_bytes=100)
    assert len(files.get("v", 2.0)) > 100
    assert files.cached_bytes == 0


# -- choosing the format ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "mp4"),
        ({"bytes_per_second": 4000}, "random"),
        ({"video_format": "random"}, "random"),
        ({"video_format": "mp4"}, "mp4"),
        ({"video_format": "mp4", "bytes_per_second": 4000}, "mp4"),
    ],
)
def test_auto_serves_mp4_unless_a_size_is_asked_for(options: Any, expected: str) -> None:
    assert encoder_available()
    assert FakeConfig(**options).content_format() == expected


def test_random_content_keeps_its_default_size() -> None:
    assert FakeConfig().random_bytes_per_second() == 200_000
    assert FakeConfig(bytes_per_second=4000).random_bytes_per_second() == 4000


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="video_format must be one of auto, random, mp4"):
        FakeConfig(video_format="webm")


def test_mp4_without_the_encoder_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kling.fake.config.encoder_available", lambda: False)
    with pytest.raises(ValueError, match=r"pip install 'kling-chain\[demo\]'"):
        FakeConfig(video_format="mp4")
    assert FakeConfig().content_format() == "random"


def test_the_command_line_chooses_the_format() -> None:
    parser = build_parser()
    assert config_from_args(parser.parse_args([]), {}).content_format() == "mp4"
    argv = ["--video-format", "random"]
    assert config_from_args(parser.parse_args(argv), {}).content_format() == "random"
    argv = ["--bytes-per-second", "4000"]
    assert config_from_args(parser.parse_args(argv), {}).content_format() == "random"
    with pytest.raises(SystemExit):
        parser.parse_args(["--video-format", "avi"])
