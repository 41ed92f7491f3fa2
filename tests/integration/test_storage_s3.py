"""S3Storage against moto's S3-compatible server on a loopback port (never AWS).

Parts are 5 MiB, S3's minimum, so a few parts make a multipart object of some 16 MiB.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from typing import TYPE_CHECKING, Any

import pytest

from worker.storage import Upload, open_storage
from worker.storage.errors import ChecksumMismatch, StoragePermanent
from worker.storage.s3 import MIN_PART_SIZE, S3Storage, S3Upload

if TYPE_CHECKING:
    from pathlib import Path

    from mypy_boto3_s3 import S3Client

MB = 1024 * 1024
PART = MIN_PART_SIZE
BIG = random.Random(7).randbytes(3 * PART + 123_457)  # three full parts and a tail
BIG_SHA256 = hashlib.sha256(BIG).hexdigest()


@pytest.fixture
def storage(s3: S3Client, bucket: str) -> S3Storage:
    return S3Storage(bucket, "archive", s3, part_size=PART)


def write_in_pieces(upload: Upload, data: bytes, piece: int = MB) -> None:
    for start in range(0, len(data), piece):
        upload.write(data[start : start + piece])


def fetch(s3: S3Client, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(s3: S3Client, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def pending(s3: S3Client, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def exists(s3: S3Client, bucket: str, key: str) -> bool:
    return key in keys(s3, bucket)


# -- commit ------------------------------------------------------------------------------------


def test_an_object_of_several_parts_arrives_byte_identical(
    s3: S3Client, bucket: str, storage: S3Storage
) -> None:
    # Given an upload fed 1 MiB at a time
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, BIG)
    assert upload.offset == len(BIG)

    # When it is committed
    location = upload.commit(size=len(BIG))

    # Then the object is the same bytes, made of 4 parts, and no upload is left open
    assert location == f"s3://{bucket}/archive/vid_1.mp4"
    assert upload.sha256 == BIG_SHA256
    assert hashlib.sha256(fetch(s3, bucket, "archive/vid_1.mp4")).hexdigest() == BIG_SHA256
    head = s3.head_object(Bucket=bucket, Key="archive/vid_1.mp4", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(BIG)
    assert head["ETag"].strip('"').endswith("-4")
    assert head["ContentType"] == "video/mp4"
    digests = b"".join(hashlib.sha256(BIG[i : i + PART]).digest() for i in range(0, len(BIG), PART))
    composite = base64.b64encode(hashlib.sha256(digests).digest()).decode()
    assert head["ChecksumSHA256"].split("-")[0] == composite
    assert pending(s3, bucket) == []
    assert keys(s3, bucket) == ["archive/vid_1.mp4"]


def test_the_object_is_invisible_until_the_commit(
    s3: S3Client, bucket: str, storage: S3Storage
) -> None:
    # Given an older copy under the key, and a new upload two parts in
    s3.put_object(Bucket=bucket, Key="archive/vid_1.mp4", Body=b"older copy")
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, BIG[: 2 * PART + MB])
    assert pending(s3, bucket) == ["archive/vid_1.mp4"]

    # Then readers still see the older copy, and nothing else
    assert keys(s3, bucket) == ["archive/vid_1.mp4"]
    assert fetch(s3, bucket, "archive/vid_1.mp4") == b"older copy"
    assert upload.offset == 2 * PART + MB

    # When the rest arrives and it is committed, the new object replaces the old at once
    write_in_pieces(upload, BIG[2 * PART + MB :])
    upload.commit(size=len(BIG))
    assert fetch(s3, bucket, "archive/vid_1.mp4") == BIG


def test_a_new_key_does_not_exist_during_the_upload(
    s3: S3Client, bucket: str, storage: S3Storage
) -> None:
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, BIG[: PART + 1])

    assert not exists(s3, bucket, "archive/vid_1.mp4")
    assert keys(s3, bucket) == []
    with pytest.raises(s3.exceptions.ClientError, match="404"):
        s3.head_object(Bucket=bucket, Key="archive/vid_1.mp4")
    upload.abort()


def test_a_small_object_is_one_put_with_its_sha256(
    s3: S3Client, bucket: str, storage: S3Storage
) -> None:
    data = b"a short video" * 1000
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, data, piece=1000)
    assert pending(s3, bucket) == []  # nothing started before a full part
    assert keys(s3, bucket) == []

    upload.commit(size=len(data))

    assert fetch(s3, bucket, "archive/vid_1.mp4") == data
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    head = s3.head_object(Bucket=bucket, Key="archive/vid_1.mp4")
    assert head["Metadata"] == {"sha256": hashlib.sha256(data).hexdigest()}
    assert pending(s3, bucket) == []


def test_exactly_one_part(s3: S3Client, bucket: str, storage: S3Storage) -> None:
    data = BIG[:PART]
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, data)

    upload.commit(size=len(data))

    assert fetch(s3, bucket, "archive/vid_1.mp4") == data
    assert upload.sha256 == hashlib.sha256(data).hexdigest()


def test_an_empty_object(s3: S3Client, bucket: str, storage: S3Storage) -> None:
    upload = storage.open("vid_1.mp4")

    upload.commit(size=0)

    assert fetch(s3, bucket, "archive/vid_1.mp4") == b""


# -- abort, rewind, failures -------------------------------------------------------------------


def test_abort_leaves_no_object_and_no_open_upload(
    s3: S3Client, bucket: str, storage: S3Storage
) -> None:
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, BIG[: 2 * PART + 10])
    assert pending(s3, bucket) == ["archive/vid_1.mp4"]

    upload.abort()
    upload.abort()

    assert pending(s3, bucket) == []
    assert keys(s3, bucket) == []
    with pytest.raises(RuntimeError, match="aborted"):
        upload.write(b"more")


def test_rewind_mid_way_then_complete(s3: S3Client, bucket: str, storage: S3Storage) -> None:
    # Given two parts of a body that turned out to be wrong (a server that restarted)
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, bytes(2 * PART + 5))
    assert isinstance(upload, S3Upload)
    first = upload.upload_id
    assert first is not None

    # When the upload rewinds, its multipart upload is aborted and its hash starts over
    upload.rewind()
    assert (upload.offset, upload.upload_id) == (0, None)
    assert upload.sha256 == hashlib.sha256(b"").hexdigest()
    assert pending(s3, bucket) == []

    # And the right body follows and is committed
    write_in_pieces(upload, BIG)
    assert upload.upload_id not in (None, first)
    upload.commit(size=len(BIG))

    # Then the object is the right body only, and no upload is left open
    assert fetch(s3, bucket, "archive/vid_1.mp4") == BIG
    assert upload.sha256 == BIG_SHA256
    assert pending(s3, bucket) == []


@pytest.mark.parametrize("size", [len(BIG) - 1, len(BIG) + 1])
def test_commit_with_the_wrong_size_leaves_nothing(
    s3: S3Client, bucket: str, storage: S3Storage, size: int
) -> None:
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, BIG)

    with pytest.raises(ChecksumMismatch, match="were written"):
        upload.commit(size=size)

    assert keys(s3, bucket) == []
    assert pending(s3, bucket) == []


@pytest.mark.parametrize(("field", "value"), [("ContentLength", 1), ("ChecksumSHA256", "AAAA-4")])
def test_an_object_that_is_not_what_was_sent_is_deleted(
    s3: S3Client,
    bucket: str,
    storage: S3Storage,
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    value: Any,
) -> None:
    # Given a server that reports something else than what was sent
    head_object = s3.head_object

    def lying_head(**kwargs: Any) -> Any:
        head = dict(head_object(**kwargs))
        head[field] = value
        return head

    monkeypatch.setattr(s3, "head_object", lying_head)
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, BIG)

    # Then the commit fails and the bad object is gone
    with pytest.raises(ChecksumMismatch, match="deleted it"):
        upload.commit(size=len(BIG))
    assert keys(s3, bucket) == []
    assert pending(s3, bucket) == []


def test_a_missing_bucket_is_permanent(s3: S3Client) -> None:
    storage = S3Storage("no-such-bucket-here", "", s3, part_size=PART)
    upload = storage.open("vid_1.mp4")

    with pytest.raises(StoragePermanent, match="NoSuchBucket"):
        write_in_pieces(upload, BIG[: PART + 1])
    upload.abort()


@pytest.mark.parametrize("part_size", [PART - 1, 0, 5 * 1024**3 + 1])
def test_part_size_outside_s3s_limits_is_refused(s3: S3Client, part_size: int) -> None:
    with pytest.raises(ValueError, match="part size must be between"):
        S3Storage("bucket", "", s3, part_size=part_size)


# -- open_storage ------------------------------------------------------------------------------


def test_open_storage_puts_keys_under_the_prefix(s3: S3Client, bucket: str, tmp_path: Path) -> None:
    storage = open_storage(
        archive_url=f"s3://{bucket}/some/prefix", archive_dir=tmp_path, client=s3, part_size=PART
    )
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, BIG)

    location = upload.commit(size=len(BIG))
    sidecar = storage.write_json("vid_1.json", {"sha256": upload.sha256, "bytes": len(BIG)})

    assert location == f"s3://{bucket}/some/prefix/vid_1.mp4"
    assert sidecar == f"s3://{bucket}/some/prefix/vid_1.json"
    assert keys(s3, bucket) == ["some/prefix/vid_1.json", "some/prefix/vid_1.mp4"]
    assert json.loads(fetch(s3, bucket, "some/prefix/vid_1.json")) == {
        "sha256": BIG_SHA256,
        "bytes": len(BIG),
    }
    assert exists(s3, bucket, "some/prefix/vid_1.mp4")
    assert not exists(s3, bucket, "some/prefix/vid_2.mp4")
    assert list(tmp_path.iterdir()) == []


def test_open_storage_makes_its_own_client_from_the_environment(
    s3: S3Client, bucket: str, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    storage = open_storage(
        archive_url=f"s3://{bucket}", archive_dir=tmp_path, s3_endpoint_url=s3_endpoint
    )
    location = storage.write_json("vid_1.json", {"ok": True})

    assert location == f"s3://{bucket}/vid_1.json"
    assert keys(s3, bucket) == ["vid_1.json"]


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("s3:/bucket/prefix", "bucket name"),
        ("s3://bucket:9000/prefix", "S3_ENDPOINT_URL"),
        ("minio://bucket/prefix", "s3://bucket/prefix"),
        ("bucket/prefix", "s3://bucket/prefix"),
    ],
)
def test_open_storage_explains_a_bad_url(
    s3: S3Client, tmp_path: Path, url: str, advice: str
) -> None:
    with pytest.raises(ValueError, match="ARCHIVE_URL") as caught:
        open_storage(archive_url=url, archive_dir=tmp_path, client=s3)
    assert advice in str(caught.value)


# -- size and delete (ARCHIVE_KEEP=final) --------------------------------------------------------


def test_size_location_and_delete(s3: S3Client, bucket: str, storage: S3Storage) -> None:
    upload = storage.open("v1.mp4")
    write_in_pieces(upload, BIG)  # a multipart object
    where = upload.commit(size=len(BIG))
    storage.write_json("v1.json", {"video_id": "v1"})
    assert storage.location("v1.mp4") == where == f"s3://{bucket}/archive/v1.mp4"
    assert storage.size("v1.mp4") == len(BIG)
    assert storage.size("v2.mp4") is None
    assert storage.delete("v1.mp4") is True
    assert storage.size("v1.mp4") is None
    assert keys(s3, bucket) == ["archive/v1.json"]  # only what was named
    # A repeat, or a name never stored, changes nothing
    assert storage.delete("v1.mp4") is False
    assert storage.delete("never.mp4") is False
    assert keys(s3, bucket) == ["archive/v1.json"]


def test_in_a_missing_bucket_nothing_is_there_to_delete(s3: S3Client) -> None:
    # HEAD answers a bare 404 for a missing bucket as for a missing key: the final video of a
    # chain then reads as missing, and a prune deletes nothing.
    storage = S3Storage("no-such-bucket-here", "", s3)
    assert storage.size("v1.mp4") is None
    assert storage.delete("v1.mp4") is False
