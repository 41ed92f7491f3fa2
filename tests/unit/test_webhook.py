"""The web process's edges: validation, callback tokens, malformed and oversized bodies."""

from __future__ import annotations

import json
import logging
from typing import Any

import fakeredis
import pytest
import redis
from starlette.testclient import TestClient

from webhook import app as webapp
from worker.core import tokens
from worker.settings import Settings
from worker.tasknames import IMPORT_TASK, REFRESH_STEP, SUBMIT_STEP

SECRET = "s" * 32
TOKEN = "api-token-" + "x" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def callback_path(chain_id: str = "c1", index: int = 0, token: str | None = None) -> str:
    token = token or tokens.sign(SECRET.encode(), chain_id, index)
    return f"/callbacks/{chain_id}/{index}/{token}"


BODY = {"task_id": "t1", "task_status": "succeed", "created_at": 1, "updated_at": 2}


def test_valid_callback_is_acknowledged_and_queued_for_a_confirming_query(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    reply = client.post(callback_path(), json=BODY)
    assert reply.status_code == 200
    assert sent == [(REFRESH_STEP, ("c1", 0, "t1", None, "succeed"))]


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
    assert sent == [(SUBMIT_STEP, (chain["id"], 0))]
    assert client.get(f"/chains/{chain['id']}").json()["id"] == chain["id"]


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"text"'])
def test_create_chain_rejects_non_objects(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]], raw: bytes
) -> None:
    reply = client.post("/chains", content=raw, headers={"Content-Type": "application/json"})
    assert reply.status_code in (400, 422)
    assert "error" in reply.json()
    assert sent == []


def test_list_rejects_bad_paging(client: TestClient) -> None:
    assert client.get("/chains?limit=0").status_code == 422
    assert client.get("/chains?limit=x").status_code == 422
    assert client.get("/chains?before=yesterday").status_code == 422


def test_missing_callback_secret_is_a_readable_start_up_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings(kling_api_key="k", api_token=TOKEN)
    with pytest.raises(SystemExit) as stopped:
        webapp.create_app(settings, send_task=lambda *a, **k: None)
    assert stopped.value.code == 2
    assert "CALLBACK_SECRET must be set" in capsys.readouterr().err


@pytest.mark.parametrize(("token", "why"), [(None, "is not set"), ("short", "has only 5")])
def test_without_an_api_token_the_web_process_refuses_to_start(
    capsys: pytest.CaptureFixture[str], token: str | None, why: str
) -> None:
    settings = Settings(callback_secret=SECRET, kling_api_key="k", api_token=token)
    with pytest.raises(SystemExit) as stopped:
        webapp.create_app(settings, send_task=lambda *a, **k: None)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"API_TOKEN {why}" in err
    assert "openssl rand -hex 32" in err
    assert "API_AUTH=off" in err


