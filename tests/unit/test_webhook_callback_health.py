"""``/healthz``'s ``callbacks``: the web process notes provider callbacks that pass their
checks, and says whether callbacks arrive (fakeredis; the ``client`` fixture)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.testclient import TestClient

from worker.core import tokens

SECRET = "s" * 32
BODY = {"task_id": "t1", "task_status": "processing", "created_at": 1, "updated_at": 2}


def callbacks(client: TestClient) -> dict[str, Any]:
    reply = client.get("/healthz")
    assert reply.status_code == 200
    assert reply.json()["redis"] is True
    found: dict[str, Any] = reply.json()["callbacks"]
    return found


def test_loopback_public_url_and_no_callback_means_polling(client: TestClient) -> None:
    health = callbacks(client)
    assert health["reachable"] is False
    assert health["last_seen_at"] is None
    assert "PUBLIC_URL http://localhost:8000 is a loopback address" in health["reason"]


def test_a_valid_callback_shows_callbacks_arrive(client: TestClient) -> None:
    path = f"/callbacks/c1/0/{tokens.sign(SECRET.encode(), 'c1', 0)}"
    assert client.post(path, json=BODY).status_code == 200
    health = callbacks(client)
    assert health["reachable"] is True
    assert health["last_seen_at"] is not None
    assert "a provider callback arrived" in health["reason"]


def test_a_forged_callback_does_not_count(client: TestClient) -> None:
    forged = f"/callbacks/c1/0/{tokens.sign(b'another-secret-another-secret', 'c1', 0)}"
    assert client.post(forged, json=BODY).status_code == 403
    assert callbacks(client)["reachable"] is False


class TestAPublicUrl:
    @pytest.fixture
    def web_settings(self) -> dict[str, Any]:
        return {"public_url": "https://chains.example.com"}

    def test_without_callbacks_says_none_arrived_yet(self, client: TestClient) -> None:
        health = callbacks(client)
        assert health["reachable"] is False
        assert "no provider callback has arrived yet" in health["reason"]
        assert "relies on polling" in health["reason"]


def test_start_up_warns_when_callbacks_cannot_arrive(
    caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    with caplog.at_level(logging.WARNING, logger="webhook.app"):
        request.getfixturevalue("client")
    assert any(
        "callbacks: PUBLIC_URL http://localhost:8000 is a loopback address" in r.getMessage()
        for r in caplog.records
    )
