"""LocalStorage: uploads that appear whole or not at all, their hash, name checks, atomic JSON."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from worker.storage import Upload, local, open_storage
from worker.storage.errors import ChecksumMismatch
from worker.storage.local import LocalStorage, write_json_atomic

DATA = bytes(range(256)) * 4096  # 1 MiB
DATA_SHA256 = hashlib.sha256(DATA).hexdigest()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def exists(storage: LocalStorage, name: str) -> bool:
    return (storage.directory / name).is_file()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "archive")


def write_in_pieces(upload: Upload, data: bytes, piece: int = 100_000) -> None:
    for start in range(0, len(data), piece):
        upload.write(data[start : start + piece])


# -- commit ------------------------------------------------------------------------------------


def test_commit_makes_the_file_appear_whole(storage: LocalStorage) -> None:
    # Given an upload with every byte written
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, DATA)
    assert upload.offset == len(DATA)

    # Then before the commit only a hidden temp file exists, not the target
    [temp] = listing(storage.directory)
    assert temp.startswith(".vid_1.mp4.")
    assert temp.endswith(".part")
    assert not exists(storage, "vid_1.mp4")

    # When it is committed
    location = upload.commit(size=len(DATA))

    # Then the file is there with the right bytes and hash, and nothing else
    assert location == str(storage.directory / "vid_1.mp4")
    assert Path(location).read_bytes() == DATA
    assert upload.sha256 == DATA_SHA256
    assert listing(storage.directory) == ["vid_1.mp4"]
    assert exists(storage, "vid_1.mp4")


def test_commit_replaces_an_older_file_only_at_the_end(storage: LocalStorage) -> None:
    storage.directory.mkdir()
    (storage.directory / "vid_1.mp4").write_bytes(b"older copy")
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, DATA)

    assert (storage.directory / "vid_1.mp4").read_bytes() == b"older copy"
    upload.commit(size=len(DATA))

    assert (storage.directory / "vid_1.mp4").read_bytes() == DATA
    assert listing(storage.directory) == ["vid_1.mp4"]


def test_commit_syncs_the_file_then_renames_then_syncs_the_directory(
    storage: LocalStorage, disk_events: list[str]
) -> None:
    upload = storage.open("vid_1.mp4")
    upload.write(b"abc")

    upload.commit(size=3)

    assert disk_events == ["fsync-file", "replace", "fsync-dir"]


def test_empty_object(storage: LocalStorage) -> None:
    upload = storage.open("empty.mp4")

    location = upload.commit(size=0)

    assert Path(location).read_bytes() == b""
    assert upload.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("size", [len(DATA) - 1, len(DATA) + 1, 0])
def test_commit_with_the_wrong_size_raises_and_leaves_nothing(
    storage: LocalStorage, size: int
) -> None:
    storage.directory.mkdir()
    (storage.directory / "vid_1.mp4").write_bytes(b"older copy")
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, DATA)

    with pytest.raises(ChecksumMismatch, match="were written"):
        upload.commit(size=size)

    assert listing(storage.directory) == ["vid_1.mp4"]
    assert (storage.directory / "vid_1.mp4").read_bytes() == b"older copy"


def test_a_failing_rename_leaves_nothing(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = storage.open("vid_1.mp4")
    upload.write(b"abc")

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr("worker.storage.local.os.replace", refuse)
    with pytest.raises(OSError, match="disk on fire"):
        upload.commit(size=3)

    assert listing(storage.directory) == []


# -- write-behind ------------------------------------------------------------------------------


@pytest.fixture
def hints(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The write-behind hints the uploads give from now on: (offset, length), each still given."""
    given: list[tuple[int, int]] = []
    advise = getattr(os, "posix_fadvise", None)

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        given.append((offset, length))
        if advise is not None:
            advise(fd, offset, length, advice)

    monkeypatch.setattr(local, "_ADVISE", spy)
    return given


def test_a_large_upload_hints_the_kernel_every_write_behind_bytes(
    storage: LocalStorage, hints: list[tuple[int, int]], disk_events: list[str]
) -> None:
    # Given 2.5 write-behind stretches written in pieces that do not line up with them
    data = DATA * (5 * local.WRITE_BEHIND // (2 * len(DATA)))
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, data, piece=300_000)

    # Then the kernel was told twice, each time about everything written so far
    assert len(hints) == 2
    assert all(offset == 0 for offset, _ in hints)
    assert [length // local.WRITE_BEHIND for _, length in hints] == [1, 2]

    # And the commit still syncs the file once, with every byte and the right hash
    upload.commit(size=len(data))
    assert disk_events == ["fsync-file", "replace", "fsync-dir"]
    assert (storage.directory / "vid_1.mp4").read_bytes() == data
    assert upload.sha256 == hashlib.sha256(data).hexdigest()


def test_a_small_upload_gives_no_hint(storage: LocalStorage, hints: list[tuple[int, int]]) -> None:
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, DATA)
    upload.commit(size=len(DATA))

    assert hints == []


