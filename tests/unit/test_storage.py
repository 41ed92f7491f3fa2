"""The pure parts of worker.storage: reading ARCHIVE_URL, and sorting S3 errors."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from worker.storage import S3Location, parse_archive_url
from worker.storage.errors import StoragePermanent, StorageRetryable
from worker.storage.s3 import composite_sha256, s3_client, storage_error


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("s3://archive-bucket", S3Location("archive-bucket", "")),
        ("s3://archive-bucket/", S3Location("archive-bucket", "")),
        ("s3://archive-bucket/videos", S3Location("archive-bucket", "videos/")),
        ("s3://archive-bucket/some/prefix/", S3Location("archive-bucket", "some/prefix/")),
        ("S3://my.bucket.example/a%20b", S3Location("my.bucket.example", "a b/")),
        ("file:///srv/archive", Path("/srv/archive")),
        ("file://localhost/srv/archive", Path("/srv/archive")),
    ],
)
def test_parse_archive_url(url: str, parsed: Path | S3Location) -> None:
    assert parse_archive_url(url) == parsed


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("/srv/archive", "file:///srv/archive"),
        ("./archive", "s3://bucket/prefix or file:///absolute/dir"),
        ("gs://bucket/prefix", "s3://bucket/prefix"),
        ("https://s3.amazonaws.com/bucket", "s3://bucket/prefix"),
        ("s3://", "bucket name"),
        ("s3:///prefix", "bucket name"),
        ("s3:/bucket/prefix", "bucket name"),
        ("s3://ab", "bucket name"),
        ("s3://bucket_with/slash//double", "empty, '.' or '..'"),
        ("s3://bucket/a/../b", "empty, '.' or '..'"),
        ("s3://bucket:9000/prefix", "S3_ENDPOINT_URL"),
        ("s3://bucket/prefix?region=eu", "query"),
        ("file://server/share", "three slashes"),
        ("file:relative/dir", "absolute path"),
        ("s3://[::1/x", "not a valid URL"),
    ],
)
def test_bad_archive_urls_say_what_to_write(url: str, advice: str) -> None:
    with pytest.raises(ValueError, match="ARCHIVE_URL") as caught:
        parse_archive_url(url)
    assert advice in str(caught.value)


def test_credentials_in_the_url_are_refused_without_being_repeated() -> None:
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID") as caught:
        parse_archive_url("s3://AKIAEXAMPLE:topsecret@bucket/prefix")
    assert "topsecret" not in str(caught.value)
    assert "AKIAEXAMPLE" not in str(caught.value)


@pytest.mark.parametrize("endpoint", ["minio:9000", "ftp://minio", "http://"])
def test_bad_endpoint_urls_are_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="S3_ENDPOINT_URL"):
        s3_client(endpoint_url=endpoint)


def test_composite_sha256_is_the_hash_of_the_part_hashes() -> None:
    parts = [b"a" * 10, b"b" * 3]
    digests = [hashlib.sha256(p).digest() for p in parts]

    expected = base64.b64encode(hashlib.sha256(digests[0] + digests[1]).digest()).decode()

    assert composite_sha256(digests) == expected


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "words"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "UploadPart")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_client_error("AccessDenied", 403), StoragePermanent),
        (_client_error("NoSuchBucket", 404), StoragePermanent),
        (_client_error("InvalidAccessKeyId", 403), StoragePermanent),
        (_client_error("SignatureDoesNotMatch", 403), StoragePermanent),
        (_client_error("EntityTooSmall", 400), StoragePermanent),
        (_client_error("NoSuchUpload", 404), StorageRetryable),
        (_client_error("BadDigest", 400), StorageRetryable),
        (_client_error("RequestTimeout", 400), StorageRetryable),
        (_client_error("ExpiredToken", 400), StorageRetryable),
        (_client_error("SlowDown", 503), StorageRetryable),
        (_client_error("InternalError", 500), StorageRetryable),
        (_client_error("TooManyRequests", 429), StorageRetryable),
        (NoCredentialsError(), StoragePermanent),
        (EndpointConnectionError(endpoint_url="http://minio:9000"), StorageRetryable),
        (ReadTimeoutError(endpoint_url="http://minio:9000"), StorageRetryable),
    ],
)
def test_storage_error_sorts_retryable_from_permanent(
    exc: Exception, kind: type[Exception]
) -> None:
    error = storage_error(exc, "uploading part 3 of s3://b/k")

    assert type(error) is kind
    assert str(error).startswith("uploading part 3 of s3://b/k: ")
