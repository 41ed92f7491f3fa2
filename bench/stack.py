"""The service as processes for a benchmark: the fake gateway and the Procfile's processes.

Like ``tests.support.start_service``, but every listener is bound to 127.0.0.1, the gateway's
file size and delay are the benchmark's, and the web command can be swapped for one that
timestamps callbacks (``bench.stamps``). Each run gets its own key prefix and Celery queue in
a dedicated Redis database, and ``BenchService.close`` removes every key it wrote.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from chainctl.devstack import Stack, find_procfile, read_procfile, start_local

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
LOOPBACK = "127.0.0.1"
STAMPED_WEB = "uvicorn bench.stamps:create_app --factory --host 127.0.0.1 --port $PORT"


def loopback(command: str) -> str:
    """A Procfile command with any all-interfaces bind narrowed to the loopback address."""
    return command.replace("--host 0.0.0.0", f"--host {LOOPBACK}")


@dataclass
class BenchService:
    stack: Stack
    gateway: str
    api: str
    env: dict[str, str]
    redis: redis.Redis
    prefix: str
    queue: str
    api_key: str
    http: requests.Session = field(default_factory=requests.Session)

    def fake(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        reply = self.http.request(
            method, f"{self.gateway}{path}", json=body, headers=headers, timeout=30
        )
        reply.raise_for_status()
        return reply.json()

    def api_session(self) -> requests.Session:
        """A session that sends the API token, as every client of the API must."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.env['API_TOKEN']}"
        return session

    def seed(self, duration: float = 5.0) -> dict[str, Any]:
        seeded: dict[str, Any] = self.fake("POST", "/_fake/videos", {"duration": duration})
        return seeded

    def logs(self, lines: int = 30) -> str:
        return "\n".join(f"--- {n}\n{self.stack.tail(n, lines)}" for n in self.stack.procs)

    def close(self) -> None:
        stop_stack(self.stack)
        self.http.close()
        cleanup_keys(self.redis, self.prefix, self.queue)
        self.redis.close()


def stop_stack(stack: Stack, timeout: float = 15.0) -> None:
    """Stop every process and wait until each one's process group is empty.

    ``Stack.stop`` waits for the ``sh -c`` it started, which may exit while the command it ran
    is still finishing requests (and publishing tasks to Redis): keys cleaned up before that
    would come back.
    """
    groups = [proc.pid for proc in stack.procs.values()]  # start_new_session: pgid == pid
    stack.stop()
    started = time.monotonic()
    for pgid in groups:
        killed = False
        while time.monotonic() - started < 2 * timeout:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            if not killed and time.monotonic() - started > timeout:
                with suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                killed = True
            time.sleep(0.05)


def cleanup_keys(client: redis.Redis, prefix: str, queue: str) -> int:
    """Delete this run's keys: everything under ``prefix`` and the kombu bindings of its
    queues (``queue`` and the ones named after it, worker.queues)."""
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    keys += list(client.scan_iter(f"_kombu.binding*{queue}", count=1000))
    keys += list(client.scan_iter(f"_kombu.binding*{queue}.*", count=1000))
    removed = 0
    for start in range(0, len(keys), 1000):
        removed += int(client.delete(*keys[start : start + 1000]))
    # Celery's Redis transport keeps unacknowledged deliveries in shared keys; a worker that
    # stopped cleanly leaves none of ours, but a killed one may.
    tags = [
        tag
        for tag, payload in client.hscan_iter("unacked")
        if queue.encode() in (payload if isinstance(payload, bytes) else str(payload).encode())
    ]
    if tags:
        client.hdel("unacked", *tags)
        client.zrem("unacked_index", *tags)
    # kombu's shared bookkeeping of bindings: ours to remove once no binding is left in the
    # benchmark's database.
    if not any(True for _ in client.scan_iter("_kombu.binding.*", count=1000)) and not any(
        True for _ in client.scan_iter("_kombu.binding_permanent.*", count=1000)
    ):
        removed += int(client.delete("_kombu.binding_deadlines"))
    return removed