def test_rewind_starts_the_write_behind_count_over(
    storage: LocalStorage, hints: list[tuple[int, int]]
) -> None:
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, b"x" * (local.WRITE_BEHIND - 1))
    upload.rewind()
    write_in_pieces(upload, b"y" * (local.WRITE_BEHIND - 1))
    assert hints == []

    upload.write(b"y")
    assert hints == [(0, local.WRITE_BEHIND)]
    upload.abort()


def test_without_posix_fadvise_uploads_work_the_same(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on macOS: no write-behind, the same file and hash
    monkeypatch.setattr(local, "_ADVISE", None)
    data = DATA * (local.WRITE_BEHIND // len(DATA) + 1)
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, data, piece=len(DATA))

    upload.commit(size=len(data))

    assert (storage.directory / "vid_1.mp4").read_bytes() == data
    assert upload.sha256 == hashlib.sha256(data).hexdigest()


# -- abort, rewind, misuse ---------------------------------------------------------------------


def test_abort_leaves_nothing_and_can_be_repeated(storage: LocalStorage) -> None:
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, DATA)

    upload.abort()
    upload.abort()

    assert listing(storage.directory) == []
    with pytest.raises(RuntimeError, match="aborted"):
        upload.write(b"more")
    with pytest.raises(RuntimeError, match="aborted"):
        upload.commit(size=len(DATA))


def test_an_exception_while_writing_then_abort_leaves_nothing(storage: LocalStorage) -> None:
    upload = storage.open("vid_1.mp4")

    def caller() -> None:
        try:
            upload.write(b"half a video")
            raise ConnectionError("the source went away")
        except BaseException:
            upload.abort()
            raise

    with pytest.raises(ConnectionError):
        caller()

    assert listing(storage.directory) == []


def test_abort_after_commit_keeps_the_file(storage: LocalStorage) -> None:
    upload = storage.open("vid_1.mp4")
    upload.write(b"abc")
    upload.commit(size=3)

    upload.abort()

    assert (storage.directory / "vid_1.mp4").read_bytes() == b"abc"
    with pytest.raises(RuntimeError, match="committed"):
        upload.commit(size=3)


def test_rewind_discards_what_was_written(storage: LocalStorage) -> None:
    upload = storage.open("vid_1.mp4")
    write_in_pieces(upload, b"x" * 300_000)

    upload.rewind()

    assert upload.offset == 0
    assert upload.sha256 == hashlib.sha256(b"").hexdigest()
    write_in_pieces(upload, DATA)
    assert upload.offset == len(DATA)
    upload.commit(size=len(DATA))
    assert (storage.directory / "vid_1.mp4").read_bytes() == DATA
    assert upload.sha256 == DATA_SHA256


def test_two_uploads_of_one_name_do_not_share_a_temp_file(storage: LocalStorage) -> None:
    first, second = storage.open("vid_1.mp4"), storage.open("vid_1.mp4")
    first.write(b"first")
    second.write(b"second")

    second.commit(size=6)
    first.abort()

    assert (storage.directory / "vid_1.mp4").read_bytes() == b"second"
    assert listing(storage.directory) == ["vid_1.mp4"]


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "a/b.mp4", "../b.mp4", "a\\b.mp4", ".hidden", ".", "..", "a..b", "x\0y", "/abs"],
)
def test_names_that_are_not_plain_file_names_are_refused(storage: LocalStorage, name: str) -> None:
    with pytest.raises(ValueError, match="object name"):
        storage.open(name)
    with pytest.raises(ValueError, match="object name"):
        storage.write_json(name, {})
    assert listing(storage.directory) == []


@pytest.mark.parametrize("name", ["vid_123.mp4", "vid-1.2.json", "a", "CjhDaWgU7G.mp4"])
def test_plain_names_are_accepted(storage: LocalStorage, name: str) -> None:
    assert storage.open(name).commit(size=0) == str(storage.directory / name)


def test_a_relative_directory_gives_absolute_locations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    storage = LocalStorage(Path("archive"))

    assert storage.open("v.mp4").commit(size=0) == str(tmp_path / "archive" / "v.mp4")


# -- JSON --------------------------------------------------------------------------------------


