"""The API client against scripted replies (httpx's MockTransport): the error replies it maps
to exceptions, the create it sends again with the same Idempotency-Key, waiting, paging."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from chainctl.client import (
    ApiError,
    AsyncClient,
    BadRequest,
    Chain,
    Client,
    Conflict,
    NotFound,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
    UnexpectedReply,
    UnsupportedMediaType,
    ValidationFailed,
    WaitTimeout,
)

TOKEN = "t" * 32
Handler = Callable[[httpx.Request], httpx.Response]


def chain_json(status: str = "queued", **more: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "status": status,
        "end_reason": None,
        "error": None,
        "waiting": None,
        "cancelled_at": None,
        "duration": None,
        "target_seconds": 30,
        "steps_requested": None,
        "created_at": 1700000000.5,
        "updated_at": 1700000000.5,
        "steps": [],
        "units": None,
        "units_complete": False,
        "archive": [],
        **more,
    }


class Script:
    """Answers each request with the next reply (or raises the next exception) and keeps
    every request it saw."""

    def __init__(self, *replies: httpx.Response | Exception) -> None:
        self.replies = list(replies)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def client(self, **options: Any) -> Client:
        return Client(
            "http://kc.test/base", token=TOKEN, transport=httpx.MockTransport(self), **options
        )

    def async_client(self, **options: Any) -> AsyncClient:
        return AsyncClient(
            "http://kc.test/base", token=TOKEN, transport=httpx.MockTransport(self), **options
        )

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.seen]


def reply(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body)


# -- error replies -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (413, TooLarge),
        (415, UnsupportedMediaType),
        (422, ValidationFailed),
        (502, Unavailable),
        (503, Unavailable),
        (500, ApiError),
        (418, ApiError),
    ],
)
def test_each_error_status_raises_its_exception_with_the_message(
    status: int, kind: type[ApiError]
) -> None:
    script = Script(reply(status, {"error": "it went wrong"}))
    with pytest.raises(kind) as raised:
        script.client().get("c1")
    assert type(raised.value) is kind
    assert raised.value.status == status
    assert raised.value.message == "it went wrong"
    assert raised.value.details == []
    assert str(raised.value) == f"it went wrong (HTTP {status})"


def test_a_422_carries_each_field_and_message() -> None:
    body = {
        "error": "invalid chain request",
        "details": [
            {"field": "target_seconds", "message": "Input should be less than or equal to 180"},
            {"field": None, "message": "give target_seconds (up to 180) or steps (at least 1)"},
        ],
    }
    script = Script(reply(422, body))
    with pytest.raises(ValidationFailed) as raised:
        script.client().create(video_id="v1", target_seconds=500)
    err = raised.value
    assert [(d.field, d.message) for d in err.details] == [
        ("target_seconds", "Input should be less than or equal to 180"),
        (None, "give target_seconds (up to 180) or steps (at least 1)"),
    ]
    assert err.fields["target_seconds"] == "Input should be less than or equal to 180"
    assert str(err) == (
        "invalid chain request (HTTP 422)\n"
        "  target_seconds: Input should be less than or equal to 180\n"
        "  request: give target_seconds (up to 180) or steps (at least 1)"
    )
    assert len(script.seen) == 1  # refused: never sent again


def test_a_409_says_the_chain_status() -> None:
    script = Script(reply(409, {"error": "the chain succeeded already", "chain_status": "x"}))
    with pytest.raises(Conflict) as raised:
        script.client().resume("c1")
    assert raised.value.chain_status == "x"
    assert raised.value.body["chain_status"] == "x"


def test_an_error_page_that_is_not_json_keeps_its_text() -> None:
    script = Script(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(Unavailable, match="Bad Gateway"):
        script.client().get("c1")


def test_a_success_that_is_not_the_api_json_is_an_unexpected_reply() -> None:
    with pytest.raises(UnexpectedReply):
        Script(httpx.Response(200, text="hello")).client().get("c1")
    with pytest.raises(UnexpectedReply, match="'id'"):
        Script(reply(200, {"status": "queued"})).client().get("c1")


def test_an_unreachable_service_is_a_transport_error() -> None:
    script = Script(httpx.ConnectError("refused"))
    with pytest.raises(TransportError, match=r"cannot reach the service at http://kc\.test/base"):
        script.client().get("c1")


# -- create and its Idempotency-Key ------------------------------------------------------------
@pytest.mark.parametrize(
    "lost",
    [
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
        httpx.ConnectError("refused"),
    ],
    ids=["timeout", "disconnected", "reset", "refused"],
)
def test_a_create_whose_reply_was_lost_is_sent_again_with_the_same_key(lost: Exception) -> None:
    told: list[tuple[str, str]] = []
    script = Script(lost, reply(200, chain_json()))
    chain = script.client(
        retry_pause=0, on_retry=lambda e, k: told.append((type(e).__name__, k))
    ).create(video_id="v1", steps=2)
    assert chain.id == "c1"
    keys = [r.headers["Idempotency-Key"] for r in script.seen]
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert keys[0].startswith("client-")
    assert told == [("TransportError", keys[0])]
    assert script.bodies() == [{"video_id": "v1", "steps": 2}] * 2


def test_a_create_still_being_stored_409_is_asked_again_with_the_same_key() -> None:
    busy = reply(409, {"error": "a request with this Idempotency-Key is still being processed"})
    script = Script(busy, reply(200, chain_json()))
    assert script.client(retry_pause=0).create(video_id="v1", steps=1).id == "c1"
    assert len({r.headers["Idempotency-Key"] for r in script.seen}) == 1
    assert len(script.seen) == 2


def test_a_create_that_never_answers_gives_up_after_three_attempts_with_one_key() -> None:
    script = Script(httpx.ReadTimeout("slow"))
    with pytest.raises(TransportError) as raised:
        script.client(retry_pause=0).create(video_id="v1", steps=1)
    assert raised.value.reply_lost
    assert len(script.seen) == 3
    assert len({r.headers["Idempotency-Key"] for r in script.seen}) == 1


@pytest.mark.parametrize("status", [400, 401, 413, 415, 422, 500, 503])
def test_a_refused_create_is_sent_once(status: int) -> None:
    script = Script(reply(status, {"error": "no"}))
    with pytest.raises(ApiError):
        script.client(retry_pause=0).create(video_id="v1", steps=1)
    assert len(script.seen) == 1


def test_a_bad_url_is_not_retried() -> None:
    script = Script(httpx.UnsupportedProtocol("no such scheme"))
    with pytest.raises(TransportError) as raised:
        script.client(retry_pause=0).create(video_id="v1", steps=1)
    assert not raised.value.reply_lost
    assert len(script.seen) == 1


def test_each_create_gets_a_fresh_key_unless_one_is_given() -> None:
    script = Script(reply(202, chain_json()))
    client = script.client()
    client.create(video_id="v1", steps=1)
    client.create(video_id="v1", steps=1)
    client.create(video_id="v1", steps=1, idempotency_key="order-17")
    keys = [r.headers["Idempotency-Key"] for r in script.seen]
    assert keys[0] != keys[1]
    assert keys[2] == "order-17"


def test_create_sends_json_with_the_token_and_passes_unknown_fields_through() -> None:
    script = Script(reply(202, chain_json(max_units="12.5", metadata={"order": 7})))
    chain = script.client().create(
        {"video_id": "from-body", "future_field": [1, 2], "prompt": None},
        video_id="v1",
        prompts=("a", "b"),
        max_units="12.5",
        metadata={"order": 7},
        webhook_url="https://hooks.example/kc",
        webhook_events=["chain.succeeded"],
        negative_prompt=None,
    )
    [request] = script.seen
    assert request.method == "POST"
    assert str(request.url) == "http://kc.test/base/chains"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert script.bodies() == [
        {
            "video_id": "v1",
            "future_field": [1, 2],
            "prompts": ["a", "b"],
            "max_units": "12.5",
            "metadata": {"order": 7},
            "webhook_url": "https://hooks.example/kc",
            "webhook_events": ["chain.succeeded"],
        }
    ]
    assert chain["max_units"] == "12.5"  # a field the client has no attribute for yet
    assert chain.get("metadata") == {"order": 7}
    assert chain.get("not-there", "absent") == "absent"


# -- reading -----------------------------------------------------------------------------------
def test_a_chain_view_is_typed() -> None:
    step = {
        "index": 0,
        "kind": "video-extend",
        "task_id": "t1",
        "status": "succeed",
        "parent_video_id": "v0",
        "video_id": "v1",
        "duration": 10,
        "error": None,
        "units": "1",
    }
    entry = {
        "video_id": "v1",
        "status": "done",
        "path": "/a/v1.mp4",
        "bytes": 100,
        "sha256": "ab",
        "duration": 10.0,
        "error": None,
    }
    body = chain_json("succeeded", steps=[step], archive=[entry], units="1", units_complete=True)
    chain = Script(reply(200, body)).client().get("c1")
    assert chain.terminal
    assert chain.target_seconds == 30.0
    assert chain.steps[0].duration == 10.0
    assert chain.steps[0].video_id == "v1"
    assert chain.archive[0].path == "/a/v1.mp4"
    assert chain.units == "1"
    assert chain.units_complete
    assert chain.raw == body


def test_chain_ids_are_quoted_into_the_path() -> None:
    script = Script(reply(202, chain_json()))
    client = script.client()
    client.cancel("a/../b")
    client.resume("c1")
    assert [r.url.raw_path for r in script.seen] == [
        b"/base/chains/a%2F..%2Fb/cancel",
        b"/base/chains/c1/resume",
    ]
    assert script.bodies() == [{}, {}]  # a POST to the API is JSON
    with pytest.raises(ValueError, match="chain_id"):
        client.get("")


def test_list_and_archived_send_their_query() -> None:
    script = Script(reply(200, {"chains": [chain_json()], "next_before": 1699.5}))
    page = script.client().list(limit=5, before=1700.0, status="running")
    assert script.seen[0].url.params == httpx.QueryParams(
        {"limit": "5", "before": "1700.0", "status": "running"}
    )
    assert [c.id for c in page.chains] == ["c1"]
    assert page.next_before == 1699.5
    script = Script(reply(200, {"videos": [], "next_before": None, "counts": {"pending": 2}}))
    archive = script.client().archived(state="pending")
    assert script.seen[0].url.params == httpx.QueryParams({"state": "pending", "limit": "50"})
    assert archive.counts == {"pending": 2}


def test_archive_takes_one_id_or_many() -> None:
    script = Script(
        reply(202, {"queued": [{"task_id": "t1", "kind": "text2video"}], "already_queued": []})
    )
    client = script.client()
    queued = client.archive("t1", kind="text2video")
    client.archive(["t1", "t2"])
    assert queued.queued[0].task_id == "t1"
    assert script.bodies() == [
        {"tasks": [{"task_id": "t1", "kind": "text2video"}]},
        {
            "tasks": [
                {"task_id": "t1", "kind": "video-extend"},
                {"task_id": "t2", "kind": "video-extend"},
            ]
        },
    ]


def test_health_is_false_while_redis_is_down() -> None:
    assert Script(reply(200, {"redis": True})).client().health()
    assert not Script(reply(503, {"redis": False})).client().health()


def test_base_url_and_token_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLING_CHAIN_API", "http://from-env.test:9/")
    monkeypatch.setenv("API_TOKEN", "env-token")
    script = Script(reply(200, chain_json()))
    Client(transport=httpx.MockTransport(script)).get("c1")
    assert str(script.seen[0].url) == "http://from-env.test:9/chains/c1"
    assert script.seen[0].headers["Authorization"] == "Bearer env-token"
    monkeypatch.delenv("KLING_CHAIN_API")
    monkeypatch.setenv("PORT", "8123")
    assert Client(token="").base_url == "http://127.0.0.1:8123"
    assert "Authorization" not in Client(token="").headers


# -- waiting -----------------------------------------------------------------------------------
def statuses(*names: str) -> Iterator[httpx.Response]:
    for name in names:
        yield reply(200, chain_json(name, duration=len(name)))


def test_wait_tells_each_changed_view_and_returns_the_end() -> None:
    script = Script(*statuses("queued", "queued", "running", "running", "succeeded"))
    seen: list[str] = []
    final = script.client().wait("c1", on_progress=lambda c: seen.append(c.status), poll_seconds=0)
    assert final.status == "succeeded"
    assert seen == ["queued", "running", "succeeded"]
    assert len(script.seen) == 5


def test_wait_gives_up_after_its_timeout_with_the_last_view() -> None:
    script = Script(reply(200, chain_json("running")))
    with pytest.raises(WaitTimeout) as raised:
        script.client().wait("c1", poll_seconds=0.01, timeout=0.1)
    assert raised.value.chain.status == "running"
    assert isinstance(raised.value, TimeoutError)


# -- async -------------------------------------------------------------------------------------
def test_the_async_client_retries_a_lost_create_with_the_same_key_and_waits() -> None:
    script = Script(
        httpx.ReadTimeout("slow"), reply(200, chain_json()), *statuses("running", "failed")
    )
    seen: list[str] = []

    async def progress(chain: Chain) -> None:
        seen.append(chain.status)

    async def scenario() -> Chain:
        async with script.async_client(retry_pause=0) as client:
            chain = await client.create(video_id="v1", steps=1)
            return await client.wait(chain.id, on_progress=progress, poll_seconds=0)

    final = asyncio.run(scenario())
    assert final.status == "failed"
    assert seen == ["running", "failed"]
    keys = [r.headers["Idempotency-Key"] for r in script.seen if r.method == "POST"]
    assert len(keys) == 2
    assert keys[0] == keys[1]


def test_the_async_client_maps_errors_alike() -> None:
    script = Script(reply(404, {"error": "no chain with this id"}))

    async def scenario() -> None:
        async with script.async_client() as client:
            await client.get("nope")

    with pytest.raises(NotFound, match="no chain with this id"):
        asyncio.run(scenario())


# -- the client stands alone -------------------------------------------------------------------
def test_importing_the_client_loads_nothing_of_the_service() -> None:
    code = (
        "import sys, chainctl.client; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('worker', 'webhook', 'kling') or m == 'chainctl.cli'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
