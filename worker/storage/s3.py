"""Archive storage in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2) through boto3.

An upload is an S3 multipart upload fed as the bytes arrive: it holds at most one part
(``part_size``, default 8 MiB) in memory, so any video size costs the same memory. The
multipart upload starts with the first full part; an object smaller than one part is sent
with a single ``put_object`` at commit. S3 shows an object only when its upload completes,
so nothing partial is ever visible under the final key.

Checksums. Every part carries its SHA-256 (``ChecksumSHA256``); S3 rejects a part whose
bytes do not match. The completed object then carries S3's checksum of the part checksums
(SHA-256 over the concatenated part digests), which ``commit`` recomputes and compares with
``head_object(ChecksumMode="ENABLED")``, together with ``ContentLength``. A single
``put_object`` carries the whole file's SHA-256 (verified by S3) and ``Metadata={"sha256":
...}``. A multipart object cannot carry the whole file's sha256 in its metadata: metadata is
fixed when the upload starts, before the last byte is known, and rewriting it afterwards
means copying the whole object. The whole file's sha256 is the upload's ``sha256`` (of the
bytes that were sent), and belongs in the sidecar JSON the caller writes (``write_json``).
A server that stores no checksums (some S3-compatible ones) is checked on size alone.

Errors of the service become ``StorageRetryable`` or ``StoragePermanent`` (``storage_error``).
``abort`` never raises: if S3 cannot be reached to abort, the parts stay until a bucket
lifecycle rule (``AbortIncompleteMultipartUpload``) removes them; keep one on the bucket.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import mimetypes
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from worker.storage import DEFAULT_PART_SIZE, check_name
from worker.storage.errors import (
    ChecksumMismatch,
    StorageError,
    StoragePermanent,
    StorageRetryable,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = [
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "S3Storage",
    "S3Upload",
    "composite_sha256",
    "s3_client",
    "storage_error",
]

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's smallest part, except the last."""
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000

RETRYABLE_CODES = frozenset(
    {
        "BadDigest",
        "ExpiredToken",
        "IncompleteBody",
        "InvalidPart",
        "NoSuchUpload",
        "RequestTimeTooSkewed",
        "RequestTimeout",
        "SlowDown",
        "TokenRefreshRequired",
        "XAmzContentSHA256Mismatch",
    }
)
"""Client-error codes that a later attempt can get past (a part lost, a token to refresh)."""


# -- pure helpers ------------------------------------------------------------------------------


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def composite_sha256(part_digests: list[bytes]) -> str:
    """S3's checksum of a multipart object: base64 SHA-256 of the concatenated part digests."""
    return _b64(hashlib.sha256(b"".join(part_digests)).digest())


def storage_error(exc: Exception, doing: str) -> StorageError:
    """The storage error for a boto3 failure while ``doing`` something (message: what and why).

    Permanent: credentials missing or refused, no such bucket, access denied, a request S3
    calls invalid (other 4xx). Retryable: everything else (network, timeouts, 5xx,
    throttling, a lost upload or part, a checksum S3 computed differently).
    """
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = f"{doing}: {code or status} {error.get('Message', '')}".rstrip()
        if code in RETRYABLE_CODES or status in (None, 408, 409, 429) or status >= 500:
            return StorageRetryable(message)
        return StoragePermanent(message)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ParamValidationError):
        return StoragePermanent(f"{doing}: {exc}")
    return StorageRetryable(f"{doing}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _s3_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise storage_error(exc, doing) from exc


def _is_not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def s3_client(
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
) -> S3Client:
    """A boto3 S3 client for AWS (``endpoint_url`` None) or an S3-compatible server.

    Credentials and region not given come from boto3's usual places (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles, instance roles). With an
    endpoint URL (MinIO, R2) buckets are addressed by path, which every such server accepts.
    boto3 computes no checksums of its own: this module sends SHA-256 ones explicitly.
    """
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"S3_ENDPOINT_URL must be http(s)://host[:port], got {endpoint_url!r}")
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        s3={"addressing_style": "path"} if endpoint_url else {},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region_name,
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        config=config,
    )
    return client


# -- the upload --------------------------------------------------------------------------------


