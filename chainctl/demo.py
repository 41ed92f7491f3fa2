"""``kling-chain demo``: the whole service on one machine, with nothing installed but Python.

An embedded Redis-compatible server (fakeredis), the fake Kling gateway, and the web, worker
and beat processes of the Procfile; then a chain from a 5 s video to 30 s, watched live.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import requests

from chainctl.cli import Api, summary, watch
from chainctl.devstack import Stack, embedded_redis, free_port, start_local

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


def dashboard_url(api: str, env: dict[str, str]) -> str:
    """The dashboard with the demo's token in the fragment, which never reaches the server
    (the page moves it to the tab's session storage and drops it from the address bar)."""
    return f"{api.rstrip('/')}/#token={quote(env['API_TOKEN'], safe='')}"


def run_demo(*, target: float, delay: float, archive_dir: str, stay: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="kling-chain-demo-"))
    stack = Stack(root / "logs")
    archive = Path(archive_dir).resolve()
    print(f"demo: logs in {root / 'logs'}")
    with embedded_redis(free_port()) as redis_url:
        print(f"demo: embedded Redis (fakeredis) at {redis_url}")
        try:
            local = start_local(
                stack,
                root,
                redis_url=f"{redis_url}/0",
                delay=delay,
                archive_dir=str(archive),
                poll_after_seconds="20",
                sweep_seconds="5",
            )
            print(f"demo: fake Kling gateway at {local.gateway} ({delay:g} s per task)")
            print(
                f"demo: web, worker and beat running (Procfile); API at {local.api}"
                f" with API_TOKEN={local.env['API_TOKEN']}"
            )
            print(f"demo: watch it in the dashboard: {dashboard_url(local.api, local.env)}")
            seed = requests.post(
                f"{local.gateway}/_fake/videos", json={"duration": 5.0}, timeout=5
            ).json()
            print(
                f"demo: the gateway holds a 5 s video {seed['video_id']} (task {seed['task_id']})"
            )
            api = Api(local.api, token=local.env["API_TOKEN"])
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
            if stay:  # keep the dashboard up: the chain's page plays the archived video
                print(f"demo: the dashboard stays at {dashboard_url(local.api, local.env)}")
                print("demo: press Ctrl-C to stop")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
            return 0 if final["status"] == "succeeded" else 1
        except (RuntimeError, TimeoutError, requests.RequestException) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            for name in stack.procs:
                print(f"--- {name} log (last lines) ---\n{stack.tail(name)}", file=sys.stderr)
            return 1
        finally:
            stack.stop()
