"""``kling-chain demo``: the whole service on one machine, with nothing installed but Python.

An embedded Redis-compatible server (fakeredis), the fake Kling gateway, and the web, worker
and beat processes of the Procfile; then a chain from a 5 s video to 30 s, watched live.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from pathlib import Path

import requests

from worker.cli import Api, summary, watch
from worker.devstack import (
    Stack,
    embedded_redis,
    find_procfile,
    free_port,
    local_env,
    python_module,
    wait_http,
)

REAL_SETUP = """
The same service against a real provider and a real Redis (see README, "Configuration"):
  export REDIS_URL=redis://your-redis:6379/0
  export KLING_BASE_URL=https://api-singapore.klingai.com   # or a gateway, e.g. https://gw/kling
  export KLING_ACCESS_KEY=... KLING_SECRET_KEY=...          # or KLING_API_KEY=sk-... for gateways
  export PUBLIC_URL=https://your-host   CALLBACK_SECRET=$(openssl rand -hex 32)
  export API_TOKEN=$(openssl rand -hex 32)                  # the API and the CLI need it
  honcho start        # or any Procfile runner: web, worker and beat
  kling-chain extend VIDEO_ID --task-id TASK_ID --to 30 --wait
"""


def run_demo(*, target: float, delay: float, archive_dir: str) -> int:
    logs = Path(tempfile.mkdtemp(prefix="kling-chain-demo-"))
    stack = Stack(logs)
    redis_port, gateway_port, web_port = free_port(), free_port(), free_port()
    api_key = secrets.token_hex(12)
    archive = Path(archive_dir).resolve()
    print(f"demo: logs in {logs}")
    with embedded_redis(redis_port) as redis_url:
        print(f"demo: embedded Redis (fakeredis) at {redis_url}")
        try:
            gateway = f"http://127.0.0.1:{gateway_port}"
            proc = stack.start(
                "gateway",
                python_module(
                    "kling.fake",
                    "--port",
                    str(gateway_port),
                    "--delay",
                    str(delay),
                    "--api-key",
                    api_key,
                ),
                {},
            )
            wait_http(f"{gateway}/_fake/stats", proc=proc)
            print(f"demo: fake Kling gateway at {gateway} ({delay:g} s per task)")
            seed = requests.post(
                f"{gateway}/_fake/videos", json={"duration": 5.0}, timeout=5
            ).json()
            print(
                f"demo: the gateway holds a 5 s video {seed['video_id']} (task {seed['task_id']})"
            )

            env = local_env(
                redis_url=f"{redis_url}/0",
                gateway=gateway,
                api_key=api_key,
                web_port=web_port,
                root=logs,
                archive_dir=str(archive),
                poll_after_seconds="20",
                sweep_seconds="5",
            )
            for name, command in find_procfile().items():
                stack.start(name, command, env)
            wait_http(f"http://127.0.0.1:{web_port}/healthz", proc=stack.procs.get("web"))
            print(
                f"demo: web, worker and beat running (Procfile); API at http://127.0.0.1:{web_port}"
                f" with API_TOKEN={env['API_TOKEN']}"
            )

            api = Api(f"http://127.0.0.1:{web_port}", token=env["API_TOKEN"])
            chain = api.create(
                {
                    "video_id": seed["video_id"],
                    "task_id": seed["task_id"],
                    "source_duration": 5.0,
                    "target_seconds": target,
                    "prompt": "the camera keeps drifting forward",
                }
            )
            print(f"demo: chain {chain['id']}: extend {seed['video_id']} from 5 s to {target:g} s")
            final = watch(api, chain["id"], sys.stdout, interval=0.5)
            print(summary(final))
            print(REAL_SETUP)
            return 0 if final["status"] == "succeeded" else 1
        except (RuntimeError, TimeoutError, requests.RequestException) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            for name in stack.procs:
                print(f"--- {name} log (last lines) ---\n{stack.tail(name)}", file=sys.stderr)
            return 1
        finally:
            stack.stop()
