"""A fake Kling gateway: the Kling video API without the bill.

It serves text2video, image2video and video-extend tasks (bare paths and behind a
``/kling`` gateway prefix), moves them through submitted, processing and succeed on a
timer, sends callbacks, serves video files with byte ranges (playable MP4 test patterns, or
stable random bytes of a known size: ``kling.fake.mp4``, ``kling.fake.content``), and can be told
to misbehave (lost replies, dropped callbacks, broken downloads...) through ``/_fake``.
Run it with ``python -m kling.fake``; see ``kling.fake.server`` for the options.
"""

from kling.fake.app import Gateway, create_app, gateway_of
from kling.fake.config import FakeConfig
from kling.fake.content import video_bytes, video_sha256, video_size
from kling.fake.engine import Engine, EngineSettings, StatusChange
from kling.fake.errors import KlingError
from kling.fake.faults import Faults, FaultsError
from kling.fake.tasks import extension_seconds

__all__ = [
    "Engine",
    "EngineSettings",
    "FakeConfig",
    "Faults",
    "FaultsError",
    "Gateway",
    "KlingError",
    "StatusChange",
    "create_app",
    "extension_seconds",
    "gateway_of",
    "video_bytes",
    "video_sha256",
    "video_size",
]