def test_write_json_writes_valid_json_and_no_temp(storage: LocalStorage) -> None:
    data = {"video_id": "vid_1", "bytes": 3, "tags": ["é", 1]}

    location = storage.write_json("vid_1.json", data)

    assert location == str(storage.directory / "vid_1.json")
    assert json.loads(Path(location).read_text(encoding="utf-8")) == data
    assert listing(storage.directory) == ["vid_1.json"]


def test_write_json_failure_keeps_the_old_file(storage: LocalStorage) -> None:
    storage.write_json("vid_1.json", {"version": 1})

    with pytest.raises(TypeError):
        storage.write_json("vid_1.json", {"version": object()})

    assert json.loads((storage.directory / "vid_1.json").read_text("utf-8")) == {"version": 1}
    assert listing(storage.directory) == ["vid_1.json"]


def test_write_json_replaces_in_one_step(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.write_json("vid_1.json", {"version": 1})
    seen: list[object] = []
    replace = os.replace

    def spy_replace(src: Path, dst: Path) -> None:
        # Just before the switch the reader still sees the complete old file
        seen.append(json.loads(Path(dst).read_text("utf-8")))
        replace(src, dst)

    monkeypatch.setattr("worker.storage.local.os.replace", spy_replace)
    storage.write_json("vid_1.json", {"version": 2})

    assert seen == [{"version": 1}]
    assert json.loads((storage.directory / "vid_1.json").read_text("utf-8")) == {"version": 2}


# -- write_json_atomic ---------------------------------------------------------------------


def test_write_json_atomic_writes_valid_json_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "meta" / "video.json"
    data = {"id": "abc", "bytes": 3, "tags": ["é", 1], "nested": {"ok": True}}

    write_json_atomic(path, data)

    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["video.json"]


def test_write_json_atomic_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "video.json"
    write_json_atomic(path, {"version": 1, "long": "x" * 1000})

    write_json_atomic(path, {"version": 2})

    assert json.loads(path.read_text(encoding="utf-8")) == {"version": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["video.json"]


def test_write_json_atomic_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "video.json"
    write_json_atomic(path, {"version": 1})

    with pytest.raises(TypeError):
        write_json_atomic(path, {"version": object()})

    assert json.loads(path.read_text(encoding="utf-8")) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["video.json"]


def test_write_json_atomic_removes_the_temp_when_the_replace_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "video.json"
    path.write_text('{"version": 1}', encoding="utf-8")

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr("worker.storage.local.os.replace", refuse)
    with pytest.raises(OSError, match="disk on fire"):
        write_json_atomic(path, {"version": 2})

    assert json.loads(path.read_text(encoding="utf-8")) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["video.json"]


def test_write_json_atomic_syncs_the_file_then_the_directory(
    tmp_path: Path, disk_events: list[str]
) -> None:
    write_json_atomic(tmp_path / "video.json", {"ok": True})

    assert disk_events == ["fsync-file", "replace", "fsync-dir"]


# -- open_storage ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "", "  "])
def test_no_archive_url_means_the_archive_dir(tmp_path: Path, url: str | None) -> None:
    storage = open_storage(archive_url=url, archive_dir=tmp_path / "a")

    assert isinstance(storage, LocalStorage)
    assert storage.directory == tmp_path / "a"


def test_file_url_means_that_directory(tmp_path: Path) -> None:
    storage = open_storage(archive_url=f"file://{tmp_path}/b%20c", archive_dir=tmp_path / "a")

    assert isinstance(storage, LocalStorage)
    assert storage.directory == tmp_path / "b c"


# -- size and delete (ARCHIVE_KEEP=final) --------------------------------------------------------


def test_size_location_and_delete(storage: LocalStorage, disk_events: list[str]) -> None:
    upload = storage.open("v1.mp4")
    upload.write(DATA)
    where = upload.commit(size=len(DATA))
    assert storage.location("v1.mp4") == where
    assert storage.size("v1.mp4") == len(DATA)
    assert storage.size("v2.mp4") is None
    disk_events.clear()
    assert storage.delete("v1.mp4") is True
    assert disk_events == ["fsync-dir"]  # the unlink survives a crash
    assert storage.size("v1.mp4") is None
    assert listing(storage.directory) == []
    # A repeat, or a name never stored, changes nothing
    assert storage.delete("v1.mp4") is False
    assert storage.delete("never.mp4") is False


def test_delete_refuses_names_that_are_not_plain_file_names(storage: LocalStorage) -> None:
    for name in ("../v1.mp4", ".v1.mp4.abc.part", "a/b.mp4"):
        with pytest.raises(ValueError, match="object name"):
            storage.delete(name)
        with pytest.raises(ValueError, match="object name"):
            storage.size(name)
