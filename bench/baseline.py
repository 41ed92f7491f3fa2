"""The baseline for callback ingest: a bare Starlette endpoint on the callback's route.

It reads the body and answers 200 with a small JSON object, and does nothing else: no token,
no parsing, no Redis. Served by uvicorn with the web process's settings:
``uvicorn bench.baseline:app --host 127.0.0.1 --port $PORT``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def callback(request: Request) -> Response:
    await request.body()
    return JSONResponse({"ok": True})


async def healthz(request: Request) -> Response:
    return JSONResponse({"redis": True})


app = Starlette(
    routes=[
        Route("/callbacks/{chain_id}/{index:int}/{token}", callback, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)