class S3Upload:
    """One object on its way into the bucket: a multipart upload fed a part at a time."""

    def __init__(self, client: S3Client, bucket: str, key: str, *, part_size: int) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._content_type = _content_type(key)
        self._state = "open"
        self._reset()

    def _reset(self) -> None:
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._digests: list[bytes] = []
        self._sent = 0  # bytes in uploaded parts
        self._buffer = bytearray()
        self._hasher = hashlib.sha256()

    @property
    def location(self) -> str:
        return f"s3://{self._bucket}/{self._key}"

    @property
    def upload_id(self) -> str | None:
        """The open multipart upload, if one was started."""
        return self._upload_id

    @property
    def offset(self) -> int:
        return self._sent + len(self._buffer)

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"upload of {self.location} is {self._state}")

    def write(self, chunk: bytes) -> None:
        self._check_open()
        self._hasher.update(chunk)
        view = memoryview(chunk)
        while view:
            room = self._part_size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == self._part_size:
                self._send_part()

    def _send_part(self) -> None:
        """Upload the buffer as the next part, starting the multipart upload if need be."""
        if len(self._parts) >= MAX_PARTS:
            raise StoragePermanent(
                f"{self.location}: more than {MAX_PARTS} parts of {self._part_size} bytes; "
                "raise the part size"
            )
        if self._upload_id is None:
            with _s3_errors(f"starting the upload of {self.location}"):
                started = self._client.create_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    ChecksumAlgorithm="SHA256",
                    ContentType=self._content_type,
                )
            self._upload_id = started["UploadId"]
        body, self._buffer = bytes(self._buffer), bytearray()
        digest = hashlib.sha256(body).digest()
        number = len(self._parts) + 1
        with _s3_errors(f"uploading part {number} of {self.location}"):
            reply = self._client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                ChecksumSHA256=_b64(digest),
            )
        echoed = reply.get("ChecksumSHA256")
        if echoed and echoed != _b64(digest):
            raise ChecksumMismatch(
                f"{self.location}: part {number} stored with checksum {echoed}, sent {_b64(digest)}"
            )
        self._parts.append(
            {"PartNumber": number, "ETag": reply["ETag"], "ChecksumSHA256": _b64(digest)}
        )
        self._digests.append(digest)
        self._sent += len(body)

    def rewind(self) -> None:
        self._check_open()
        self._abort_multipart()
        self._reset()

    def commit(self, *, size: int) -> str:
        self._check_open()
        try:
            if size != self.offset:
                raise ChecksumMismatch(
                    f"{self.location}: asked to commit {size} bytes, "
                    f"but {self.offset} bytes were written"
                )
            expected = self._complete()
            self._verify(size, expected)
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self._buffer = bytearray()
        return self.location

    def _complete(self) -> str:
        """Make the object visible; return the checksum S3 should report for it."""
        if self._upload_id is None:
            # No part went out: the buffer is the whole object, and its hash is the upload's.
            digest = self._hasher.digest()
            with _s3_errors(f"writing {self.location}"):
                self._client.put_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    Body=bytes(self._buffer),
                    ChecksumSHA256=_b64(digest),
                    ContentType=self._content_type,
                    Metadata={"sha256": digest.hex()},
                )
            return _b64(digest)
        if self._buffer:
            self._send_part()  # the last part may be shorter than the minimum
        with _s3_errors(f"completing the upload of {self.location}"):
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._upload_id = None  # completed: nothing left to abort
        return composite_sha256(self._digests)

    def _verify(self, size: int, checksum: str) -> None:
        """Check the visible object; delete it if it is not what was sent."""
        with _s3_errors(f"checking {self.location}"):
            head = self._client.head_object(
                Bucket=self._bucket, Key=self._key, ChecksumMode="ENABLED"
            )
        stored = head.get("ChecksumSHA256")
        problem = None
        if head["ContentLength"] != size:
            problem = f"holds {head['ContentLength']} bytes, sent {size}"
        elif stored and stored.split("-", 1)[0] != checksum:
            problem = f"has checksum {stored}, expected {checksum}"
        if problem is None:
            return
        with _s3_errors(f"deleting the bad object {self.location}"):
            self._client.delete_object(Bucket=self._bucket, Key=self._key)
        raise ChecksumMismatch(f"{self.location} {problem}; deleted it")

    def _abort_multipart(self) -> None:
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=upload_id
            )
        except ClientError as exc:
            if _is_not_found(exc):
                return  # already gone
            log.warning("could not abort upload %s of %s: %s", upload_id, self.location, exc)
        except BotoCoreError as exc:
            log.warning("could not abort upload %s of %s: %s", upload_id, self.location, exc)

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._abort_multipart()
        self._reset()


# -- the storage -------------------------------------------------------------------------------


class S3Storage:
    """Objects ``{prefix}{name}`` in ``bucket``."""

    def __init__(
        self, bucket: str, prefix: str, client: S3Client, *, part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(
                f"S3 part size must be between {MIN_PART_SIZE} (5 MiB) and {MAX_PART_SIZE} "
                f"(5 GiB) bytes, S3's limits for a part; got {part_size}"
            )
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.part_size = part_size
        self.client = client

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.prefix}')"

    def key(self, name: str) -> str:
        return f"{self.prefix}{check_name(name)}"

    def open(self, name: str) -> S3Upload:
        return S3Upload(self.client, self.bucket, self.key(name), part_size=self.part_size)

    def write_json(self, name: str, data: Mapping[str, Any]) -> str:
        body = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        key = self.key(name)
        location = f"s3://{self.bucket}/{key}"
        with _s3_errors(f"writing {location}"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ChecksumSHA256=_b64(hashlib.sha256(body).digest()),
                ContentType="application/json",
            )
        return location

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def size(self, name: str) -> int | None:
        key = self.key(name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise storage_error(exc, f"looking up {self.location(name)}") from exc
        except BotoCoreError as exc:
            raise storage_error(exc, f"looking up {self.location(name)}") from exc
        return head["ContentLength"]

    def delete(self, name: str) -> bool:
        """Delete the object. S3 answers a delete of a missing key with success too, so it is
        looked up first to tell the two apart (a bucket with versioning keeps a version)."""
        if self.size(name) is None:
            return False
        with _s3_errors(f"deleting {self.location(name)}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))
        return True
