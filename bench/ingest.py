"""Callback ingest: how many provider callbacks one web process takes per second.

The web process runs the Procfile's command (one uvicorn process, loopback only) against
Redis; the load POSTs realistic task bodies to ``/callbacks/{chain}/{step}/{token}`` with
valid tokens (``worker.core.tokens.sign`` under the run's ``CALLBACK_SECRET``), so every request
goes the whole way: token check, body parse, and a Celery task published to Redis. No worker
runs; the queue's length afterwards must match the answered requests, and it is deleted.

The baseline is ``bench.baseline`` (a bare Starlette endpoint on the same route) under the
same uvicorn command and the same load, measured in alternating rounds with the service.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import redis

from bench.load import LoadResult, have_wrk, run_load
from bench.report import Section, median, tree_cpu_seconds
from bench.stack import (
    LOOPBACK,
    REDIS_URL,
    cleanup_keys,
    new_prefix,
    procfile_commands,
    stop_stack,
)
from chainctl.devstack import Stack, free_port, wait_http
from worker.core import tokens

DISTINCT_PATHS = 1000
CONNECTIONS = 32
GOAL_RATIO = 0.5


def task_body() -> bytes:
    """A finished extension task as the provider posts it (what ``parse_task`` expects)."""
    task: dict[str, Any] = {
        "task_id": "task_" + secrets.token_urlsafe(12),
        "task_status": "succeed",
        "task_status_msg": "",
        "task_info": {
            "parent_video": {
                "id": "vid_parent",
                "url": "http://127.0.0.1/files/vid_parent.mp4",
                "duration": "5.0",
            },
            "external_task_id": "kc-0123456789abcdef-0",
        },
        "task_result": {
            "videos": [
                {
                    "id": "vid_child",
                    "url": "http://127.0.0.1/files/vid_child.mp4",
                    "duration": "9.6",
                }
            ]
        },
        "created_at": 1_763_700_000_000,
        "updated_at": 1_763_700_004_000,
    }
    return json.dumps(task).encode()


def callback_paths(secret: bytes, count: int) -> list[str]:
    paths = []
    for n in range(count):
        chain_id, index = secrets.token_hex(8), n % 5
        paths.append(f"/callbacks/{chain_id}/{index}/{tokens.sign(secret, chain_id, index)}")
    return paths


def baseline_command(web_command: str) -> str:
    """The web command with the product's app swapped for the bare one, flags unchanged."""
    product = "webhook.app:create_app --factory"
    if product in web_command:
        return web_command.replace(product, "bench.baseline:app")
    return f"uvicorn bench.baseline:app --host {LOOPBACK} --port $PORT"


def run(root: Path, *, quick: bool) -> Section:
    section = Section("ingest")
    # Five alternating rounds in a full run: a single round's ratio moved between 0.39 and
    # 0.63 on this host within minutes, and the median of three still by several points.
    rounds, seconds = (2, 3.0) if quick else (5, 5.0)
    max_requests = 200_000
    stack = Stack(root / "logs")
    prefix, queue = new_prefix()
    secret = secrets.token_hex(32)
    web_port, base_port = free_port(), free_port()
    web_command = procfile_commands()["web"]
    env = {
        "REDIS_URL": REDIS_URL,
        "KEY_PREFIX": prefix,
        "CELERY_QUEUE": queue,
        "CALLBACK_SECRET": secret,
        "API_TOKEN": secrets.token_urlsafe(32),  # the web process will not start without one
        "PUBLIC_URL": f"http://{LOOPBACK}:{web_port}",
    }
    client = redis.Redis.from_url(REDIS_URL)
    try:
        web = stack.start("web", web_command, {**env, "PORT": str(web_port)})
        base = stack.start("baseline", baseline_command(web_command), {"PORT": str(base_port)})
        wait_http(f"http://{LOOPBACK}:{web_port}/healthz", proc=web)
        wait_http(f"http://{LOOPBACK}:{base_port}/healthz", proc=base)
        paths = callback_paths(secret.encode(), DISTINCT_PATHS)
        body = task_body()
        targets = {
            "service": f"http://{LOOPBACK}:{web_port}",
            "bare": f"http://{LOOPBACK}:{base_port}",
        }
        results: dict[str, list[LoadResult]] = {"service": [], "bare": []}
        cpu_per_request: dict[str, list[float]] = {"service": [], "bare": []}
        servers = {"service": web.pid, "bare": base.pid}
        for url in targets.values():  # warm up both (imports, first connections)
            run_load(url, paths, body, connections=CONNECTIONS, seconds=1, max_requests=2000)
        enqueued_before = int(client.llen(queue))
        answered = 0
        for number in range(rounds):
            order = ["bare", "service"] if number % 2 == 0 else ["service", "bare"]
            for name in order:
                cpu_before = tree_cpu_seconds(servers[name])
                result = run_load(
                    targets[name],
                    paths,
                    body,
                    connections=CONNECTIONS,
                    seconds=seconds,
                    max_requests=max_requests,
                )
                results[name].append(result)
                used = tree_cpu_seconds(servers[name]) - cpu_before
                cpu_per_request[name].append(used / max(1, result.requests) * 1e6)
                if name == "service":
                    answered += result.requests - result.errors
        enqueued = int(client.llen(queue)) - enqueued_before
    finally:
        stop_stack(stack)
        cleanup_keys(client, prefix, queue)
        client.close()

    svc, bare = results["service"], results["bare"]
    ratios = [s.rps / b.rps for s, b in zip(svc, bare, strict=True) if b.rps]
    rps, bare_rps = median(r.rps for r in svc), median(r.rps for r in bare)
    section.add(
        "callbacks/s (1 uvicorn process)",
        rps,
        "req/s",
        baseline=bare_rps,
        baseline_name="bare Starlette",
        goal=f">= {GOAL_RATIO:.0%} of baseline",
        met=rps / bare_rps >= GOAL_RATIO if bare_rps else None,
        runs=[round(r.rps, 1) for r in svc],
        note=f"median of {rounds} rounds; per-round ratios {[round(x, 3) for x in ratios]}",
    )
    section.add(
        "callback latency p50",
        median(r.p50_ms for r in svc),
        "ms",
        baseline=median(r.p50_ms for r in bare),
        baseline_name="bare Starlette",
        runs=[round(r.p50_ms, 2) for r in svc],
    )
    section.add(
        "callback latency p99",
        median(r.p99_ms for r in svc),
        "ms",
        baseline=median(r.p99_ms for r in bare),
        baseline_name="bare Starlette",
        runs=[round(r.p99_ms, 2) for r in svc],
    )
    section.add(
        "web CPU per callback",
        median(cpu_per_request["service"]),
        "us",
        baseline=median(cpu_per_request["bare"]),
        baseline_name="bare Starlette",
        runs=[round(x, 1) for x in cpu_per_request["service"]],
        note="CPU time of the uvicorn process over requests answered",
    )
    section.details = {
        "tool": svc[0].tool if svc else ("wrk" if have_wrk() else "asyncio"),
        "connections": CONNECTIONS,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "distinct_callback_urls": DISTINCT_PATHS,
        "body_bytes": len(task_body()),
        "web_command": web_command,
        "baseline_command": baseline_command(web_command),
        "service_runs": [vars(r) | {"rps": r.rps} for r in svc],
        "bare_runs": [vars(r) | {"rps": r.rps} for r in bare],
        "answered_2xx": answered,
        "tasks_enqueued": enqueued,
        "errors": sum(r.errors for r in svc),
    }
    return section