def new_prefix() -> tuple[str, str]:
    """A private key prefix and Celery queue for one run."""
    prefix = f"bench-{secrets.token_hex(4)}:"
    return prefix, f"{prefix}queue"


BENCH_SETTINGS = {
    "poll_after_seconds": "30",
    "sweep_seconds": "5",
    "worker_concurrency": "4",
}
"""The benchmark's configuration over ``local_env`` (README, "Configuration")."""


def procfile_commands() -> dict[str, str]:
    return {name: loopback(command) for name, command in find_procfile().items()}


def code_commands(code: Path) -> dict[str, str]:
    """The Procfile of the checkout ``code`` (e.g. a git worktree of an older commit), each
    command run in that directory."""
    cd = f"cd {shlex.quote(str(code))} && "
    return {
        name: cd + loopback(command) for name, command in read_procfile(code / "Procfile").items()
    }


def code_pythonpath(code: Path) -> str:
    """``PYTHONPATH`` with the checkout ``code`` first, ahead of this tree's packages."""
    return os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])


def wait_worker_ready(stack: Stack, name: str = "worker", timeout: float = 60.0) -> None:
    """Until the Celery worker logs that it is ready to take tasks."""
    deadline = time.monotonic() + timeout
    proc = stack.procs[name]
    while " ready." not in stack.tail(name, 400):
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{stack.tail(name)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready within {timeout:.0f} s:\n{stack.tail(name)}")
        time.sleep(0.1)


def start_service(
    root: Path,
    *,
    delay: float = 0.0,
    bytes_per_second: int = 4000,
    processes: tuple[str, ...] = ("web", "worker", "beat"),
    web_command: str | None = None,
    gateway_faults: str | None = None,
    gateway_seed: int | None = None,
    code: Path | None = None,
    **settings: str,
) -> BenchService:
    """The gateway and the Procfile's ``processes`` on free loopback ports, with ``settings``
    (upper-cased into the environment) over the benchmark's defaults. Returns once the web
    process answers and the worker is ready.

    With ``code`` (a checkout of the service), the ``processes`` are that checkout's: its
    Procfile's commands, run in its directory with it first on ``PYTHONPATH`` so that its
    ``worker``, ``webhook`` and ``kling`` win over this tree's. The gateway stays this tree's.
    """
    stack = Stack(root / "logs")
    prefix, queue = new_prefix()
    gateway_args = ["--bytes-per-second", str(bytes_per_second), "--log-level", "warning"]
    if gateway_faults:
        gateway_args += ["--faults", gateway_faults]
    if gateway_seed is not None:  # the same draws (task durations, drops) in every arm
        gateway_args += ["--random-seed", str(gateway_seed)]
    commands = procfile_commands() if code is None else code_commands(code)
    if code is not None:
        # local_env upper-cases it into the environment of the processes, not the gateway's.
        settings = {"pythonpath": code_pythonpath(code), **settings}
    if web_command is not None:
        commands["web"] = web_command
    client = redis.Redis.from_url(REDIS_URL)
    try:
        local = start_local(
            stack,
            root,
            redis_url=REDIS_URL,
            delay=delay,
            gateway_args=tuple(gateway_args),
            processes=processes,
            commands=commands,
            host=LOOPBACK,
            **{**BENCH_SETTINGS, "key_prefix": prefix, "celery_queue": queue, **settings},
        )
        if "worker" in processes:
            wait_worker_ready(stack)
    except BaseException:
        stop_stack(stack)
        cleanup_keys(client, prefix, queue)
        client.close()
        raise
    return BenchService(
        stack=stack,
        gateway=local.gateway,
        api=local.api,
        env=local.env,
        redis=client,
        prefix=prefix,
        queue=queue,
        api_key=local.api_key,
    )
