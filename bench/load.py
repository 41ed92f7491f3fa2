"""HTTP load: ``wrk`` with a Lua script when it is installed, else an asyncio generator.

Both send the same requests (POSTs with a JSON body, cycling through a list of paths) over a
fixed number of keep-alive connections, stop at a request count or a time limit, whichever
comes first, and report throughput and latency percentiles. Targets must be loopback.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.report import percentile

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class LoadResult:
    tool: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"load may only target loopback addresses, not {host!r}")


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    base_url: str,
    paths: Sequence[str],
    body: bytes,
    *,
    connections: int,
    seconds: float,
    max_requests: int,
    use_wrk: bool | None = None,
) -> LoadResult:
    """POST ``body`` to ``paths`` in turn; bounded by ``max_requests`` and ``seconds``."""
    check_loopback(base_url)
    if use_wrk is None:
        use_wrk = have_wrk()
    if use_wrk:
        return _wrk(base_url, paths, body, connections, seconds, max_requests)
    return asyncio.run(_asyncio_load(base_url, paths, body, connections, seconds, max_requests))


# -- wrk ---------------------------------------------------------------------------------------
_LUA = """
local paths = {%(paths)s}
local body = %(body)s
local limit = %(limit)d
local headers = {["Content-Type"] = "application/json"}
local n = 0
local seen = 0

request = function()
  n = n %% #paths + 1
  return wrk.format("POST", paths[n], headers, body)
end

response = function(status, hdrs, resp)
  seen = seen + 1
  if seen >= limit then
    wrk.thread:stop()
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nBENCH {"requests": %%d, "micros": %%d, "errors": %%d, "p50": %%d, "p99": %%d}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def _wrk(
    base_url: str,
    paths: Sequence[str],
    body: bytes,
    connections: int,
    seconds: float,
    max_requests: int,
) -> LoadResult:
    threads = 1  # the service under test gets the other core
    script = _LUA % {
        "paths": ", ".join(_lua_string(p) for p in paths),
        "body": _lua_string(body.decode()),
        "limit": max(1, max_requests // threads),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        lua = Path(handle.name)
    try:
        done = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "5s",
                "-s",
                str(lua),
                base_url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
    finally:
        lua.unlink(missing_ok=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    data = json.loads(line.removeprefix("BENCH "))
    return LoadResult(
        tool="wrk",
        requests=int(data["requests"]),
        seconds=data["micros"] / 1e6,
        errors=int(data["errors"]),
        p50_ms=data["p50"] / 1000,
        p99_ms=data["p99"] / 1000,
    )


# -- asyncio fallback --------------------------------------------------------------------------
async def _asyncio_load(
    base_url: str,
    paths: Sequence[str],
    body: bytes,
    connections: int,
    seconds: float,
    max_requests: int,
) -> LoadResult:
    """Raw HTTP/1.1 keep-alive over asyncio streams: far less client CPU per request than an
    HTTP client library, which matters when client and server share two cores."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    errors = 0
    issued = 0
    started = time.perf_counter()
    stop_at = started + seconds

    def next_request() -> bytes | None:
        nonlocal issued
        if issued >= max_requests or time.perf_counter() >= stop_at:
            return None
        path = paths[issued % len(paths)]
        issued += 1
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (request := next_request()) is not None:
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
                if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                    errors += 1
        finally:
            writer.close()

    results = await asyncio.gather(
        *(connection() for _ in range(connections)), return_exceptions=True
    )
    errors += sum(1 for r in results if isinstance(r, BaseException))
    elapsed = time.perf_counter() - started
    return LoadResult(
        tool="asyncio",
        requests=len(latencies),
        seconds=elapsed,
        errors=errors,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
    )
