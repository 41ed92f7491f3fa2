"""Settings of the fake gateway, read once and checked when made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kling.fake.content import DEFAULT_BYTES_PER_SECOND
from kling.fake.faults import Faults
from kling.models import VIDEO_LIFETIME_SECONDS


@dataclass(frozen=True)
class FakeConfig:
    """How the fake gateway behaves. Secrets stay out of ``repr``.

    Auth: ``api_key`` (static bearer, gateway style) and/or ``access_key`` + ``secret_key``
    (JWT, official style); with neither, requests need no auth.
    """

    delay: float = 3.0
    api_key: str | None = field(default=None, repr=False)
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    public_url: str | None = None
    bytes_per_second: int = DEFAULT_BYTES_PER_SECOND
    expire_after: float = VIDEO_LIFETIME_SECONDS
    faults: Mapping[str, Any] = field(default_factory=dict)
    seed_videos: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.delay >= 0:
            raise ValueError("delay must be >= 0 seconds")
        if self.bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0")
        if not self.expire_after > 0:
            raise ValueError("expire_after must be > 0 seconds")
        if bool(self.access_key) != bool(self.secret_key):
            raise ValueError("access_key and secret_key go together: give both or neither")
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        if any(not duration > 0 for duration in self.seed_videos):
            raise ValueError("seeded video durations must be > 0")
        self.initial_faults()  # raises FaultsError (a ValueError) on a bad knob

    def initial_faults(self) -> Faults:
        return Faults().merged(self.faults)
