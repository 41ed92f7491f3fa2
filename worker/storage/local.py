"""Archive storage in a local directory: temp file beside the target, fsync, rename.

An upload streams into a hidden ``.{name}.{random}.part`` in the target's directory while it
is hashed (``sha256``). ``commit`` checks the size, makes the bytes durable (fsync), moves the
file over the target in one step (``os.replace``) and syncs the directory so the rename
survives a crash. The target therefore holds the old file or the complete new one, never half.

While it is written, every ``WRITE_BEHIND`` bytes the upload tells the kernel it will not read
the file again (``posix_fadvise`` ``DONTNEED``, where the platform has it): that starts the
writeback of what is dirty and drops from the page cache what is already on disk. The one
fsync at the end then waits for the last few MiB instead of the whole file (0.2 s for 500 MB
on the benchmark's disk), and a video no longer pushes its size of other files out of the
cache; the next write reuses the pages instead of reclaiming new ones. It is advice only:
durability still comes from the fsync, which is still the only one.
Errors of the disk (``OSError``) propagate unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from worker.storage import check_name
from worker.storage.errors import ChecksumMismatch

__all__ = ["LocalStorage", "LocalUpload", "write_json_atomic"]

log = logging.getLogger(__name__)

WRITE_BEHIND = 8 * 1024 * 1024
"""Bytes written between two write-behind hints: large enough that a hint is rare, small enough
that the final fsync has little left to do."""

_ADVISE = getattr(os, "posix_fadvise", None)  # absent on macOS and Windows


def _create_temp(dest: Path, suffix: str) -> tuple[IO[bytes], Path]:
    """Open a new hidden file beside `dest` (permissions from the umask, like a plain open)."""
    while True:
        temp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        return os.fdopen(fd, "wb"), temp


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(handle: IO[bytes], temp: Path, dest: Path) -> None:
    """Make `temp` durable and move it over `dest` in one step."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(temp, dest)
    _fsync_dir(dest.parent)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` as JSON to `path` so that readers see the old or the new file, never half."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = _create_temp(path, ".tmp")
    try:
        with handle:
            handle.write(text.encode("utf-8"))
            _commit(handle, temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


class LocalUpload:
    """A hidden temp file beside ``dest``, moved over it by ``commit``."""

    def __init__(self, dest: Path) -> None:
        self._dest = dest
        self._handle, self._temp = _create_temp(dest, ".part")
        self._hasher = hashlib.sha256()
        self._size = 0
        self._hinted = 0  # where the last write-behind hint ended
        self._state = "open"

    @property
    def offset(self) -> int:
        return self._size

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"upload of {self._dest.name} is {self._state}")

    def write(self, chunk: bytes) -> None:
        self._check_open()
        self._handle.write(chunk)
        self._hasher.update(chunk)
        self._size += len(chunk)
        if _ADVISE is not None and self._size - self._hinted >= WRITE_BEHIND:
            self._write_behind(_ADVISE)

    def _write_behind(self, advise: Callable[[int, int, int, int], None]) -> None:
        """Start writing out what the kernel holds of the file, and drop what is already out.

        Pages still being written when one hint comes are clean by the next, which drops
        them; the range starts at 0 for that reason (empty stretches cost the kernel nothing).
        At most the buffered writer's last few KiB are not in the kernel yet: the hint just
        misses them. A refused hint changes nothing that matters, so it is only logged.
        """
        self._hinted = self._size
        try:
            advise(self._handle.fileno(), 0, self._size, os.POSIX_FADV_DONTNEED)
        except OSError as exc:  # pragma: no cover - Linux accepts it on any regular file
            log.debug("write-behind hint for %s refused: %s", self._temp, exc)

    def rewind(self) -> None:
        self._check_open()
        self._handle.seek(0)
        self._handle.truncate()
        self._hasher = hashlib.sha256()
        self._size = 0
        self._hinted = 0

    def commit(self, *, size: int) -> str:
        self._check_open()
        try:
            if size != self._size:
                raise ChecksumMismatch(
                    f"{self._dest.name}: asked to commit {size} bytes, "
                    f"but {self._size} bytes were written"
                )
            _commit(self._handle, self._temp, self._dest)
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return str(self._dest)

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._handle.close()
        finally:
            try:
                self._temp.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove temp file %s: %s", self._temp, exc)


class LocalStorage:
    """Files in ``directory`` (created on the first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(os.path.abspath(directory))

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.directory)!r})"

    def open(self, name: str) -> LocalUpload:
        dest = self.directory / check_name(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        return LocalUpload(dest)

    def write_json(self, name: str, data: Mapping[str, Any]) -> str:
        path = self.directory / check_name(name)
        write_json_atomic(path, data)
        return str(path)

    def location(self, name: str) -> str:
        return str(self.directory / check_name(name))

    def size(self, name: str) -> int | None:
        path = self.directory / check_name(name)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> bool:
        """Unlink the file and sync the directory, so the deletion survives a crash."""
        path = self.directory / check_name(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.directory)
        return True
