"""The web process's edges: validation, callback tokens, malformed and oversized bodies."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from starlette.testclient import TestClient

from webhook import app as webapp
from worker import tokens
from worker.runner import REFRESH_TASK, SUBMIT_TASK
from worker.settings import Settings

SECRET = "s" * 32


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    return []


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, sent: list[tuple[str, tuple[Any, ...]]]) -> TestClient:
    server = fakeredis.FakeServer()
    monkeypatch.setattr(
        webapp.redis.Redis, "from_url", lambda *a, **k: fakeredis.FakeRedis(server=server)
    )
    settings = Settings(callback_secret=SECRET, kling_api_key="k")  # type: ignore[arg-type]

    def send_task(name: str, args: tuple[Any, ...]) -> None:
        sent.append((name, tuple(args)))

    return TestClient(webapp.create_app(settings, send_task=send_task))


def callback_path(chain_id: str = "c1", index: int = 0, token: str | None = None) -> str:
    token = token or tokens.sign(SECRET.encode(), chain_id, index)
    return f"/callbacks/{chain_id}/{index}/{token}"


BODY = {"task_id": "t1", "task_status": "succeed", "created_at": 1, "updated_at": 2}


def test_valid_callback_is_acknowledged_and_queued_for_a_confirming_query(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    reply = client.post(callback_path(), json=BODY)
    assert reply.status_code == 200
    assert sent == [(REFRESH_TASK, ("c1", 0))]


def test_enveloped_callback_is_accepted(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    body = {"code": 0, "message": "SUCCEED", "request_id": "r", "data": BODY}
    assert client.post(callback_path(), json=body).status_code == 200
    assert len(sent) == 1


@pytest.mark.parametrize(
    "path",
    [
        callback_path(token="A" * 32),
        callback_path(token=tokens.sign(SECRET.encode(), "c1", 1)),  # another step's token
        callback_path(token=tokens.sign(b"another-secret-another-secret", "c1", 0)),
        callback_path(chain_id="c2", token=tokens.sign(SECRET.encode(), "c1", 0)),
    ],
)
def test_forged_callback_is_refused_and_changes_nothing(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]], path: str
) -> None:
    reply = client.post(path, json=BODY)
    assert reply.status_code == 403
    assert reply.json() == {"error": "invalid callback token"}
    assert sent == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"task_status": "succeed"}',
        b'{"task_id": "t", "task_status": "exploded"}',
        b'{"task_id": ["t"], "task_status": "succeed"}',
        b"\xff\xfe",
    ],
)
def test_malformed_callback_is_400_never_500(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]], body: bytes
) -> None:
    reply = client.post(callback_path(), content=body)
    assert reply.status_code == 400
    assert "not a Kling task object" in reply.json()["error"]
    assert sent == []


def test_oversized_callback_is_413(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    reply = client.post(callback_path(), content=b"{" + b" " * (webapp.MAX_CALLBACK_BYTES + 1))
    assert reply.status_code == 413
    assert sent == []


def test_create_chain_stores_it_and_queues_the_first_step(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    reply = client.post("/chains", json={"video_id": "v1", "task_id": "t1", "target_seconds": 30})
    assert reply.status_code == 202
    chain = reply.json()
    assert chain["status"] == "queued"
    assert chain["steps"][0]["parent_video_id"] == "v1"
    assert sent == [(SUBMIT_TASK, (chain["id"], 0))]
    assert client.get(f"/chains/{chain['id']}").json()["id"] == chain["id"]


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"text"'])
def test_create_chain_rejects_non_objects(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]], raw: bytes
) -> None:
    reply = client.post("/chains", content=raw)
    assert reply.status_code in (400, 422)
    assert "error" in reply.json()
    assert sent == []


def test_list_rejects_bad_paging(client: TestClient) -> None:
    assert client.get("/chains?limit=0").status_code == 422
    assert client.get("/chains?limit=x").status_code == 422
    assert client.get("/chains?before=yesterday").status_code == 422


def test_missing_callback_secret_is_a_readable_start_up_error() -> None:
    settings = Settings(kling_api_key="k")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="CALLBACK_SECRET must be set"):
        webapp.create_app(settings, send_task=lambda *a, **k: None)


def test_api_token_guards_the_api_but_not_callbacks_or_health(
    monkeypatch: pytest.MonkeyPatch, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    server = fakeredis.FakeServer()
    monkeypatch.setattr(
        webapp.redis.Redis, "from_url", lambda *a, **k: fakeredis.FakeRedis(server=server)
    )
    settings = Settings(callback_secret=SECRET, kling_api_key="k", api_token="t0ken")  # type: ignore[arg-type]
    client = TestClient(
        webapp.create_app(settings, send_task=lambda name, args: sent.append((name, args)))
    )
    body = {"video_id": "v1", "steps": 1}
    assert client.post("/chains", json=body).status_code == 401
    assert (
        client.post("/chains", json=body, headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    assert client.get("/archive").status_code == 401
    assert sent == []
    ok = client.post("/chains", json=body, headers={"Authorization": "Bearer t0ken"})
    assert ok.status_code == 202
    assert client.get("/healthz").status_code == 200
    assert client.post(callback_path(), json=BODY).status_code == 200


def test_idempotency_key_makes_a_retried_post_return_the_same_chain(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    body = {"video_id": "v1", "task_id": "t1", "steps": 2}
    headers = {"Idempotency-Key": "order-7731"}
    first = client.post("/chains", json=body, headers=headers)
    again = client.post("/chains", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(sent) == 1
    other = client.post("/chains", json={**body, "steps": 3}, headers=headers)
    assert other.status_code == 422
    assert "different request" in other.json()["error"]
    fresh = client.post("/chains", json=body, headers={"Idempotency-Key": "order-7732"})
    assert fresh.status_code == 202
    assert fresh.json()["id"] != first.json()["id"]
