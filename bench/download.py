"""Archive download: throughput of ``worker.outbound.download.download_into`` on a 500 MB
video, against ``curl -o`` of the same URL in the same run, and the archiving process's peak
RSS over idle.

The fake gateway serves the file (``--bytes-per-second`` sets the size per second of video,
``POST /_fake/videos {"duration": D}`` makes one of D seconds; no throttling). Each round runs
curl and the archiver one after the other, in alternating order. The archiver is a child
process (``bench.archiver``) whose RSS is sampled every 10 ms with psutil, from before it
starts (idle) to its end (peak). Both write to the same temporary directory; the archived
file's sha256 is checked against the gateway's content.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.report import Section, median
from bench.stack import start_service
from kling.fake.content import video_sha256

MIB = 1024 * 1024
GIB = 1024 * MIB
SIZE = 500 * MIB
DURATION = 100  # seconds of video
RATE = SIZE // DURATION  # bytes per second of video: DURATION * RATE = 500 MiB
SAMPLE_S = 0.010
GOAL_RATIO = 0.8
GOAL_GROWTH_MB = 50.0


class RssSampler(threading.Thread):
    """RSS of one process every 10 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(SAMPLE_S)


def run_curl(url: str, dest: Path) -> tuple[float, float]:
    """curl's own transfer time (s) for ``url`` into ``dest``, and the CPU time it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        ["curl", "-sS", "--fail", "-o", str(dest), "-w", "%{size_download} %{time_total}", url],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    size, seconds = done.stdout.split()
    if int(float(size)) != SIZE:
        raise RuntimeError(f"curl got {size} bytes, expected {SIZE}")
    return float(seconds), cpu


def run_archiver(url: str, dest: Path) -> tuple[float, float, str, float, float]:
    """(seconds, CPU seconds, sha256, idle RSS, peak RSS) of one download in a fresh child."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.archiver", url, str(dest)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the archiver did not start")
        sampler = RssSampler(child.pid)
        sampler.start()
        time.sleep(0.3)  # idle samples
        go = time.monotonic()
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        sampler.halt.set()
        sampler.join()
        if child.wait(timeout=60) != 0 or not line:
            raise RuntimeError(f"the archiver failed (exit {child.returncode})")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    result = json.loads(line)
    idle = median(rss for at, rss in sampler.samples if at < go)
    peak = max(rss for _, rss in sampler.samples)
    return (
        float(result["seconds"]),
        float(result["cpu_seconds"]),
        str(result["sha256"]),
        idle,
        float(peak),
    )


def run(root: Path, *, quick: bool) -> Section:
    section = Section("download")
    rounds = 2 if quick else 3
    service = start_service(root, bytes_per_second=RATE, processes=())
    target = Path(tempfile.mkdtemp(prefix="kc-bench-download-"))
    curl_mbs: list[float] = []
    ours_mbs: list[float] = []
    curl_cpu: list[float] = []
    ours_cpu: list[float] = []
    growth: list[float] = []
    idle_mb: list[float] = []
    peak_mb: list[float] = []
    try:
        video = service.seed(DURATION)
        url = f"{service.gateway}/files/{video['video_id']}.mp4"
        expected = video_sha256(video["video_id"], SIZE)
        for number in range(rounds):
            order = ("curl", "archiver") if number % 2 == 0 else ("archiver", "curl")
            for name in order:
                dest = target / f"{name}-{number}.mp4"
                if name == "curl":
                    seconds, cpu = run_curl(url, dest)
                    curl_mbs.append(SIZE / MIB / seconds)
                    curl_cpu.append(cpu / (SIZE / GIB))
                else:
                    seconds, cpu, sha, idle, peak = run_archiver(url, dest)
                    ours_cpu.append(cpu / (SIZE / GIB))
                    if sha != expected:
                        raise RuntimeError(f"archived sha256 {sha} != gateway's {expected}")
                    ours_mbs.append(SIZE / MIB / seconds)
                    idle_mb.append(idle / MIB)
                    peak_mb.append(peak / MIB)
                    growth.append((peak - idle) / MIB)
                dest.unlink(missing_ok=True)
    finally:
        service.close()
        shutil.rmtree(target, ignore_errors=True)

    ours, curl = median(ours_mbs), median(curl_mbs)
    section.add(
        "archive download (download_into)",
        ours,
        "MiB/s",
        baseline=curl,
        baseline_name="curl -o, same URL",
        goal=f">= {GOAL_RATIO:.0%} of curl",
        met=ours / curl >= GOAL_RATIO,
        runs=[round(x, 1) for x in ours_mbs],
        note=f"500 MiB, median of {rounds}; curl runs {[round(x, 1) for x in curl_mbs]}",
    )
    section.add(
        "archive download CPU",
        median(ours_cpu),
        "CPU s/GiB",
        baseline=median(curl_cpu),
        baseline_name="curl -o",
        runs=[round(x, 3) for x in ours_cpu],
        note="user + system time of the downloading process per GiB (curl: no hash, no fsync)",
    )
    section.add(
        "archiver RSS growth (peak - idle)",
        median(growth),
        "MiB",
        baseline=median(idle_mb),
        baseline_name="idle RSS",
        goal=f"<= {GOAL_GROWTH_MB:.0f} MiB",
        met=max(growth) <= GOAL_GROWTH_MB,
        runs=[round(x, 1) for x in growth],
        note=f"max over runs {max(growth):.1f} MiB; peak RSS {max(peak_mb):.1f} MiB",
    )
    section.details = {
        "bytes": SIZE,
        "gateway_bytes_per_second_of_video": RATE,
        "duration_s": DURATION,
        "rounds": rounds,
        "archiver_mib_s": ours_mbs,
        "curl_mib_s": curl_mbs,
        "archiver_cpu_s_per_gib": ours_cpu,
        "curl_cpu_s_per_gib": curl_cpu,
        "idle_rss_mib": idle_mb,
        "peak_rss_mib": peak_mb,
        "sample_interval_s": SAMPLE_S,
        "target_dir": str(target.parent),
    }
    return section
