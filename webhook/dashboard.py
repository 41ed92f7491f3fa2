"""The operator's dashboard: its static page, and links to archived files for its player.

The page (``/``) and its assets (``/static/...``) are served without the API token: they hold
no data. The script asks the token of the user once, keeps it in the browser session
(``sessionStorage``) and sends it as a bearer header to the API for every datum; no cookie is
ever set, so a cross-site request carries no credential.

A ``<video>`` element cannot send a header, so ``GET /archive/{video_id}/url`` (behind the
token) answers a short-lived link to the archived file: with S3 storage a presigned GET URL;
with local storage ``/files/{video_id}?expires=..&sig=..``, signed with a key derived from
``CALLBACK_SECRET`` (``worker.core.tokens.sign_file``) and served by this process with byte
ranges, so the player can seek.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from worker.core import tokens
from worker.core.videos import SAFE_ID, VideoState
from worker.settings import Settings
from worker.state.videos import Videos
from worker.storage import Storage

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
"""The only files under ``/static/``: nothing else in the directory is ever served."""

LINK_SECONDS = 15 * 60
"""How long a link to an archived file stays good."""


def content_security_policy(media: tuple[str, ...] = ()) -> str:
    """The page's policy: its own script and styles only (no inline script), data only from
    this origin, videos from here and ``media`` (the S3 endpoint), and no framing."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            " ".join(["media-src 'self'", *media]),
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def s3_media_origins(settings: Settings) -> tuple[str, ...]:
    """Where presigned links point, for the page's ``media-src``: the endpoint, or AWS."""
    if not settings.archive_url or not settings.archive_url.startswith("s3://"):
        return ()
    if settings.s3_endpoint_url is not None:
        parts = urlsplit(str(settings.s3_endpoint_url))
        return (f"{parts.scheme}://{parts.netloc}",)
    return ("https://*.amazonaws.com",)


def security_headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


class Dashboard:
    def __init__(
        self,
        settings: Settings,
        videos: Videos,
        secret: bytes,
        *,
        storage: Storage | None = None,
        presigner: Any = None,
    ) -> None:
        self.settings = settings
        self.videos = videos
        self.secret = secret
        self._storage = storage
        self._presigner = presigner
        self.headers = security_headers(content_security_policy(s3_media_origins(settings)))

    @property
    def storage(self) -> Storage:
        """The archive's storage, opened on first use (boto3 loads only for S3)."""
        if self._storage is None:
            self._storage = self.settings.storage()
        return self._storage

    # -- the page ------------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        return FileResponse(
            STATIC / "index.html", media_type="text/html; charset=utf-8", headers=self.headers
        )

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return JSONResponse({"error": "no such file"}, status_code=404)
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers=self.headers)

    # -- archived files ------------------------------------------------------------------------
    async def video_url(self, request: Request) -> Response:
        """A short-lived link to an archived video that a ``<video>`` element can load."""
        video_id = request.path_params["video_id"]
        record = (
            await run_in_threadpool(self.videos.get, video_id) if SAFE_ID.match(video_id) else None
        )
        if record is None:
            return _error(404, f"no video {video_id!r} in the archive's manifest")
        if record.state is not VideoState.ARCHIVED or not record.location:
            return _error(
                404,
                f"video {video_id} is {record.state.value}, not archived: only an archived "
                "video has a file to play",
            )
        expires = int(time.time()) + LINK_SECONDS
        if record.location.startswith("s3://"):
            url = await run_in_threadpool(self._presigned, record.location)
        else:
            sig = tokens.sign_file(self.secret, video_id, expires)
            url = f"/files/{video_id}?{urlencode({'expires': expires, 'sig': sig})}"
        return JSONResponse({"url": url, "expires_at": expires})

    def _presigned(self, location: str) -> str:
        bucket, _, key = location.removeprefix("s3://").partition("/")
        url: str = self.presigner.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=LINK_SECONDS
        )
        return url

    @property
    def presigner(self) -> Any:
        """A boto3 S3 client that signs links with Signature Version 4 (what AWS regions
        since 2014, R2 and MinIO accept), with boto3's usual credentials, built on first use."""
        if self._presigner is None:
            import boto3  # loads only for S3
            from botocore.config import Config

            endpoint = self.settings.s3_endpoint_url
            # A session of its own: credentials read now, not whatever the process's default
            # session resolved first.
            self._presigner = boto3.session.Session().client(
                "s3",
                endpoint_url=str(endpoint) if endpoint else None,
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"} if endpoint else {},
                ),
            )
        return self._presigner

    async def video_file(self, request: Request) -> Response:
        """An archived file for a signed link (no bearer: the signature is the credential)."""
        video_id = request.path_params["video_id"]
        q = request.query_params
        try:
            expires = int(q.get("expires", ""))
        except ValueError:
            return _error(403, "this link is not valid: ask the dashboard for a new one")
        if not SAFE_ID.match(video_id) or not tokens.verify_file(
            self.secret, video_id, expires, q.get("sig", ""), time.time()
        ):
            return _error(403, "this link is not valid or has expired: ask for a new one")
        path = await run_in_threadpool(self._local_file, video_id)
        if path is None:
            return _error(404, f"video {video_id} has no archived file here")
        return FileResponse(
            path,
            media_type="video/mp4",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"},
        )

    def _local_file(self, video_id: str) -> Path | None:
        """The archived file of ``video_id`` when it is a file in the local archive."""
        from worker.storage.local import LocalStorage

        record = self.videos.get(video_id)
        storage = self.storage
        if record is None or record.state is not VideoState.ARCHIVED or not record.location:
            return None
        if not isinstance(storage, LocalStorage):
            return None
        expected = storage.directory / f"{video_id}.mp4"
        if Path(record.location) != expected or not expected.is_file():
            log.warning("video %s: archived at %s, not in %s", video_id, record.location, expected)
            return None
        return expected


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)
