"""Memory of the archiver: does ``download_into`` stay flat for a large video, per backend?

Run from the repository root::

    .venv/bin/python -m bench.archive_memory              # a 1024 MB video
    .venv/bin/python -m bench.archive_memory --size-mb 64 # quicker

It starts the fake Kling gateway (``python -m kling.fake``) and moto's S3-compatible server
(``python -m moto.server``) as processes of their own, seeds a video of the asked size, and
for each backend (a ``LocalStorage`` in a temp directory, an ``S3Storage`` on moto) starts a
fresh archiver process. That process imports everything and builds its storage, then reports
ready; this one samples its RSS (idle), tells it to go, and samples its RSS every 10 ms while
it downloads the video into the storage. The archiver process does nothing else, so its growth
is the archiving's. The bytes are checked against the video's sha256 afterwards.

Prints idle, peak and growth (MB = 2**20 bytes) and throughput per backend, and the goal:
growth of at most 50 MB whatever the size. Exits 1 if a backend misses the goal or stores
the wrong bytes. This is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psutil
import requests

from chainctl.devstack import free_port, python_module, wait_http

MB = 1024 * 1024
GOAL_MB = 50.0
SAMPLE_SECONDS = 0.010
BUCKET = "archive-memory-bench"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
REGION = "us-east-1"


# -- the archiver process ------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> int:
    """Build the storage, say ready, wait for go, download, print the result as JSON."""
    from worker.outbound.download import download_into
    from worker.outbound.netguard import AllowList, guarded_session
    from worker.storage import Storage
    from worker.storage.local import LocalStorage
    from worker.storage.s3 import S3Storage, s3_client

    storage: Storage
    if args.child == "local":
        storage = LocalStorage(Path(args.dest))
    else:
        client = s3_client(endpoint_url=args.s3_endpoint, region_name=REGION, **CREDENTIALS)
        storage = S3Storage(BUCKET, "bench", client, part_size=args.part_size)
    session = guarded_session(AllowList.parse(urlsplit(args.url).hostname or ""))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    began = time.perf_counter()
    got = download_into(
        args.url, storage.open("video.mp4"), deadline=time.time() + 3600, session=session
    )
    seconds = time.perf_counter() - began
    result = {"location": got.location, "bytes": got.bytes, "sha256": got.sha256, "s": seconds}
    print(json.dumps(result), flush=True)
    return 0


# -- the measuring process -----------------------------------------------------------------------


@dataclass
class Figures:
    backend: str
    idle_mb: float
    peak_mb: float
    seconds: float
    size: int
    samples: int
    sha256: str
    location: str

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.idle_mb

    @property
    def mb_per_s(self) -> float:
        return self.size / MB / self.seconds if self.seconds else 0.0


def _read_line(stream: IO[str], box: list[str]) -> None:
    box.append(stream.readline())


def measure(backend: str, url: str, extra: list[str]) -> Figures:
    """Run one archiver process for ``backend`` and sample its memory."""
    command = python_module("bench.archive_memory", "--child", backend, "--url", url, *extra)
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{backend}: the archiver did not start")
        proc = psutil.Process(child.pid)
        idle_samples = []
        for _ in range(30):
            idle_samples.append(proc.memory_info().rss)
            time.sleep(SAMPLE_SECONDS)
        idle = max(idle_samples)

        box: list[str] = []
        reader = threading.Thread(target=_read_line, args=(child.stdout, box), daemon=True)
        reader.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        peak, samples = idle, 0
        while reader.is_alive():
            try:
                rss = proc.memory_info().rss
            except psutil.NoSuchProcess:
                break
            peak, samples = max(peak, rss), samples + 1
            time.sleep(SAMPLE_SECONDS)
        reader.join()
        if child.wait(timeout=60) != 0 or not box or not box[0].strip():
            raise RuntimeError(f"{backend}: the archiver failed (exit code {child.returncode})")
        result: dict[str, Any] = json.loads(box[0])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return Figures(
        backend,
        idle / MB,
        peak / MB,
        float(result["s"]),
        int(result["bytes"]),
        samples,
        str(result["sha256"]),
        str(result["location"]),
    )


def _start(command: list[str], ready_url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(ready_url, timeout=30, proc=proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(size_mb: int, part_size: int, backends: list[str]) -> int:
    from kling.fake.content import video_sha256
    from worker.storage.s3 import s3_client

    size = size_mb * MB
    processes: list[subprocess.Popen[bytes]] = []
    scratch = Path(tempfile.mkdtemp(prefix="archive-memory-"))
    try:
        # The video: DURATION seconds at MB bytes per second is size_mb MB.
        gateway = f"http://127.0.0.1:{free_port()}"
        processes.append(
            _start(
                python_module(
                    "kling.fake",
                    "--port",
                    gateway.rsplit(":", 1)[1],
                    "--bytes-per-second",
                    str(MB),
                    "--log-level",
                    "warning",
                ),
                f"{gateway}/_fake/stats",
            )
        )
        seeded = requests.post(f"{gateway}/_fake/videos", json={"duration": size_mb}, timeout=30)
        seeded.raise_for_status()
        video = seeded.json()
        expected = video_sha256(video["video_id"], size)
        print(f"video {video['video_id']}: {size_mb} MB, sha256 {expected[:16]}...")

        s3_endpoint = f"http://127.0.0.1:{free_port()}"
        if "s3" in backends:
            port = s3_endpoint.rsplit(":", 1)[1]
            processes.append(
                _start(python_module("moto.server", "-H", "127.0.0.1", "-p", port), s3_endpoint)
            )
            s3 = s3_client(endpoint_url=s3_endpoint, region_name=REGION, **CREDENTIALS)
            s3.create_bucket(Bucket=BUCKET)

        rows: list[Figures] = []
        for backend in backends:
            extra = ["--dest", str(scratch), "--s3-endpoint", s3_endpoint]
            extra += ["--part-size", str(part_size)]
            figures = measure(backend, video["url"], extra)
            rows.append(figures)
            if backend == "local":
                Path(figures.location).unlink()
            else:
                key = figures.location.split("/", 3)[3]
                s3.delete_object(Bucket=BUCKET, Key=key)
    finally:
        for proc in reversed(processes):
            _stop(proc)
        shutil.rmtree(scratch, ignore_errors=True)

    return report(rows, size, expected)


def report(rows: list[Figures], size: int, expected: str) -> int:
    print()
    print(f"archiving a {size // MB} MB video with download_into; archiver RSS every 10 ms")
    header = ("backend", "idle MB", "peak MB", "growth MB", "MB/s", "samples")
    print("{:<10}{:>10}{:>10}{:>11}{:>9}{:>9}".format(*header))
    failed = False
    for row in rows:
        ok = row.growth_mb <= GOAL_MB and row.sha256 == expected and row.size == size
        failed |= not ok
        print(
            f"{row.backend:<10}{row.idle_mb:>10.1f}{row.peak_mb:>10.1f}{row.growth_mb:>11.1f}"
            f"{row.mb_per_s:>9.1f}{row.samples:>9}"
            + ("" if row.sha256 == expected else "  WRONG BYTES")
        )
    verdict = "MISSED" if failed else "met"
    print(f"goal: growth <= {GOAL_MB:.0f} MB per backend, bytes identical: {verdict}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="video size (default 1024)")
    parser.add_argument("--part-size", type=int, default=8 * MB, help="S3 part size in bytes")
    parser.add_argument(
        "--backends", default="local,s3", help="comma-separated: local, s3 (default both)"
    )
    parser.add_argument("--child", choices=("local", "s3"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    parser.add_argument("--s3-endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"local", "s3"}
    if unknown or not backends:
        parser.error(f"unknown backends: {', '.join(sorted(unknown)) or '(none)'}")
    if args.size_mb < 1:
        parser.error("--size-mb must be at least 1")
    return run(args.size_mb, args.part_size, backends)


if __name__ == "__main__":
    sys.exit(main())
