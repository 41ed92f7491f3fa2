"""The web app on fakeredis, as the unit tests of its routes use it."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
import redis
from starlette.testclient import TestClient

from webhook import app as webapp
from worker.settings import Settings

SECRET = "s" * 32
TOKEN = "api-token-" + "x" * 32


@pytest.fixture
def sent() -> list[tuple[str, tuple[Any, ...]]]:
    """The tasks the web app enqueued: (name, args)."""
    return []


@pytest.fixture
def web_settings() -> dict[str, Any]:
    """Settings the ``client`` fixture's app gets on top of its own; a module overrides it."""
    return {}


@pytest.fixture
def client(
    monkeypatch: pytest.MonkeyPatch,
    sent: list[tuple[str, tuple[Any, ...]]],
    web_settings: dict[str, Any],
) -> TestClient:
    """The web app with the API token sent, its Redis a fakeredis server, tasks into ``sent``."""
    server = fakeredis.FakeServer()
    monkeypatch.setattr(redis.Redis, "from_url", lambda *a, **k: fakeredis.FakeRedis(server=server))
    settings = Settings(callback_secret=SECRET, kling_api_key="k", api_token=TOKEN, **web_settings)

    def send_task(name: str, args: tuple[Any, ...]) -> None:
        sent.append((name, tuple(args)))

    headers = {"Authorization": f"Bearer {TOKEN}"}
    return TestClient(webapp.create_app(settings, send_task=send_task), headers=headers)
