"""Run the service's processes locally: for the demo, the end-to-end tests and benchmarks.

Processes are started exactly as the ``Procfile`` says (``sh -c`` with ``$PORT`` and the rest
of the configuration in the environment) and stopped as a group.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import requests

PROCFILE_FALLBACK = {
    "web": "uvicorn webhook.app:create_app --factory --host 0.0.0.0 --port $PORT",
    "worker": "celery -A worker worker --loglevel=INFO",
    "beat": "celery -A worker beat --loglevel=INFO",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_procfile(path: Path) -> dict[str, str]:
    """``name: command`` lines; blank lines and ``#`` comments are skipped."""
    commands: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not name.strip() or not command.strip():
            raise ValueError(f"{path}:{number}: expected 'name: command', got {line!r}")
        commands[name.strip()] = command.strip()
    return commands


def find_procfile() -> dict[str, str]:
    for folder in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = folder / "Procfile"
        if candidate.is_file():
            return read_procfile(candidate)
    return dict(PROCFILE_FALLBACK)


def wait_http(
    url: str, *, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Until ``url`` answers 2xx; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with code {proc.returncode}")
        try:
            reply = requests.get(url, timeout=2)
            if reply.ok:
                return
            last = f"HTTP {reply.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s ({last})")


@dataclass
class Stack:
    """Processes started together and stopped together."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(
        self, name: str, command: str | list[str], env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        shell = isinstance(command, str)
        # The Procfile names bare commands (uvicorn, celery): find this interpreter's first.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        proc = subprocess.Popen(
            command,
            shell=shell,
            env={**os.environ, "PATH": path, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs.values():
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def embedded_redis(port: int) -> Iterator[str]:
    """An in-process Redis-compatible server (fakeredis), for the no-install demo."""
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        raise RuntimeError(
            "the demo's embedded Redis needs the demo extra: pip install 'kling-chain[demo]' "
            "(or point REDIS_URL at a Redis server and run the Procfile)"
        ) from None

    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="embedded-redis")
    thread.start()
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def local_env(
    *,
    redis_url: str,
    gateway: str,
    api_key: str,
    web_port: int,
    root: Path,
    **overrides: str,
) -> dict[str, str]:
    """The service's configuration (README, "Configuration") for processes on this machine
    talking to a local gateway; ``overrides`` (lower-case setting names) win."""
    env = {
        "REDIS_URL": redis_url,
        "KLING_BASE_URL": f"{gateway}/kling",
        "KLING_API_KEY": api_key,
        "PUBLIC_URL": f"http://127.0.0.1:{web_port}",
        "CALLBACK_SECRET": secrets.token_hex(32),
        "API_TOKEN": secrets.token_urlsafe(32),
        "ARCHIVE_DIR": str(root / "archive"),
        # The gateway's file URLs are on this machine: let downloads reach that host only.
        "ALLOW_PRIVATE_HOSTS": urlsplit(gateway).hostname or "127.0.0.1",
        "PORT": str(web_port),
        "WORKER_CONCURRENCY": "2",
        "BEAT_SCHEDULE": str(root / "beat-schedule"),
    }
    return {**env, **{name.upper(): value for name, value in overrides.items()}}


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class Local:
    """The fake gateway and the Procfile's processes, running on this machine."""

    stack: Stack
    gateway: str
    api: str
    env: dict[str, str]
    api_key: str


def start_local(
    stack: Stack,
    root: Path,
    *,
    redis_url: str,
    delay: float,
    gateway_args: tuple[str, ...] = (),
    processes: tuple[str, ...] = ("web", "worker", "beat"),
    commands: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    **settings: str,
) -> Local:
    """Start the fake gateway (``--delay`` and ``gateway_args``) and the ``processes`` of the
    Procfile (or ``commands``) on free ports, configured by ``local_env`` plus ``settings``.

    Archive and beat files go under ``root``; returns once the web process answers. The
    caller stops ``stack``, also when this raises (its logs say why).
    """
    gateway_port, web_port = free_port(), free_port()
    api_key = secrets.token_hex(12)
    gateway = f"http://{host}:{gateway_port}"
    args = ["--host", host, "--port", str(gateway_port), "--delay", f"{delay:g}"]
    proc = stack.start(
        "gateway", python_module("kling.fake", *args, "--api-key", api_key, *gateway_args), {}
    )
    env = local_env(
        redis_url=redis_url,
        gateway=gateway,
        api_key=api_key,
        web_port=web_port,
        root=root,
        **settings,
    )
    local = Local(stack, gateway, f"http://{host}:{web_port}", env, api_key)
    wait_http(f"{gateway}/_fake/stats", proc=proc)
    chosen = dict(commands) if commands is not None else find_procfile()
    for name in processes:
        stack.start(name, chosen[name], env)
    if "web" in processes:
        wait_http(f"{local.api}/healthz", proc=stack.procs["web"])
    return local
