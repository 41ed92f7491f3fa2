"""Settings of the fake gateway, read once and checked when made."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kling.fake.content import DEFAULT_BYTES_PER_SECOND
from kling.fake.faults import Faults
from kling.fake.mp4 import encoder_available
from kling.models import VIDEO_LIFETIME_SECONDS

VIDEO_FORMATS = ("auto", "random", "mp4")


@dataclass(frozen=True)
class FakeConfig:
    """How the fake gateway behaves. Secrets stay out of ``repr``.

    Auth: ``api_key`` (static bearer, gateway style) and/or ``access_key`` + ``secret_key``
    (JWT, official style); with neither, requests need no auth.

    Video files (``video_format``): ``"mp4"``, real H.264 files of a test pattern showing the
    elapsed time (needs PyAV, the ``demo`` extra); ``"random"``, deterministic random bytes of
    ``bytes_per_second`` per second of video (default 200 000); ``"auto"`` (the default),
    ``mp4`` when PyAV can be imported and no ``bytes_per_second`` is set, else ``random``.
    """

    delay: float = 3.0
    api_key: str | None = field(default=None, repr=False)
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    # whsec_<base64>: sign every callback per Standard Webhooks, as the official API does once
    # its operator creates a secret (kling.signing); the callback_signatures knob can spoil it.
    webhook_secret: str | None = field(default=None, repr=False)
    public_url: str | None = None
    bytes_per_second: int | None = None
    video_format: str = "auto"
    expire_after: float = VIDEO_LIFETIME_SECONDS
    faults: Mapping[str, Any] = field(default_factory=dict)
    seed_videos: tuple[float, ...] = ()
    # Seeds the draws of the fault knobs (task_seconds, callbacks.drop): two gateways with the
    # same seed draw the same sequence, e.g. the same task durations for a benchmark's arms.
    random_seed: int | None = None

    def __post_init__(self) -> None:
        if not self.delay >= 0:
            raise ValueError("delay must be >= 0 seconds")
        if self.bytes_per_second is not None and self.bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0")
        if self.video_format not in VIDEO_FORMATS:
            raise ValueError(f"video_format must be one of {', '.join(VIDEO_FORMATS)}")
        if self.video_format == "mp4" and not encoder_available():
            raise ValueError(
                "video_format mp4 needs PyAV: pip install 'kling-chain[demo]' "
                "(or choose the random video format)"
            )
        if not self.expire_after > 0:
            raise ValueError("expire_after must be > 0 seconds")
        if bool(self.access_key) != bool(self.secret_key):
            raise ValueError("access_key and secret_key go together: give both or neither")
        if self.webhook_secret is not None and not is_webhook_secret(self.webhook_secret):
            raise ValueError("webhook_secret must be whsec_ followed by standard base64")
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        if any(not duration > 0 for duration in self.seed_videos):
            raise ValueError("seeded video durations must be > 0")
        self.initial_faults()  # raises FaultsError (a ValueError) on a bad knob

    def initial_faults(self) -> Faults:
        return Faults().merged(self.faults)

    def content_format(self) -> str:
        """The format the files are served in: ``"mp4"`` or ``"random"``."""
        if self.video_format != "auto":
            return self.video_format
        if self.bytes_per_second is None and encoder_available():
            return "mp4"
        return "random"

    def random_bytes_per_second(self) -> int:
        """The size per second of video of random content."""
        return self.bytes_per_second or DEFAULT_BYTES_PER_SECOND


def is_webhook_secret(secret: str) -> bool:
    """Whether ``secret`` is ``whsec_`` and standard base64 of at least one byte."""
    encoded = secret.removeprefix("whsec_")
    if encoded == secret or not encoded:
        return False
    try:
        return bool(base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True))
    except (binascii.Error, ValueError):
        return False
