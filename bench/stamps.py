"""The web process with a clock on its callback route, for the step-turnaround benchmark.

``create_app`` is ``webhook.app.create_app`` wrapped in an ASGI middleware that notes, for
every ``POST /callbacks/{chain}/{step}/...``, the wall-clock time its request reached the
process (before routing, token check or body) and the task status named in its body.
``GET /_bench/callbacks`` returns what was noted. The product's handling is untouched; the
middleware costs one ``time.time()`` and a list append per callback.

Run it as the Procfile runs the real one:
``uvicorn bench.stamps:create_app --factory --host 127.0.0.1 --port $PORT``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhook.app import create_app as create_web_app

STAMPS_PATH = "/_bench/callbacks"


class CallbackClock:
    """ASGI middleware: (arrival time, chain id, step index, task status) per callback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.stamps: list[tuple[float, str, int, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == STAMPS_PATH:
            await self._report(send)
            return
        if scope["method"] != "POST" or not path.startswith("/callbacks/"):
            await self.app(scope, receive, send)
            return
        arrived = time.time()
        parts = path.split("/")
        body = bytearray()

        async def tap() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    self._note(arrived, parts, bytes(body))
            return message

        await self.app(scope, tap, send)

    def _note(self, arrived: float, parts: list[str], body: bytes) -> None:
        try:
            status = str(json.loads(body).get("task_status", ""))
            chain_id, index = parts[2], int(parts[3])
        except (ValueError, IndexError, AttributeError):
            return
        self.stamps.append((arrived, chain_id, index, status))

    async def _report(self, send: Send) -> None:
        payload = json.dumps(self.stamps).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def create_app() -> Any:
    return CallbackClock(create_web_app())