def test_api_auth_off_is_an_explicit_and_logged_opt_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(redis.Redis, "from_url", lambda *a, **k: fakeredis.FakeRedis())
    settings = Settings(callback_secret=SECRET, kling_api_key="k", api_auth="off")
    client = TestClient(webapp.create_app(settings, send_task=lambda *a, **k: None))
    assert "API_AUTH=off" in caplog.text
    assert client.get("/chains").status_code == 200
    # Still no form posts from other web pages
    assert (
        client.post("/chains", content=b"{}", headers={"Content-Type": "text/plain"}).status_code
        == 415
    )


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/chains", "text/plain"),
        ("/chains", "application/x-www-form-urlencoded"),
        ("/chains", "multipart/form-data; boundary=x"),
        ("/chains", None),
        ("/archive", "text/plain;charset=UTF-8"),
    ],
)
def test_the_api_takes_json_bodies_only(
    client: TestClient,
    sent: list[tuple[str, tuple[Any, ...]]],
    path: str,
    content_type: str | None,
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = b'{"video_id": "v1", "steps": 1}'
    reply = client.post(path, content=body, headers=headers)
    assert reply.status_code == 415
    assert "application/json" in reply.json()["error"]
    assert sent == []
    ok = client.post(
        "/chains", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 202


def test_provider_callbacks_take_any_content_type(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    reply = client.post(
        callback_path(), content=json.dumps(BODY), headers={"Content-Type": "text/plain"}
    )
    assert reply.status_code == 200
    assert len(sent) == 1


DEEP = b"[" * 30_000 + b"]" * 30_000  # under the callbacks' 64 KiB cap, past the stack


@pytest.mark.parametrize("path", ["/chains", callback_path(), "/callbacks/archive/text2video/x"])
def test_deeply_nested_json_is_a_client_error(client: TestClient, path: str) -> None:
    if "archive" in path:
        path = f"/callbacks/archive/text2video/{tokens.sign_archive(SECRET.encode(), 'text2video')}"
    reply = client.post(path, content=DEEP, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400
    assert "nested too deeply" in reply.json()["error"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("path", ["/chains", "/archive", "/archive.jsonl"])
def test_a_paging_cursor_must_be_a_finite_number(client: TestClient, path: str, value: str) -> None:
    assert client.get(f"{path}?before={value}").status_code == 422


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/callbacks/c1/0/SECRETTOKEN", "/callbacks/c1/0/<token>"),
        ("/callbacks/archive/text2video/SECRETTOKEN", "/callbacks/archive/text2video/<token>"),
        ("/callbacks/c1/0/SECRETTOKEN?x=1", "/callbacks/c1/0/<token>?x=1"),
        ("/chains/c1", "/chains/c1"),
    ],
)
def test_callback_tokens_are_redacted_from_logged_paths(path: str, logged: str) -> None:
    assert webapp.redact_path(path) == logged


def access_record(path: str, status: int) -> logging.LogRecord:
    """An access line as uvicorn makes it, through the filters the web put on its logger."""
    return logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", path, "1.1", status),
        None,
    )


def passes(record: logging.LogRecord) -> bool:
    return all(f.filter(record) for f in logging.getLogger("uvicorn.access").filters)  # type: ignore[union-attr]


def test_uvicorns_access_log_never_shows_a_callback_token(client: TestClient) -> None:
    record = access_record(callback_path(), 403)
    assert passes(record)
    line = record.getMessage()
    assert tokens.sign(SECRET.encode(), "c1", 0) not in line
    assert "/callbacks/c1/0/<token>" in line


def test_a_callback_answered_2xx_has_no_access_line_beside_the_webs_own(
    client: TestClient,
) -> None:
    assert not passes(access_record(callback_path(), 200))
    assert not passes(access_record(archive_callback(), 200))
    assert passes(access_record(callback_path(), 400))
    assert passes(access_record(callback_path(), 503))
    assert passes(access_record("/chains", 201))  # other routes keep every line


def archive_callback(kind: str = "text2video") -> str:
    return f"/callbacks/archive/{kind}/{tokens.sign_archive(SECRET.encode(), kind)}"


def test_an_archive_callback_storm_queues_one_query(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    for _ in range(20):
        assert client.post(archive_callback(), json=BODY).status_code == 200
    assert sent == [(IMPORT_TASK, ("text2video", "t1", "callback"))]
    again = client.post("/archive", json={"tasks": [{"task_id": "t1", "kind": "text2video"}]})
    assert again.json() == {
        "queued": [],
        "already_queued": [{"task_id": "t1", "kind": "text2video"}],
    }
    assert len(sent) == 1


@pytest.mark.parametrize("task_id", ["../../x", ".hidden", "a/b", "x" * 200])
def test_an_archive_callback_naming_an_unsafe_task_id_is_refused(
    client: TestClient, sent: list[tuple[str, tuple[Any, ...]]], task_id: str
) -> None:
    reply = client.post(archive_callback(), json={**BODY, "task_id": task_id})
    assert reply.status_code == 400
    assert sent == []


def test_api_token_guards_the_api_but_not_callbacks_or_health(
    monkeypatch: pytest.MonkeyPatch, sent: list[tuple[str, tuple[Any, ...]]]
) -> None:
    server = fakeredis.FakeServer()
    monkeypatch.setattr(redis.Redis, "from_url", lambda *a, **k: fakeredis.FakeRedis(server=server))
    settings = Settings(callback_secret=SECRET, kling_api_key="k", api_token=TOKEN)
    client = TestClient(
        webapp.create_app(settings, send_task=lambda name, args: sent.append((name, args)))
    )
    body = {"video_id": "v1", "steps": 1}
    assert client.post("/chains", json=body).status_code == 401
    assert (
        client.post("/chains", json=body, headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    for path in ("/chains", "/chains/x", "/archive", "/archive.jsonl", "/archive/callback-urls"):
        assert client.get(path).status_code == 401, path
    assert client.get("/metrics").status_code == 401
    assert sent == []
    ok = client.post("/chains", json=body, headers=AUTH)
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
