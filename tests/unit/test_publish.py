"""The web's one-LPUSH publisher: its template comes from Celery, renders what Celery sends
(ids aside), and falls back to send_task when the message is not the shape it knows."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import fakeredis
import pytest

from worker import publish
from worker.celery import app
from worker.publish import Publisher, capture
from worker.tasknames import ARCHIVE_VIDEO, REFRESH_STEP, SUBMIT_STEP


def body_args(message: dict[str, Any]) -> list[Any]:
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert kwargs == {}
    return list(args)


@pytest.mark.parametrize("name", [SUBMIT_STEP, REFRESH_STEP, ARCHIVE_VIDEO])
def test_the_template_renders_what_celery_sends(name: str) -> None:
    template = capture(app, name)
    assert isinstance(template, publish.Template), template
    rendered = json.loads(template.render(("chain1", 3, None)))
    assert rendered["headers"]["task"] == name
    assert body_args(rendered) == ["chain1", 3, None]
    assert rendered["headers"]["argsrepr"] == "('chain1', 3, None)"
    ids = {rendered["headers"]["id"], rendered["headers"]["root_id"]}
    assert ids == {rendered["properties"]["correlation_id"]}
    again = json.loads(template.render(("chain1", 3, None)))
    assert again["headers"]["id"] != rendered["headers"]["id"]  # a fresh id each time
    assert again["properties"]["delivery_tag"] != rendered["properties"]["delivery_tag"]
    routes = app.conf.task_routes
    assert template.queue == routes[name]["queue"]


def test_publish_is_one_lpush_on_the_tasks_queue() -> None:
    client = fakeredis.FakeAsyncRedis()
    sent: list[tuple[str, Any]] = []

    async def fallback(name: str, args: Any) -> None:
        sent.append((name, args))

    async def run() -> list[bytes | str]:
        publisher = Publisher(app, client, fallback)
        await publisher.publish(REFRESH_STEP, ("c", 0, "task_1", None, "succeed"))
        return list(await client.lrange(app.conf.task_routes[REFRESH_STEP]["queue"], 0, -1))

    [raw] = asyncio.run(run())
    assert sent == []
    assert body_args(json.loads(raw)) == ["c", 0, "task_1", None, "succeed"]


def test_a_message_of_another_shape_falls_back_to_send_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if an upgrade made another field vary per message: the template is refused.
    monkeypatch.setattr(publish, "_FILLED", publish._FILLED - {("headers", "argsrepr")})
    assert isinstance(capture(app, SUBMIT_STEP), str)
    sent: list[tuple[str, Any]] = []

    async def fallback(name: str, args: Any) -> None:
        sent.append((name, tuple(args)))

    client = fakeredis.FakeAsyncRedis()

    async def run() -> None:
        await Publisher(app, client, fallback).publish(SUBMIT_STEP, ("c", 0))

    asyncio.run(run())
    assert sent == [(SUBMIT_STEP, ("c", 0))]


def test_the_worker_publishes_with_a_plain_client_and_each_message_is_a_new_root() -> None:
    client = fakeredis.FakeRedis()
    Publisher(app, client, lambda name, args: None).publish_now(SUBMIT_STEP, ("c", 1))
    [raw] = client.lrange(app.conf.task_routes[SUBMIT_STEP]["queue"], 0, -1)
    message = json.loads(raw)
    assert body_args(message) == ["c", 1]
    assert message["headers"]["parent_id"] is None
    assert message["headers"]["root_id"] == message["headers"]["id"]


def test_a_template_captured_inside_a_running_task_is_a_root_of_its_own() -> None:
    # The worker's publisher captures on first use, inside a task: Celery would make the
    # probes children of that task (one root_id for both), which once turned the worker's
    # fast path off.
    @app.task(name="tests.capture_inside", bind=True)  # type: ignore[untyped-decorator]
    def inside(self: Any) -> dict[str, Any]:
        template = capture(app, REFRESH_STEP)
        assert isinstance(template, publish.Template), template
        return {"parent": self.request.id, "message": json.loads(template.render(("c", 1)))}

    out = inside.apply().get()
    headers = out["message"]["headers"]
    assert headers["root_id"] == headers["id"]
    assert headers["parent_id"] is None
    assert headers["id"] != out["parent"]
