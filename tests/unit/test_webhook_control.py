"""``POST /chains/{id}/cancel`` and ``/resume``: the status codes the contract names."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from worker.tasknames import ANNOUNCE_END, SUBMIT_STEP

TOKEN = "api-token-" + "x" * 32


def start(client: TestClient) -> str:
    reply = client.post("/chains", json={"video_id": "v1", "task_id": "t1", "steps": 2})
    chain_id: str = reply.json()["id"]
    return chain_id


def test_cancel_is_accepted_once_and_a_repeat_changes_nothing(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    chain_id = start(client)
    sent.clear()
    reply = client.post(f"/chains/{chain_id}/cancel", json={})
    assert reply.status_code == 202
    first = reply.json()
    assert first["status"] == "cancelled"  # nothing was sent yet: it ends at once
    assert first["cancelled_at"] is not None
    again = client.post(f"/chains/{chain_id}/cancel", json={})
    assert again.status_code == 202
    assert again.json() == first
    assert sent == [(ANNOUNCE_END, (chain_id,))]  # its end, announced by the worker, once


def test_resume_of_a_cancelled_chain_queues_its_submit(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    chain_id = start(client)
    client.post(f"/chains/{chain_id}/cancel", json={})
    sent.clear()
    reply = client.post(f"/chains/{chain_id}/resume", json={})
    assert reply.status_code == 202
    assert reply.json()["status"] == "queued"
    assert sent == [(SUBMIT_STEP, (chain_id, 0))]


def test_resume_of_a_chain_that_is_running_is_a_conflict(client: TestClient) -> None:
    chain_id = start(client)
    reply = client.post(f"/chains/{chain_id}/resume", json={})
    assert reply.status_code == 409
    assert "only a failed or cancelled chain" in reply.json()["error"]
    assert reply.json()["chain_status"] == "queued"


@pytest.mark.parametrize("command", ["cancel", "resume"])
def test_unknown_chains_are_404_and_bodies_must_be_json(client: TestClient, command: str) -> None:
    assert client.post(f"/chains/nope/{command}", json={}).status_code == 404
    chain_id = start(client)
    assert client.post(f"/chains/{chain_id}/{command}", content=b"").status_code == 415
    anonymous = client.post(f"/chains/{chain_id}/{command}", json={}, headers={"Authorization": ""})
    assert anonymous.status_code == 401
