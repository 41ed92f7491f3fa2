"""The whole service as processes, for integration and end-to-end tests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import pytest
import redis
import requests

from chainctl.devstack import Stack, free_port, start_local


class FastSettings(TypedDict):
    poll_after_seconds: str
    submit_lease_seconds: str
    kling_timeout_seconds: str
    recheck_after_seconds: str


FAST: FastSettings = {
    "poll_after_seconds": "2",
    "submit_lease_seconds": "3",
    "kling_timeout_seconds": "2",
    "recheck_after_seconds": "1",
}
"""Short intervals for fault tests: leases, polls and rechecks come round in seconds."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Service:
    """The fake gateway plus the Procfile's processes, on free ports, with private keys."""

    stack: Stack
    gateway: str
    api: str
    env: dict[str, str]
    archive: Path
    redis: redis.Redis
    prefix: str
    notes: list[str] = field(default_factory=list)
    http: requests.Session = field(default_factory=requests.Session)
    """Sends the API token, as every client of the API must."""

    def __post_init__(self) -> None:
        self.http.headers["Authorization"] = f"Bearer {self.env['API_TOKEN']}"

    def fake(self, method: str, path: str, body: Any = None) -> Any:
        reply = requests.request(method, f"{self.gateway}{path}", json=body, timeout=10)
        reply.raise_for_status()
        return reply.json()

    def seed(self, duration: float = 5.0) -> dict[str, Any]:
        seeded: dict[str, Any] = self.fake("POST", "/_fake/videos", {"duration": duration})
        return seeded

    def faults(self, **knobs: Any) -> None:
        self.fake("POST", "/_fake/faults", knobs)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.fake("GET", "/_fake/stats")
        return stats

    def post_chain(self, body: dict[str, Any]) -> requests.Response:
        return self.http.post(f"{self.api}/chains", json=body, timeout=10)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.post_chain(body)
        assert reply.status_code == 202, reply.text
        chain: dict[str, Any] = reply.json()
        return chain

    def chain(self, chain_id: str) -> dict[str, Any]:
        reply = self.http.get(f"{self.api}/chains/{chain_id}", timeout=10)
        reply.raise_for_status()
        chain: dict[str, Any] = reply.json()
        return chain

    def wait(
        self,
        chain_id: str,
        *,
        timeout: float = 90.0,
        until: tuple[str, ...] = ("succeeded", "failed"),
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        chain = self.chain(chain_id)
        while chain["status"] not in until:
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{self.stack.tail(n)}" for n in self.stack.procs)
                raise AssertionError(
                    f"chain still {chain['status']} after {timeout} s: {chain}\n{logs}"
                )
            time.sleep(0.2)
            chain = self.chain(chain_id)
        return chain

    def gateway_sha256(self, video_id: str) -> str:
        reply = requests.get(f"{self.gateway}/files/{video_id}.mp4", timeout=30)
        reply.raise_for_status()
        return hashlib.sha256(reply.content).hexdigest()


def start_service(
    root: Path,
    redis_url: str,
    *,
    delay: float = 0.3,
    gateway_args: tuple[str, ...] = (),
    processes: tuple[str, ...] = ("web", "worker", "beat"),
    **settings: str,
) -> Service:
    """Start the gateway and the Procfile processes exactly as written, with test settings."""
    prefix = f"test-{secrets.token_hex(4)}:"
    stack = Stack(root / "logs")
    try:
        local = start_local(
            stack,
            root,
            redis_url=redis_url,
            delay=delay,
            gateway_args=("--bytes-per-second", "4000", *gateway_args),
            processes=processes,
            key_prefix=prefix,
            celery_queue=f"{prefix}queue",
            commands=None,
            **{
                "poll_after_seconds": "30",
                "sweep_seconds": "1",
                "recheck_after_seconds": "1",
                **settings,
            },
        )
    except BaseException:
        stack.stop()
        raise
    return Service(
        stack=local.stack,
        gateway=local.gateway,
        api=local.api,
        env=local.env,
        archive=root / "archive",
        redis=redis.Redis.from_url(redis_url),
        prefix=prefix,
    )


def module_service(name: str, **options: Any) -> Any:
    """A module-scoped ``svc`` fixture: one service (``start_service(**options)``) per module."""

    @pytest.fixture(scope="module")
    def svc(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
        service = start_service(tmp_path_factory.mktemp(name), redis_url, **options)
        yield service
        stop_service(service)

    return svc


def fresh(service: Service, *, unlearn: bool = False) -> None:
    """A gateway with no tasks, videos or knobs; ``unlearn``: and a service that has learnt
    nothing about the provider yet (what its lookups and task list can be trusted with)."""
    service.fake("POST", "/_fake/reset")
    learnt = list(service.redis.scan_iter(f"{service.prefix}provider:*")) if unlearn else []
    if learnt:
        service.redis.delete(*learnt)


def start_chain(service: Service, steps: int = 3, **spec: Any) -> dict[str, Any]:
    """A chain of ``steps`` extensions of a fresh 5 s video."""
    seed = service.seed(5.0)
    body = {"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": steps, **spec}
    return service.create(body)


CLI = [sys.executable, "-m", "chainctl.cli"]


def run_cli(
    service: Service, *args: str, timeout: float = 120, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``kling-chain --api <service> ARGS`` as a user runs it, with the service's API token."""
    return subprocess.run(
        [*CLI, "--api", service.api, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "API_TOKEN": token or service.env["API_TOKEN"]},
    )


def stop_service(service: Service) -> None:
    service.stack.stop()
    keys = list(service.redis.scan_iter(f"{service.prefix}*", count=1000))
    for kind in ("binding", "binding_permanent"):  # kombu's records of the service's queues
        keys += service.redis.scan_iter(f"_kombu.{kind}.{service.prefix}*", count=1000)
    if keys:
        service.redis.delete(*keys)
    service.redis.close()
    service.http.close()


class PersistentRedis:
    """A private redis-server with append-only persistence, stoppable and restartable."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "yes",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            check=True,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        with contextlib.suppress(redis.ConnectionError):  # SHUTDOWN drops its own connection
            redis.Redis.from_url(self.url).shutdown()
