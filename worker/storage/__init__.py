"""Where archived videos go: one small interface, one module per backend.

- ``worker.storage.local.LocalStorage``: files in a directory (the default, ``ARCHIVE_DIR``);
- ``worker.storage.s3.S3Storage``: objects in an S3-compatible bucket
  (``ARCHIVE_URL=s3://bucket/prefix``; AWS S3, MinIO, Cloudflare R2 with an endpoint URL).

A ``Storage`` opens an ``Upload`` per object. The caller writes the bytes in order, may
``rewind`` to byte 0 (a server that cannot resume), and ends with ``commit`` (verified, then
visible under the final name in one step) or ``abort`` (nothing remains). A reader never sees
a partial object under its final name. The upload hashes what it holds (``sha256``), so the
caller hashes nothing itself. ``size`` and ``delete`` serve ``ARCHIVE_KEEP=final``, which
deletes the files a chain's final video supersedes. ``open_storage`` picks the backend from
the settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

__all__ = [
    "DEFAULT_PART_SIZE",
    "S3Location",
    "Storage",
    "Upload",
    "check_name",
    "open_storage",
    "parse_archive_url",
]

DEFAULT_PART_SIZE = 8 * 1024 * 1024
"""Bytes per multipart part: at least S3's 5 MiB minimum, and all the memory an upload holds."""


class Upload(Protocol):
    """One object being written, invisible until ``commit``."""

    @property
    def offset(self) -> int:
        """Bytes accepted so far: where a resumed download must continue."""
        ...

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the bytes accepted so far; after ``commit``, of the object."""
        ...

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""
        ...

    def rewind(self) -> None:
        """Discard everything written, and its hash; the next ``write`` is byte 0."""
        ...

    def commit(self, *, size: int) -> str:
        """Check that exactly ``size`` bytes were accepted (the caller's count of what it
        wrote), then make the object visible under its final name in one step; return its
        location ("/abs/path" or "s3://bucket/key"). On any failure nothing remains and the
        error propagates (``ChecksumMismatch`` for a size that does not match)."""
        ...

    def abort(self) -> None:
        """Discard the upload: no temp file, no open multipart upload. Safe to call again, and
        after ``commit`` (then it does nothing)."""
        ...


class Storage(Protocol):
    """A place for archived objects, addressed by plain file names ("vid_123.mp4")."""

    def open(self, name: str) -> Upload:
        """Start writing the object ``name``; what is there now stays until the commit."""
        ...

    def write_json(self, name: str, data: Mapping[str, Any]) -> str:
        """Write ``data`` as a JSON object ``name`` atomically; return its location."""
        ...

    def location(self, name: str) -> str:
        """Where the object ``name`` is kept: what ``commit`` and ``write_json`` return."""
        ...

    def size(self, name: str) -> int | None:
        """The bytes the object ``name`` holds now, or None when there is no such object."""
        ...

    def delete(self, name: str) -> bool:
        """Remove the object ``name``; False when there was none. Safe to repeat: deleting
        what is gone changes nothing."""
        ...


def check_name(name: str) -> str:
    """Return ``name`` if it is a plain file name; raise ValueError otherwise.

    No separators, nothing hidden (a leading "." is how temp files are named), no "..".
    """
    if not name or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"object name must be a plain file name, got {name!r}")
    if name.startswith(".") or ".." in name:
        raise ValueError(f"object name must not start with '.' or contain '..', got {name!r}")
    return name


# -- choosing a backend -----------------------------------------------------------------------

_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
_USAGE = "use s3://bucket/prefix or file:///absolute/dir, or leave it empty to use ARCHIVE_DIR"


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix ("" or ending in "/")."""

    bucket: str
    prefix: str


def _shown(url: str) -> str:
    """``url`` for an error message, with any credentials in it masked."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def parse_archive_url(url: str) -> Path | S3Location:
    """Where ``ARCHIVE_URL`` points: a local directory or a bucket and prefix.

    ``s3://bucket``, ``s3://bucket/some/prefix`` (keys ``some/prefix/NAME``), ``file:///abs/dir``.
    Anything else raises ValueError with a message that says what to write instead.
    """
    shown = _shown(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"ARCHIVE_URL {shown!r} is not a valid URL ({exc}); {_USAGE}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("s3", "file"):
        hint = f"; for a directory write file://{url}" if url.startswith("/") else ""
        raise ValueError(f"ARCHIVE_URL {shown!r} is not supported: {_USAGE}{hint}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"ARCHIVE_URL {shown!r} must not hold credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY instead"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"ARCHIVE_URL {shown!r} must not have a query or fragment; {_USAGE}")
    path = unquote(parts.path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"ARCHIVE_URL {shown!r} names host {parts.netloc!r}; a file URL must be "
                "file:///absolute/dir (three slashes)"
            )
        if not path.startswith("/"):
            raise ValueError(f"ARCHIVE_URL {shown!r} needs an absolute path: file:///abs/dir")
        return Path(path)
    if port is not None:
        raise ValueError(
            f"ARCHIVE_URL {shown!r} has a port; put the server in S3_ENDPOINT_URL "
            "(e.g. http://minio:9000) and keep ARCHIVE_URL=s3://bucket/prefix"
        )
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(
            f"ARCHIVE_URL {shown!r} needs a bucket name of 3 to 63 letters, digits, '.', '-' "
            f"or '_' right after s3:// (got {bucket!r}); {_USAGE}"
        )
    prefix = path.strip("/")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
        raise ValueError(
            f"ARCHIVE_URL {shown!r} has an empty, '.' or '..' segment in its prefix {prefix!r}"
        )
    return S3Location(bucket, f"{prefix}/" if prefix else "")


def open_storage(
    *,
    archive_url: str | None,
    archive_dir: Path,
    s3_endpoint_url: str | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    client: Any = None,
) -> Storage:
    """The storage the settings ask for.

    ``archive_url`` empty or None: ``LocalStorage(archive_dir)``. ``s3://bucket/prefix``:
    ``S3Storage`` with ``client``, or a new boto3 client for ``s3_endpoint_url`` (None: AWS)
    with boto3's usual credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``, profiles, instance roles). ``file:///abs/dir``: ``LocalStorage``.
    Raises ValueError for anything else.
    """
    # The backends are imported here, not at the top: boto3 loads only when S3 is used.
    from worker.storage.local import LocalStorage

    if not archive_url or not archive_url.strip():
        return LocalStorage(archive_dir)
    where = parse_archive_url(archive_url)
    if isinstance(where, Path):
        return LocalStorage(where)

    from worker.storage.s3 import S3Storage, s3_client

    if client is None:
        client = s3_client(endpoint_url=s3_endpoint_url)
    return S3Storage(where.bucket, where.prefix, client, part_size=part_size)
